"""When a schedule is due: cron (croniter, read in the schedule's time zone) or a fixed
interval. Pure functions, no ORM: services.py fires with them, selectors.py previews.

Daylight saving time follows Vixie cron (docs/schedules.md, "Time zones and DST"):
- a wall-clock time skipped in spring runs at the first moment after the gap (02:30 on the
  night clocks go 02:00 -> 03:00 runs at 03:00);
- a wall-clock time that happens twice in autumn runs once, at its first occurrence, when
  the expression names a fixed minute and hour ("30 2 * * *"); an expression with `*` in
  the minute or hour ("0 * * * *", "*/15 * * * *") follows real time, so it runs in both
  of those hours, as an hourly job should.
An interval is real time: every_seconds apart whatever the clocks say.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def time_zone(name: str) -> ZoneInfo:
    """The IANA zone, or ValueError with a message for the API."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"Unknown time zone {name!r}; use an IANA name like 'Europe/Berlin'."
        ) from None


def normalize_cron(expression: str) -> str:
    """The 5-field expression (aliases expanded, whitespace collapsed), or ValueError."""
    text = " ".join(expression.split())
    text = ALIASES.get(text.lower(), text)
    if len(text.split(" ")) != 5:
        raise ValueError(
            f"Not a cron expression: {expression!r}; expected 5 fields "
            "(minute hour day-of-month month day-of-week) or @hourly, @daily, @weekly, "
            "@monthly, @yearly."
        )
    try:
        if not croniter.is_valid(text):
            raise ValueError
        # is_valid accepts some expressions that never match or need options we do not
        # pass ("H"): computing a run is the real test.
        croniter(text, datetime(2000, 1, 1, tzinfo=ZoneInfo("UTC"))).get_next(datetime)
    except Exception:
        raise ValueError(f"Not a valid cron expression: {expression!r}.") from None
    return text


def _fixed_wall_time(cron: str) -> bool:
    minute, hour = cron.split(" ")[:2]
    return "*" not in minute and "*" not in hour


def _is_repeated_wall_time(moment: datetime, zone: ZoneInfo) -> bool:
    """True for the second occurrence of an autumn wall-clock time (02:30 CET, an hour
    after 02:30 CEST): fold=1 of an ambiguous local time."""
    local = moment.astimezone(zone)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def _cron_iter(
    cron: str, zone: ZoneInfo, start: datetime, *, backwards: bool
) -> Iterator[datetime]:
    it = croniter(cron, start.astimezone(zone))
    step = it.get_prev if backwards else it.get_next
    skip_repeats = _fixed_wall_time(cron)
    for _ in range(100_000):
        moment = step(datetime)
        if skip_repeats and _is_repeated_wall_time(moment, zone):
            continue
        yield moment.astimezone(zone)


def cron_next_after(cron: str, zone: ZoneInfo, after: datetime) -> datetime:
    """The first run strictly after `after`."""
    return next(_cron_iter(cron, zone, after, backwards=False))


def cron_latest_at_or_before(cron: str, zone: ZoneInfo, moment: datetime) -> datetime:
    """The last run at or before `moment`."""
    previous = next(_cron_iter(cron, zone, moment, backwards=True))
    following = cron_next_after(cron, zone, previous)
    return following if following <= moment else previous


def interval_next_after(anchor: datetime, every_seconds: int, after: datetime) -> datetime:
    """The first of anchor + k * every_seconds (k >= 0) strictly after `after`."""
    # In UTC: Python adds a timedelta to an aware datetime on its wall clock, so across a
    # DST change in the anchor's own zone the sum would be an hour off.
    anchor, after = anchor.astimezone(UTC), after.astimezone(UTC)
    if after < anchor:
        return anchor
    step = timedelta(seconds=every_seconds)
    return anchor + ((after - anchor) // step + 1) * step


def interval_latest_at_or_before(
    anchor: datetime, every_seconds: int, moment: datetime
) -> datetime:
    anchor, moment = anchor.astimezone(UTC), moment.astimezone(UTC)
    step = timedelta(seconds=every_seconds)
    return anchor + ((moment - anchor) // step) * step


def next_runs(
    *,
    cron: str,
    every_seconds: int | None,
    timezone: str,
    after: datetime,
    count: int,
    first: datetime | None = None,
) -> list[datetime]:
    """`count` run times in the schedule's time zone: from `first` (a saved schedule's
    next_run_at) or else the first after `after`."""
    zone = time_zone(timezone)
    runs: list[datetime] = []
    if cron:
        moment = first or cron_next_after(cron, zone, after)
        while len(runs) < count:
            runs.append(moment.astimezone(zone))
            moment = cron_next_after(cron, zone, moment)
    else:
        if not every_seconds:
            raise ValueError("a schedule needs cron or every_seconds")
        moment = (first or after.astimezone(UTC) + timedelta(seconds=every_seconds)).astimezone(UTC)
        step = timedelta(seconds=every_seconds)
        runs = [(moment + i * step).astimezone(zone) for i in range(count)]
    return runs
