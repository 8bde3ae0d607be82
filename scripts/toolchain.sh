#!/bin/sh
# Makes the toolchain that rust-toolchain.toml pins usable by rustup, before any cargo
# call. rustup would otherwise try to download a toolchain of that name, which fails on a
# machine that reaches no rustup server, and every cargo call in the repository with it.
#
#   1. A toolchain of that name that reports that version: nothing to do.
#   2. rustup's stable is that version: a link named after the pinned version to stable's
#      directory, which rustup then treats as installed (`rustup toolchain link` refuses
#      names that look like versions, so the link is made directly).
#   3. Otherwise `rustup toolchain install`, which needs the network (GitHub's runners).
#
# Usage: sh scripts/toolchain.sh   (from anywhere; idempotent)
set -eu
cd "$(dirname "$0")/.."

channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if [ -z "$channel" ]; then
    echo "scripts/toolchain.sh: rust-toolchain.toml names no channel" >&2
    exit 1
fi

# The version a toolchain's rustc reports, or nothing.
version_of() {
    rustup run "$1" rustc --version 2>/dev/null | cut -d ' ' -f 2
}

if [ "$(version_of "$channel")" = "$channel" ]; then
    exit 0
fi

rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
host=$(rustup run stable rustc -vV 2>/dev/null | sed -n 's/^host: //p')
link="$rustup_home/toolchains/$channel-$host"
# A link made by an earlier run whose stable has moved on since: it no longer names the
# pinned version, so it goes.
if [ -n "$host" ] && [ -L "$link" ]; then
    rm -f "$link"
fi

if [ -n "$host" ] && [ "$(version_of stable)" = "$channel" ]; then
    ln -s "$(rustup run stable rustc --print sysroot)" "$link"
    echo "scripts/toolchain.sh: linked rustup's stable (rustc $channel) as toolchain $channel"
else
    echo "scripts/toolchain.sh: rustup's stable is not rustc $channel; installing $channel"
    rustup toolchain install "$channel" --profile minimal
fi

if [ "$(version_of "$channel")" != "$channel" ]; then
    echo "scripts/toolchain.sh: toolchain $channel is still not usable; install rustc $channel with rustup (rustup toolchain install $channel)" >&2
    exit 1
fi
