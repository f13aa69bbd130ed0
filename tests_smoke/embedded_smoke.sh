#!/usr/bin/env bash
# Smoke test of the embedded default: `make run` with DATABASE_URL/REDIS_URL unset comes up,
# a legacy task completes, Ctrl-C (SIGINT) stops everything and leaves no process behind.
#
#   bash tests_smoke/embedded_smoke.sh          # uses ./.data, like `make run`
#   TASKHUB_DATA_DIR=/tmp/x bash tests_smoke/embedded_smoke.sh
#
# Exits non-zero with the tail of the logs on any failure. Takes about 20 s (first run on a
# fresh clone: plus `make venv` and initdb).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

unset DATABASE_URL REDIS_URL TASKHUB_EMBEDDED_DATA
DATA_DIR=$(realpath -m "${TASKHUB_DATA_DIR:-$ROOT/.data}")
export TASKHUB_DATA_DIR=$DATA_DIR

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
export HOST=127.0.0.1
export PORT=${SMOKE_PORT:-$(free_port)}
export GRPC_PORT=${SMOKE_GRPC_PORT:-$(free_port)}
BASE="http://127.0.0.1:$PORT"
LOG=$(mktemp "${TMPDIR:-/tmp}/taskhub-smoke.XXXXXX.log")
MAKE_PID=""
START=$(date +%s)

say() { echo "smoke: [$(($(date +%s) - START)) s] $*"; }

fail() {
  echo "smoke: FAILED: $*" >&2
  echo "----- make run output (last 80 lines of $LOG) -----" >&2
  tail -n 80 "$LOG" >&2 || true
  for f in "$DATA_DIR/postgres.log" "$DATA_DIR/valkey.log"; do
    [ -f "$f" ] && { echo "----- $f (last 15 lines) -----" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}

# On any exit, never leave our launcher running: SIGINT, then SIGKILL its process group.
cleanup() {
  if [ -n "$MAKE_PID" ] && kill -0 "$MAKE_PID" 2>/dev/null; then
    kill -INT -- "-$MAKE_PID" 2>/dev/null || true
    for _ in $(seq 1 80); do kill -0 "$MAKE_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$MAKE_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

say "make run on port $PORT (grpc $GRPC_PORT), data in $DATA_DIR, log $LOG"
# Job control: `make run` gets its own process group (id = its pid), which we signal as a
# whole as a terminal's Ctrl-C does; without it, bash would start it with SIGINT ignored.
set -m
make run >"$LOG" 2>&1 </dev/null &
MAKE_PID=$!
set +m

ready=""
for _ in $(seq 1 240); do
  kill -0 "$MAKE_PID" 2>/dev/null || fail "make run exited before /readyz answered"
  if curl -fsS -m 2 "$BASE/readyz" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.5
done
[ -n "$ready" ] || fail "/readyz did not answer within 120 s"
say "ready: $(curl -s -m 2 "$BASE/readyz")"

created=$(curl -sS -m 10 -XPOST "$BASE/task/create" -d '{"task":"hello"}') || fail "POST /task/create"
task_id=$(printf '%s' "$created" | python3 -c 'import json, sys; print(json.load(sys.stdin)["task_id"])') \
  || fail "unexpected create response: $created"
say "created $task_id"

status=""
for _ in $(seq 1 120); do
  result=$(curl -sS -m 5 "$BASE/task/check-result?task_id=$task_id" || true)
  status=$(printf '%s' "$result" | python3 -c 'import json, sys; print(json.load(sys.stdin)["Status"])' 2>/dev/null || true)
  [ "$status" = "completed" ] && break
  [ "$status" = "failed" ] && fail "task failed: $result"
  sleep 0.5
done
[ "$status" = "completed" ] || fail "task not completed within 60 s (last: ${result:-none})"
say "completed: $result"

# What the launcher started, to check afterwards (the ports from its own record).
PG_PORT=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["postgres"])' "$DATA_DIR/ports.json")
VK_PORT=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["valkey"])' "$DATA_DIR/ports.json")

say "SIGINT to the process group (as Ctrl-C in a terminal)"
kill -INT -- "-$MAKE_PID"
stopped=""
for _ in $(seq 1 90); do
  kill -0 "$MAKE_PID" 2>/dev/null || { stopped=1; break; }
  sleep 0.5
done
[ -n "$stopped" ] || fail "make run still running 45 s after SIGINT"
wait "$MAKE_PID" || true
MAKE_PID=""
grep -q "stopped cleanly" "$LOG" || fail "the launcher did not report a clean stop"

# Nothing of ours may be left: no process started by the launcher (its env marker), no
# PostgreSQL/Valkey on our data dir, nothing listening on the ports it used.
leftovers=$("$ROOT/.venv/bin/python" - "$DATA_DIR" <<'EOF'
import sys
from pathlib import Path

from devserver import embedded

data = Path(sys.argv[1])
procs = embedded.find_leftover_children(data)
procs += embedded.find_leftover_servers([data / "postgres", data / "valkey"])
for proc in procs:
    print(proc.pid, " ".join(proc.cmdline())[:120])
EOF
) || fail "leftover check did not run"
[ -z "$leftovers" ] || fail "processes left behind:
$leftovers"
for port in "$PORT" "$GRPC_PORT" "$PG_PORT" "$VK_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then fail "something still listens on $port"; fi
done

say "OK (web, worker, dispatch, beat, grpc, postgres, valkey all stopped)"
