#!/usr/bin/env bash
# The by-hand load test of tasktrail-server (docs/performance.md, "Load:
# concurrent dispatches over HTTP"). Not run by CI.
#
#   scripts/load-test.sh [sqlite|postgres] [CONNECTIONS] [SECONDS] [MAX_MS]
#
# Starts the release-built server (TASKTRAIL_SERVER_BIN, default
# target/release/tasktrail-server; CARGO_TARGET_DIR is honoured) on
# 127.0.0.1 over a fresh database (a SQLite file in a temporary directory,
# or a fresh database on TASKTRAIL_TEST_POSTGRES_URL's server, dropped at
# the end), runs Debian's wrk for SECONDS with CONNECTIONS clients, each
# request a POST /tasks whose simulated agent runs 0 to MAX_MS ms, then
# sends the server SIGTERM right away (tasks still run) and checks, in the
# database: every 201's id has its row, no row is left `running`, and how
# many rows have no 201 (requests wrk cut off when it stopped).
set -euo pipefail
cd "$(dirname "$0")/.."

STORE="${1:-sqlite}"
CONNECTIONS="${2:-64}"
SECONDS_TO_RUN="${3:-30}"
MAX_MS="${4:-2000}"
CAP="${TASKTRAIL_LOAD_CAP:-100000}"
BIN="${TASKTRAIL_SERVER_BIN:-${CARGO_TARGET_DIR:-target}/release/tasktrail-server}"

command -v wrk >/dev/null || { echo "load-test: wrk is missing (apt-get install wrk)" >&2; exit 2; }
[ -x "$BIN" ] || { echo "load-test: no $BIN (cargo build --release -p tasktrail-server --features postgres)" >&2; exit 2; }

WORK="$(mktemp -d)"
SERVER_PID=""
PG_DATABASE=""
PG_URL="${TASKTRAIL_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then kill -KILL "$SERVER_PID"; fi
    if [ -n "$PG_DATABASE" ]; then psql "$PG_URL" -qAtc "DROP DATABASE IF EXISTS $PG_DATABASE" >/dev/null; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

case "$STORE" in
    sqlite) DB="$WORK/trail.db" ;;
    postgres)
        PG_DATABASE="tasktrail_load_$$"
        psql "$PG_URL" -qAtc "CREATE DATABASE $PG_DATABASE" >/dev/null
        DB="${PG_URL%/*}/$PG_DATABASE"
        ;;
    *) echo "load-test: the store is sqlite or postgres, not $STORE" >&2; exit 2 ;;
esac

"$BIN" --db "$DB" --listen 127.0.0.1:0 --max-concurrent-dispatches "$CAP" \
    >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
for _ in $(seq 100); do
    grep -q '^listening on ' "$WORK/server.out" 2>/dev/null && break
    sleep 0.1
done
ADDRESS="$(sed -n 's/^listening on //p' "$WORK/server.out")"
[ -n "$ADDRESS" ] || { echo "load-test: the server did not start" >&2; cat "$WORK/server.err" >&2; exit 1; }

echo "load-test: $STORE, $CONNECTIONS connections, ${SECONDS_TO_RUN}s, runs of 0-${MAX_MS} ms, server $BIN on $ADDRESS"
wrk --threads 2 --connections "$CONNECTIONS" --duration "${SECONDS_TO_RUN}s" --timeout 10s --latency \
    --script scripts/load/dispatch.lua "http://$ADDRESS" -- "$WORK" "$MAX_MS" | tee "$WORK/wrk.out"

# SIGTERM at once: the tasks still running are interrupted by the server.
kill -TERM "$SERVER_PID"
STOP_STARTED=$(date +%s%N)
set +e
wait "$SERVER_PID"
EXIT_CODE=$?
set -e
SERVER_PID=""
echo "load-test: the server exited $EXIT_CODE $(( ($(date +%s%N) - STOP_STARTED) / 1000000 )) ms after SIGTERM"

cat "$WORK"/ids-*.txt | sort -u >"$WORK/created.txt"
case "$STORE" in
    sqlite) python3 - "$DB" >"$WORK/rows.txt" <<'PY'
import sqlite3, sys
for row_id, status in sqlite3.connect(sys.argv[1]).execute("SELECT id, status FROM task_history"):
    print(row_id, status)
PY
    ;;
    postgres) psql "$DB" -qAt -F ' ' -c "SELECT id, status FROM task_history" >"$WORK/rows.txt" ;;
esac
python3 - "$WORK/created.txt" "$WORK/rows.txt" <<'PY'
import collections, sys
created = {line.strip() for line in open(sys.argv[1]) if line.strip()}
rows = dict(line.split() for line in open(sys.argv[2]) if line.strip())
by_status = collections.Counter(rows.values())
missing = created - rows.keys()
without_201 = rows.keys() - created
print(f"load-test: 201s {len(created)}, rows {len(rows)}, by status {dict(sorted(by_status.items()))}")
print(f"load-test: 201s without a row: {len(missing)}; rows without a 201 (cut off when wrk stopped): {len(without_201)}")
bad = bool(missing) or by_status.get("running", 0) > 0
print("load-test: FAILED" if bad else "load-test: ok: every 201 has its row, no row is left running")
sys.exit(1 if bad else 0)
PY
[ "$EXIT_CODE" = 0 ] || { echo "load-test: FAILED: the server exited $EXIT_CODE" >&2; exit 1; }
