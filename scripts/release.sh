#!/usr/bin/env bash
# molt's release builds, bit for bit reproducible; the Makefile's release, package,
# verify-release and reproducible targets call it (docs/buildpack.md, "Cutting a release").
#
#   release.sh release VERSION DIST TARGET...   write VERSION into Cargo.toml, Cargo.lock and
#                                               buildpack.toml, build the archives into DIST,
#                                               write checksums.txt (DIST and the repository)
#                                               and the buildpacks
#   release.sh verify DIST                      rebuild every archive checksums.txt lists and
#                                               compare (what the release workflow runs on a tag);
#                                               then the buildpacks, from the committed files
#   release.sh reproducible DIST TARGET         two clean builds of the committed tree in two
#                                               directories; their sha256 must be equal
#
# What makes two builds equal: the toolchain pinned in rust-toolchain.toml; Cargo.lock
# (--locked); the source and cargo-home paths remapped, so that no build path is in the
# binary (panic locations name files); both targets linked by the toolchain's own rust-lld,
# not the machine's linker; archives with fixed owners, modes, order and times, gzip
# without a name or time. The binaries are static musl executables (no C code: the
# optional mimalloc feature is off), so one archive runs on every Linux of its arch.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

say() { printf 'release: %s\n' "$*"; }
die() {
    printf 'release: %s\n' "$*" >&2
    exit 1
}

# The version in Cargo.toml's [package] (its first `version =` line).
current_version() {
    sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1
}

