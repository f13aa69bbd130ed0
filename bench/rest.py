"""REST create under load with `wrk` (C, from Debian): a Python load generator on the same
two cores would measure itself. Three targets, one after another, at the same -c/-t/-d:

- `POST /api/tasks/` (JWT, DRF, throttling, validation, the task's event, the nudge);
- the legacy `POST /task/create` (no auth, Go-compatible JSON);
- the reference: a minimal Django view inserting one row, same settings, same Daphne
  (bench/ref_django.py).

The Celery worker stops consuming for the duration (the tasks created would otherwise
run on the same two cores while Daphne is measured); the creates still nudge the
dispatcher, so that cost is in. The tasks created are cancelled afterwards.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.measure import CpuMeter, load_1m
from bench.stack import BenchError

LUA = """-- POST {body} with the headers below, every request the same.
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
{auth}
"""

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return round(float(number) * _UNITS[unit], 2)


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/sec, latency percentiles (--latency), errors and non-2xx from wrk's text."""
    result: dict[str, Any] = {}
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    result["req_per_s"] = float(match.group(1)) if match else None
    match = re.search(r"(\d+) requests in", output)
    result["requests"] = int(match.group(1)) if match else None
    for pct in ("50", "75", "90", "99"):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+(?:us|ms|s|m))", output, re.M)
        result[f"p{pct}_ms"] = _ms(match.group(1)) if match else None
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(r"Socket errors: (.*)", output)
    result["socket_errors"] = match.group(1).strip() if match else ""
    return result


def run_wrk(
    url: str,
    *,
    body: str,
    token: str | None,
    connections: int,
    threads: int,
    seconds: int,
    server_pids: dict[str, int],
    redis_url: str,
) -> dict[str, Any]:
    """`server_pids`: the processes that serve `url` (Daphne; with several instances, each
    of them and nginx), whose CPU is summed as `server` (and kept apart under `cpu_s`)."""
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
    with tempfile.TemporaryDirectory(prefix="taskhub-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(LUA.format(body=body, auth=auth))
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ]
        # children: nginx's work is done by its worker process, not its master.
        meter = CpuMeter(server_pids, redis_url, children=True).start()
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=seconds + 60, check=False
            )
        except FileNotFoundError:
            raise BenchError("wrk is not installed (Debian: apt-get install -y wrk)") from None
        meter.stop()
    if done.returncode != 0:
        raise BenchError(f"wrk failed: {done.stderr.strip()[:300]}")
    result = parse_wrk(done.stdout)
    requests = result["requests"] or 0
    server = sum(meter.spent[name] for name in server_pids)
    result["server_cpu_ms_per_req"] = round(server * 1000 / requests, 3) if requests else None
    result["server_cpu_percent"] = round(100 * server / meter.spent["wall"], 1)
    result["cpu_s"] = {name: meter.spent[name] for name in server_pids}
    result["redis_cpu_ms_per_req"] = meter.per("redis", requests)
    result.update(meter.postgres_per(requests, "req"))
    result["command"] = " ".join([*command[:-3], "-s post.lua", url])
    result["load_1m"] = load_1m()
    return result
