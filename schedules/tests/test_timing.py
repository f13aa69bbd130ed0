"""When a schedule is due: cron in its time zone across DST, intervals in real time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from schedules import timing

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def runs(cron: str, zone: str, after: datetime, count: int = 5) -> list[str]:
    return [
        moment.isoformat()
        for moment in timing.next_runs(
            cron=cron, every_seconds=None, timezone=zone, after=after, count=count
        )
    ]


def test_a_daily_cron_runs_at_the_same_wall_clock_time_on_both_sides_of_a_dst_change():
    # Berlin moves from CET (+01) to CEST (+02) on 2026-03-29.
    assert runs("0 9 * * *", "Europe/Berlin", datetime(2026, 3, 27, 12, tzinfo=BERLIN), 4) == [
        "2026-03-28T09:00:00+01:00",
        "2026-03-29T09:00:00+02:00",
        "2026-03-30T09:00:00+02:00",
        "2026-03-31T09:00:00+02:00",
    ]


def test_a_time_skipped_in_spring_runs_right_after_the_gap():
    # 02:30 does not exist in Berlin on 2026-03-29 (02:00 -> 03:00).
    assert runs("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 27, 12, tzinfo=BERLIN), 3) == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]


def test_a_fixed_time_that_happens_twice_in_autumn_runs_once():
    # 02:30 happens twice in Berlin on 2026-10-25 (03:00 CEST -> 02:00 CET).
    assert runs("30 2 * * *", "Europe/Berlin", datetime(2026, 10, 24, 12, tzinfo=BERLIN), 3) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]


def test_an_hourly_cron_runs_in_both_of_the_repeated_hours():
    assert runs("0 * * * *", "Europe/Berlin", datetime(2026, 10, 25, 0, 30, tzinfo=BERLIN)) == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T04:00:00+01:00",
    ]


def test_the_same_expression_means_different_instants_in_different_zones():
    after = datetime(2026, 1, 5, tzinfo=UTC)
    berlin = timing.next_runs(
        cron="0 9 * * 1", every_seconds=None, timezone="Europe/Berlin", after=after, count=1
    )
    new_york = timing.next_runs(
        cron="0 9 * * 1", every_seconds=None, timezone="America/New_York", after=after, count=1
    )
    assert berlin[0].astimezone(UTC) == datetime(2026, 1, 5, 8, tzinfo=UTC)
    assert new_york[0].astimezone(UTC) == datetime(2026, 1, 5, 14, tzinfo=UTC)


def test_an_interval_is_real_time_across_a_dst_change():
    first = datetime(2026, 3, 29, 1, 0, tzinfo=BERLIN)  # an hour before the gap
    moments = timing.next_runs(
        cron="",
        every_seconds=3600,
        timezone="Europe/Berlin",
        after=first,
        first=first,
        count=3,
    )
    assert [m.isoformat() for m in moments] == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",  # one real hour later: the clock jumped
        "2026-03-29T04:00:00+02:00",
    ]


def test_the_latest_cron_run_at_or_before_a_moment_includes_the_moment_itself():
    zone = ZoneInfo("UTC")
    on_the_dot = datetime(2026, 1, 1, 12, 5, tzinfo=UTC)
    assert timing.cron_latest_at_or_before("*/5 * * * *", zone, on_the_dot) == on_the_dot
    later = on_the_dot + timedelta(minutes=2, seconds=30)
    assert timing.cron_latest_at_or_before("*/5 * * * *", zone, later) == on_the_dot


def test_interval_runs_keep_their_anchor():
    anchor = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    now = anchor + timedelta(seconds=95)
    assert timing.interval_latest_at_or_before(anchor, 30, now) == anchor + timedelta(seconds=90)
    assert timing.interval_next_after(anchor, 30, now) == anchor + timedelta(seconds=120)
    assert timing.interval_next_after(anchor, 30, anchor - timedelta(seconds=5)) == anchor


@pytest.mark.parametrize("alias, expanded", [("@daily", "0 0 * * *"), ("@HOURLY", "0 * * * *")])
def test_aliases_expand_to_five_fields(alias, expanded):
    assert timing.normalize_cron(alias) == expanded


@pytest.mark.parametrize(
    "expression",
    ["", "bad", "61 * * * *", "* * * *", "*/5 * * * * *", "@reboot", "0 0 31 2 *", "H * * * *"],
)
def test_what_is_not_a_five_field_cron_that_can_run_is_refused(expression):
    with pytest.raises(ValueError, match="cron expression"):
        timing.normalize_cron(expression)


@pytest.mark.parametrize("name", ["Mars/Olympus", "../../etc/passwd", "", "utc+3"])
def test_an_unknown_time_zone_is_refused(name):
    with pytest.raises(ValueError, match="Unknown time zone"):
        timing.time_zone(name)


def test_the_latest_run_before_a_moment_follows_the_same_dst_rules():
    # 02:45 CET, the second pass through 02:xx on 2026-10-25.
    second_pass = datetime(2026, 10, 25, 2, 45, tzinfo=BERLIN, fold=1)
    fixed = timing.cron_latest_at_or_before("30 2 * * *", BERLIN, second_pass)
    hourly = timing.cron_latest_at_or_before("0 * * * *", BERLIN, second_pass)
    spring = timing.cron_latest_at_or_before(
        "30 2 * * *", BERLIN, datetime(2026, 3, 29, 3, 10, tzinfo=BERLIN)
    )

    assert fixed.isoformat() == "2026-10-25T02:30:00+02:00"  # the first pass, not again
    assert hourly.isoformat() == "2026-10-25T02:00:00+01:00"
    assert spring.isoformat() == "2026-03-29T03:00:00+02:00"
