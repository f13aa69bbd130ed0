"""`make reliability`: run the fault and abuse scenarios (reliability/scenarios.py) against
real processes on a database of their own, print a table, and write the measured column
of docs/reliability.md with the command that produced it.

    python -m devserver.launcher exec python -m reliability.run [--quick] [--only R1,S1]
        [--no-write]

The launcher supplies DATABASE_URL and REDIS_URL (embedded servers unless both are set);
the scenarios run on a fresh database (test_<name>_reliability, dropped at the end), so the
development data is never touched. Exit status 1 if any scenario missed a correctness
target (loss, duplication, stuck rows, a wrong code).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_doc(results: list, command: str, load: str) -> None:
    """Replace the measured and command cells of each scenario's row, keep every other
    row (other scenarios' figures are written by their own runs)."""
    text = DOC.read_text()
    for result in results:
        missed = result.failures + result.misses
        verdict = "meets its targets" if not missed else "MISSES: " + "; ".join(missed)
        measured = f"{result.measured}. {verdict} ({load})"
        pattern = re.compile(rf"^\|\s*{result.scenario}\s*\|(.*)$", re.MULTILINE)
        match = pattern.search(text)
        if match is None:
            continue
        cells = [cell.strip() for cell in match.group(0).strip().strip("|").split(" | ")]
        # | # | scenario | target | measured | command |
        cells = [*cells[:3], _cell(measured), f"`{command}`"]
        text = text[: match.start()] + "| " + " | ".join(cells) + " |" + text[match.end() :]
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the smaller form (CI's)")
    parser.add_argument("--only", default="", help="comma-separated scenarios, e.g. R1,S1")
    parser.add_argument("--no-write", action="store_true", help="leave docs/reliability.md")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")
    os.environ.setdefault("DEBUG", "1")
    # Read by grpc when it is first imported. The runners call gRPC from threads while they
    # start servers (R2 restarts PostgreSQL every few seconds), and grpc's fork handlers, on
    # by default, now and then aborted the child between fork and exec ("Check failed:
    # next_worker->state == KICKED", SIGABRT: PostgreSQL never started, 3 R2 runs in a
    # row). No process here forks a child that goes on using gRPC, what they are for.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import setup_test_environment

    from reliability import scenarios

    table = scenarios.QUICK if args.quick else scenarios.FULL
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(table)
    setup_test_environment()
    old_name = connection.settings_dict["NAME"]
    # A name of its own, so a pytest run on the same DATABASE_URL (test_<name>) and this
    # one never drop each other's database.
    connection.settings_dict.setdefault("TEST", {})["NAME"] = f"test_{old_name}_reliability"
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    results = []
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        for name in names:
            begun = time.monotonic()
            result = table[name]()
            results.append(result)
            status = "ok" if not result.failures else "MISSED"
            print(f"{name} [{status}, {time.monotonic() - begun:.0f} s] {result.measured}")
            for failure in result.failures:
                print(f"    {failure}")
            for miss in result.misses:
                print(f"    known miss: {miss}")
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    load = (
        f"{datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores, load average "
        f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    print()
    print(f"| scenario | verdict | measured |  ({load}; {time.monotonic() - started:.0f} s)")
    print("|---|---|---|")
    for result in results:
        verdict = "ok" if not result.failures else "MISSED"
        print(f"| {result.scenario} | {verdict} | {_cell(result.measured)} |")
    if not args.no_write:
        command = "make reliability" + (
            f' RELIABILITY_ARGS="{" ".join(sys.argv[1:])}"' if sys.argv[1:] else ""
        )
        write_doc(results, command, load)
        print(f"\nwrote {DOC}")
    return 1 if any(result.failures for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
