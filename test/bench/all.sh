#!/usr/bin/env bash
# Runs every benchmark in test/bench/ one after the other (`make bench`), or each for a few
# seconds with --smoke (`make bench-smoke`, run by .ci/run). Each benchmark prints its table
# and writes its CSV; all the tables are also collected in $BENCH_OUT/results.md
# (target/bench, or target/bench/smoke for a smoke run).
#
# The smoke run checks that every benchmark still runs and produces its table and CSV. It
# never judges a speed: these machines are shared and noisy.
#
# Usage: test/bench/all.sh [--smoke] [NAME...]   (names: proxy footprint recycle startup alloc
# connections soak concurrency prefork recycle_quality arena unicorn_front)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

smoke=()
names=()
for arg in "$@"; do
  case $arg in
    --smoke) smoke=(--smoke) ;;
    *) names+=("$arg") ;;
  esac
done
if [ ${#names[@]} -eq 0 ]; then
  names=(proxy footprint recycle startup alloc connections soak concurrency prefork recycle_quality arena unicorn_front)
fi
if [ ${#smoke[@]} -gt 0 ]; then
  export BENCH_OUT=${BENCH_OUT:-$root/target/bench/smoke}
else
  export BENCH_OUT=${BENCH_OUT:-$root/target/bench}
fi
mkdir -p "$BENCH_OUT"

# One build for all of them (each script would otherwise ask cargo again).
if [ -z "${MOLT:-}" ]; then
  (cd "$root" && cargo build --release --locked --quiet)
  export MOLT=$root/target/release/molt
fi

declare -A csvs=(
  [proxy]=proxy.csv
  [footprint]=footprint.csv
  [recycle]=recycle.csv
  [prefork]="prefork-memory.csv prefork-recycle.csv"
  [startup]="startup-accept.csv startup-scale.csv"
  [alloc]=alloc.csv
  [connections]=connections.csv
  [soak]=soak.csv
  [concurrency]=concurrency.csv
  [recycle_quality]=recycle_quality.csv
  [arena]=arena.csv
  [unicorn_front]=unicorn_front.csv
)

results=$BENCH_OUT/results.md
: >"$results"
failed=()
for name in "${names[@]}"; do
  if [ -z "${csvs[$name]:-}" ]; then
    echo "bench: no benchmark named $name (known: ${!csvs[*]})" >&2
    exit 2
  fi
  for csv in ${csvs[$name]}; do rm -f "$BENCH_OUT/$csv"; done
  echo "==> test/bench/$name.py ${smoke[*]}"
  status=0
  python3 "$here/$name.py" "${smoke[@]}" | tee "$BENCH_OUT/$name.txt" || status=$?
  cat "$BENCH_OUT/$name.txt" >>"$results"
  for csv in ${csvs[$name]}; do
    # A header and at least one row.
    if [ ! -s "$BENCH_OUT/$csv" ] || [ "$(wc -l <"$BENCH_OUT/$csv")" -lt 2 ]; then
      echo "bench: $name did not write $BENCH_OUT/$csv" >&2
      status=1
    fi
  done
  if ! grep -q '^| ' "$BENCH_OUT/$name.txt"; then
    echo "bench: $name printed no table" >&2
    status=1
  fi
  if [ "$status" -ne 0 ]; then failed+=("$name"); fi
done

echo
echo "Tables: ${results#"$root"/}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "bench: failed: ${failed[*]}" >&2
  exit 1
fi
echo "bench: every benchmark ran and wrote its table (${names[*]})"