# Empties DIST for a new build and prints its absolute path. DIST is removed first, so it
# may be neither the repository nor a directory that holds it.
fresh_dist() {
    local dist
    dist=$(realpath -m "$1")
    if [[ $dist == / || $root == "$dist" || $root == "$dist"/* ]]; then
        die "DIST=$1 would remove the repository; give a directory of its own, such as dist"
    fi
    rm -rf "$dist"
    mkdir -p "$dist"
    printf '%s\n' "$dist"
}

# Writes VERSION into Cargo.toml, molt's entry in Cargo.lock and buildpack.toml.
set_version() {
    local version=$1
    [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
        die "VERSION must be MAJOR.MINOR.PATCH (buildpack.toml requires it), not '$version'"
    sed -i "0,/^version = \".*\"/s//version = \"$version\"/" Cargo.toml
    # molt's own [[package]] block: the version line right after `name = "molt"`.
    sed -i "/^name = \"molt\"$/{n;s/^version = \".*\"/version = \"$version\"/}" Cargo.lock
    sed -i "0,/^version = \".*\"/s//version = \"$version\"/" buildpack.toml
    [[ $(current_version) == "$version" ]] || die "could not write version $version into Cargo.toml"
    grep -q "^version = \"$version\"" buildpack.toml || die "could not write version $version into buildpack.toml"
    cargo metadata --locked --offline --format-version 1 >/dev/null ||
        die "Cargo.lock does not match Cargo.toml after writing version $version"
}

# Builds `molt` for TARGET the reproducible way; prints nothing on stdout.
build_target() {
    local target=$1
    # rust-lld for every target: the toolchain's linker, so that the machine's binutils
    # cannot change the bytes. It links these static binaries because no dependency is C.
    env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS \
        CARGO_TARGET_DIR="$root/target" \
        CARGO_INCREMENTAL=0 \
        CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
        RUSTFLAGS="--remap-path-prefix=$root=/molt --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo" \
        cargo build --release --locked --target "$target" >&2
}

# A gzip'd tar of DIR's contents with nothing from this machine or this moment in it.
# Usage: reproducible_tar DIR ARCHIVE NAME...
reproducible_tar() {
    local dir=$1 archive=$2
    shift 2
    tar --create --format=ustar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        --mode='u=rwX,go=rX' -C "$dir" "$@" | gzip -9 --no-name >"$archive"
}

# Builds the archive of each target into DIST and leaves the targets it built in $built.
# A target whose standard library rustup cannot install is reported and skipped: no
# archive, no checksum, so a build for that architecture says there is no release for it.
built=()
build_archives() {
    local version=$1 dist=$2
    shift 2
    local target missing=()
    built=()
    for target in "$@"; do
        if ! rustup target list --installed | grep -qx "$target" &&
            ! rustup target add "$target" >&2; then
            missing+=("$target")
            say "NOT BUILT: $target: rustup could not install its standard library (rustup target add $target failed above)" >&2
            continue
        fi
        say "building $target" >&2
        build_target "$target"
        local bin="target/$target/release/molt" tmp
        tmp=$(mktemp -d)
        cp "$bin" "$tmp/molt"
        chmod 755 "$tmp/molt"
        reproducible_tar "$tmp" "$dist/molt-$version-$target.tar.gz" molt
        rm -rf "$tmp"
        built+=("$target")
    done
    [[ ${#built[@]} -gt 0 ]] || die "no target could be built"
    if [[ ${#missing[@]} -gt 0 ]]; then
        say "NOT BUILT: ${missing[*]}; dist/ and checksums.txt have no archive for them, so molt $version has no binary for that architecture" >&2
    fi
}

# checksums.txt: the header comment, then `<sha256>  <archive>` for each built target.
write_checksums() {
    local version=$1 dist=$2
    shift 2
    local target
    {
        sed -n '/^#/p' checksums.txt
        for target in "$@"; do
            (cd "$dist" && sha256sum "molt-$version-$target.tar.gz")
        done
    } >"$dist/checksums.txt"
}

# The buildpack with bin/molt inside, as a directory (for `pack buildpack package`) and a
# tarball (for `heroku buildpacks:add URL`), for each target built.
write_buildpacks() {
    local version=$1 dist=$2
    shift 2
    local target dir
    for target in "$@"; do
        dir="$dist/molt-buildpack-$version-$target"
        rm -rf "$dir"
        mkdir -p "$dir"
        cp -R bin buildpack.toml package.toml README.md docs "$dir/"
        cp "$dist/checksums.txt" "$dir/checksums.txt"
        cp "target/$target/release/molt" "$dir/bin/molt"
        reproducible_tar "$dir" "$dir.tgz" .
    done
}

# The host's binary must serve: `molt run` in front of python3's http.server.
smoke_test() {
    local target
    target="$(uname -m)-unknown-linux-musl"
    if [[ -x target/$target/release/molt ]]; then
        PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
            sh test/package-smoke.sh "target/$target/release/molt" >&2
    else
        say "no smoke test: $target was not built" >&2
    fi
}

cmd_release() {
    local version=$1 dist=$2
    shift 2
    [[ $# -gt 0 ]] || die "no targets given"
    dist=$(fresh_dist "$dist")
    set_version "$version"
    build_archives "$version" "$dist" "$@"
    smoke_test
    write_checksums "$version" "$dist" "${built[@]}"
    cp "$dist/checksums.txt" checksums.txt
    write_buildpacks "$version" "$dist" "${built[@]}"
    say "molt $version, in $dist:"
    (cd "$dist" && sha256sum ./*.tar.gz ./*.tgz)
    say "Cargo.toml, Cargo.lock, buildpack.toml and checksums.txt now say $version; commit them, tag v$version and push the tag (docs/buildpack.md, \"Cutting a release\")"
}

cmd_verify() {
    local dist=$1 version tag
    version=$(current_version)
    # On a tag push, the tag must name the version the commit carries.
    tag=${GITHUB_REF_NAME:-}
    if [[ -n $tag && $tag != "v$version" ]]; then
        die "tag $tag does not name the version in Cargo.toml ($version); tag the release commit v$version"
    fi
    grep -q "^version = \"$version\"" buildpack.toml ||
        die "buildpack.toml's version is not $version (Cargo.toml's); run make release VERSION=$version"
    local targets
    mapfile -t targets < <(awk -v v="$version" '$1 !~ /^#/ && $2 ~ "^molt-" v "-.*\\.tar\\.gz$" {
        t = $2; sub("^molt-" v "-", "", t); sub("\\.tar\\.gz$", "", t); print t }' checksums.txt)
    [[ ${#targets[@]} -gt 0 ]] ||
        die "checksums.txt lists no archive of molt $version; run make release VERSION=$version and commit"
    dist=$(fresh_dist "$dist")
    build_archives "$version" "$dist" "${targets[@]}"
    [[ ${#built[@]} -eq ${#targets[@]} ]] || die "not every archive in checksums.txt could be rebuilt"
    write_checksums "$version" "$dist" "${built[@]}"
    if ! diff -u checksums.txt "$dist/checksums.txt" >&2; then
        die "the rebuilt archives differ from the committed checksums.txt (above: - committed, + rebuilt)"
    fi
    say "every archive in checksums.txt rebuilt with the same sha256"
    write_buildpacks "$version" "$dist" "${built[@]}"
    (cd "$dist" && sha256sum ./*.tar.gz ./*.tgz)
}

cmd_reproducible() {
    local dist=$1 target=$2 version
    version=$(current_version)
    mkdir -p "$dist"
    dist=$(cd "$dist" && pwd)
    # Two directories whose paths differ, in length too, each a fresh copy of the tracked
    # files with no target/ of its own.
    local work first second
    work=$(mktemp -d)
    first="$work/a"
    second="$work/second-build-directory"
    local dir sums=()
    for dir in "$first" "$second"; do
        mkdir -p "$dir"
        git ls-files -z | xargs -0 tar -cf - | tar -xf - -C "$dir"
        (cd "$dir" && bash scripts/release.sh build-one "$version" "$dir/out" "$target")
        sums+=("$(cd "$dir/out" && sha256sum "molt-$version-$target.tar.gz")")
        cp "$dir/out/molt-$version-$target.tar.gz" "$dist/"
        rm -rf "$dir/target"
    done
    rm -rf "$work"
    say "build in $first:  ${sums[0]}"
    say "build in $second: ${sums[1]}"
    [[ ${sums[0]} == "${sums[1]}" ]] || die "the two builds differ"
    say "reproducible: both builds give the same sha256"
}

# One archive, nothing else written: the unit the reproducibility check compares.
cmd_build_one() {
    local version=$1 dist=$2 target=$3
    mkdir -p "$dist"
    dist=$(cd "$dist" && pwd)
    build_archives "$version" "$dist" "$target"
}

command=${1:-}
shift || true
case $command in
    release) cmd_release "$@" ;;
    verify) cmd_verify "$@" ;;
    reproducible) cmd_reproducible "$@" ;;
    build-one) cmd_build_one "$@" ;;
    *) die "usage: scripts/release.sh release VERSION DIST TARGET... | verify DIST | reproducible DIST TARGET" ;;
esac
