#!/usr/bin/env bash
# A short tour of `molt run`: boots the fixture app as a pool of 3 workers behind one
# port, shows requests spreading over them, a worker crash failing only its own request
# and being replaced, a rolling restart on SIGHUP, and a graceful SIGTERM.
set -euo pipefail
molt=${1:-target/release/molt}
here=$(cd "$(dirname "$0")/../.." && pwd)
port=${PORT:-5000}
log=$(mktemp)

step() { printf '\n==> %s\n' "$*"; }

step "molt run --workers 3 -- 'python3 app.py'  (port $port)"
PORT=$port "$molt" run --workers 3 -- "python3 $here/test/fixtures/apps/pyapp/app.py" >"$log" 2>&1 &
molt_pid=$!
trap 'kill -KILL $molt_pid 2>/dev/null || true; rm -f "$log" "$log.pids"' EXIT

for _ in $(seq 1 200); do
  [ "$(grep -c 'at=ready' "$log")" -ge 3 ] && break
  sleep 0.05
done
grep 'molt at=' "$log"

step "6 concurrent requests to /sleep?ms=300: requests answered per worker pid"
for _ in 1 2 3 4 5 6; do
  curl -s -w '\n' "localhost:$port/sleep?ms=300" &
done > "$log.pids"
wait_jobs() { for job in $(jobs -p); do [ "$job" = "$molt_pid" ] || wait "$job"; done; }
wait_jobs
sort "$log.pids" | uniq -c

step "a request that crashes its worker gets 502; the others are untouched"
printf 'crash:  %s\n' "$(curl -s -o /dev/null -w '%{http_code}' "localhost:$port/crash")"
printf 'next:   %s\n' "$(curl -s -o /dev/null -w '%{http_code}' "localhost:$port/")"
sleep 1

step "SIGHUP: rolling restart, one worker at a time"
kill -HUP $molt_pid
for _ in $(seq 1 200); do
  [ "$(grep -c 'at=recycle' "$log")" -ge 3 ] && [ "$(grep -c 'at=ready' "$log")" -ge 7 ] && break
  sleep 0.05
done

step "SIGTERM: in-flight requests finish, workers stop, molt exits 0"
curl -s "localhost:$port/sleep?ms=800" -o /dev/null -w 'in-flight request: %{http_code}\n' &
curl_pid=$!
sleep 0.3
kill -TERM $molt_pid
wait $curl_pid
wait $molt_pid && echo "molt exited with status 0"
step "molt's log"
grep 'molt at=' "$log"
