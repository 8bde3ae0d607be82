#!/usr/bin/env bash
# `make demo`'s first step: what the demo runs besides molt, from Debian's packages.
#
#   ruby, ruby-rack, unicorn   the demo's app: a Rack app on Unicorn (test/demo/app)
#   python3-matplotlib         the plot (and python3, which runs the demo)
#
# Run as root, it installs whichever are missing with apt-get, non-interactively; run as
# another user, it names them and exits 1. Says nothing when all are there.
set -euo pipefail

has_matplotlib() {
  local python
  for python in python3 /usr/bin/python3; do
    if command -v "$python" >/dev/null 2>&1 && "$python" -c 'import matplotlib' >/dev/null 2>&1; then
      return 0
    fi
  done
  return 1
}

missing() {
  command -v ruby >/dev/null 2>&1 || echo ruby
  ruby -e 'require "rack"' >/dev/null 2>&1 || echo ruby-rack
  command -v unicorn >/dev/null 2>&1 || echo unicorn
  has_matplotlib || echo python3-matplotlib
}

mapfile -t packages < <(missing)
if [ ${#packages[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  {
    echo "demo: the demo needs Debian's ${packages[*]}, which this machine lacks."
    echo "Install them, then run make demo again:"
    echo
    echo "    sudo apt-get install ${packages[*]}"
  } >&2
  exit 1
fi

echo "==> Installing ${packages[*]} with apt-get (missing here)"
log=$(mktemp "${TMPDIR:-/tmp}/molt-demo-apt.XXXXXX")
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${packages[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "demo: apt-get could not install ${packages[*]}" >&2
  exit 1
fi

mapfile -t still < <(missing)
if [ ${#still[@]} -ne 0 ]; then
  echo "demo: ${still[*]} still missing after apt-get install" >&2
  exit 1
fi
