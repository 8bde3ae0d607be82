#!/bin/sh
# Smoke test of a release binary, run by `make release` (and `make package`): `molt run`
# in front of python3's http.server on $PORT must answer a request, then stop cleanly on
# SIGTERM.
# Usage: PORT=<free port> sh test/package-smoke.sh path/to/molt
set -eu
molt=$1
"$molt" --version
# The single quotes keep $PORT for each worker's shell, as the buildpack's Procfile does.
# shellcheck disable=SC2016
"$molt" run -- 'exec python3 -m http.server "$PORT" --bind 127.0.0.1' &
pid=$!
ok=
for _ in $(seq 100); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/"; then
        ok=yes
        break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
kill -TERM "$pid" 2>/dev/null || true
status=0
wait "$pid" || status=$?
if [ -z "$ok" ]; then
    echo "package smoke test: $molt did not serve a request on port $PORT" >&2
    exit 1
fi
if [ "$status" != 0 ]; then
    echo "package smoke test: $molt exited with status $status after SIGTERM" >&2
    exit 1
fi
echo "package smoke test: $molt served a request and stopped cleanly"
