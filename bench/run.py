"""TaskHub benchmarks: a real stack (Daphne, a Celery worker, beat) on a fresh database,
measured as a client would measure it. What each figure means: docs/benchmarks.md.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/taskhub \\
    REDIS_URL=redis://127.0.0.1:6379/7 .venv/bin/python bench/run.py [--help]

The database named in DATABASE_URL is only used for its server: the run drops and
re-creates `<name>_bench` next to it. REDIS_URL's database must not be in use by another
TaskHub stack while the run lasts (its worker would take our run messages); the run
checks that no other Celery worker answers there before it starts its own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("DATABASE_URL", "REDIS_URL")


def main() -> int:
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        print(
            f"bench: {' and '.join(missing)} must be set (make bench passes them on). Example:\n"
            "  DATABASE_URL=postgres://postgres@127.0.0.1:5432/taskhub "
            "REDIS_URL=redis://127.0.0.1:6379/7 .venv/bin/python bench/run.py\n"
            "The run creates its own database <name>_bench on that server; the Redis DB "
            "must be one no other TaskHub worker uses during the run.",
            file=sys.stderr,
        )
        return 2
    # Run as a script, so the project root (taskhub, tasks, bench) is not on the path yet.
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    from bench.runner import run

    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
