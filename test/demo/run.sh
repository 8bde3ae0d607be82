#!/usr/bin/env bash
# `make demo`: the leak story in one command.
#
# 1. Checks for what the demo runs besides molt (test/demo/setup.sh: Ruby, Rack, Unicorn,
#    matplotlib; installed with apt-get when run as root).
# 2. Builds the leaking Rack app in test/demo/app (Unicorn, 2 workers, preload_app true)
#    with the buildpack, exactly as Heroku's build runs a buildpack (and as
#    test/integration/buildpack.rs emulates it): a copy of the app as BUILD_DIR, then
#    bin/detect, bin/compile BUILD_DIR CACHE_DIR ENV_DIR, bin/release, with the buildpack
#    packaged around the molt binary under test and the config vars in ENV_DIR.
# 3. Hands over to demo.py, which boots the built app as a dyno does (HOME at the app,
#    .profile.d/*.sh sourced, the Procfile's web line run with bash -c and a PORT) with a
#    fixed memory budget, and beside it the same app without molt (`unicorn -c
#    config/unicorn.rb` on a port of its own), each in a memory cgroup of the budget's
#    size where the machine allows it; drives the same load at both for about a minute;
#    prints a table and draws memory over time (target/demo/memory.svg and .png).
#
# Usage: test/demo/run.sh [MOLT_BINARY]   (default target/release/molt)
# Knobs: DEMO_BUDGET (512MB), DEMO_SECONDS (60), DEMO_RATE (64 requests/s to each side),
#        DEMO_PAGE_KB (256 KiB kept per request), DEMO_OUT (target/demo).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
molt=$(cd "$(dirname "${1:-$root/target/release/molt}")" && pwd)/$(basename "${1:-molt}")
budget=${DEMO_BUDGET:-512MB}

if [ ! -x "$molt" ]; then
  echo "demo: no molt binary at $molt; run \`make build\` first" >&2
  exit 1
fi

bash "$root/test/demo/setup.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/molt-demo.XXXXXX")
# demo.py removes its cgroups itself, even on failure; this is for a demo.py that was
# killed outright, which names them in $work/cgroup while they exist.
cleanup() {
  if [ -s "$work/cgroup" ]; then
    python3 "$root/test/demo/cgroup.py" remove "$(cat "$work/cgroup")" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf '\n==> %s\n' "$*"; }

# The buildpack as `make package` lays it out: its scripts and descriptors, and bin/molt.
buildpack=$work/buildpack
mkdir -p "$buildpack"
cp -R "$root/bin" "$buildpack/bin"
for f in buildpack.toml package.toml checksums.txt Cargo.toml; do
  if [ -f "$root/$f" ]; then cp "$root/$f" "$buildpack/$f"; fi
done
cp "$molt" "$buildpack/bin/molt"

app=$work/app cache=$work/cache env_dir=$work/env
cp -R "$root/test/demo/app" "$app"
mkdir -p "$cache" "$env_dir"
# Config vars, as `heroku config:set MOLT_MEMORY_LIMIT=512MB MOLT_MIN_WORKERS=2` writes
# them into ENV_DIR: the dyno's budget, and the 2 Unicorn workers the app ran before.
printf '%s' "$budget" >"$env_dir/MOLT_MEMORY_LIMIT"
printf '2' >"$env_dir/MOLT_MIN_WORKERS"

step "Building test/demo/app with the buildpack, as Heroku does"
echo "\$ bin/detect BUILD_DIR"
"$buildpack/bin/detect" "$app"
echo "\$ bin/compile BUILD_DIR CACHE_DIR ENV_DIR"
"$buildpack/bin/compile" "$app" "$cache" "$env_dir"
echo "\$ bin/release BUILD_DIR"
"$buildpack/bin/release" "$app"
echo "Procfile after compile:"
sed 's/^/    /' "$app/Procfile"

step "Running the built app with and without molt, budget $budget"
status=0
python3 "$root/test/demo/demo.py" --app "$app" --budget "$budget" --cgroup-note "$work/cgroup" || status=$?
exit "$status"
