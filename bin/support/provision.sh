# Finds or obtains the molt binary for the buildpack's entry points (bin/detect,
# bin/compile, bin/release, bin/build), which then hand everything else to
# `molt buildpack <phase>`. This part is shell because it runs before any molt binary
# exists; it is POSIX sh (dash on Debian and Ubuntu stacks), sourced, not run.
#
# The caller sets bp_dir (the buildpack's root) and then calls
#
#   molt_obtain CACHE_DIR ENV_DIR VERBOSE
#
# CACHE_DIR may be empty (detect, release and CNB build have none). ENV_DIR is a
# directory of one file per variable (Heroku's ENV_DIR, or a CNB platform's env/), read
# for MOLT_BINARY_URL only; it may be empty. VERBOSE is `yes` for compile and build,
# whose standard output the user reads, and `no` for detect and release, whose
# standard output the platform parses. On success $molt names a binary that runs here;
# on failure the build stops with a message. The order is:
#
#   1. bin/molt packaged with the buildpack (`make package` puts it there);
#   2. the release archive cached in CACHE_DIR by an earlier build, if its sha256 is the
#      one in checksums.txt;
#   3. the release archive downloaded from MOLT_BINARY_URL (ENV_DIR, else the
#      environment, else [metadata.release] base-url in buildpack.toml), checked
#      against checksums.txt, and cached in CACHE_DIR;
#   4. a build from the buildpack's own source, if cargo is on PATH;
#   5. else the build fails, saying why.
#
# Then `molt_run ARGS...` runs "$molt" ARGS... and exits with its status.
#
# The architecture is `uname -m` (CNB_TARGET_ARCH on Cloud Native platforms);
# MOLT_BUILDPACK_ARCH overrides both, for tests and for building on one machine for another.
#
# Messages: every message the buildpack shows is written in src/buildpack/messages.rs,
# except the ones below, which are needed before a molt binary exists. They have the same
# four parts (what went wrong, why, what to do, the underlying cause) and the same layout.

# shellcheck shell=sh disable=SC2154  # bp_dir is set by the sourcing script.

# Files made here (a downloaded archive, an unpacked binary) live in one directory that
# is removed when the script exits.
molt_work=
molt_cleanup() {
    if [ -n "$molt_work" ]; then
        rm -rf "$molt_work"
    fi
}
trap molt_cleanup EXIT
trap 'molt_cleanup; exit 143' TERM
trap 'molt_cleanup; exit 130' INT

molt_workdir() {
    if [ -z "$molt_work" ]; then
        molt_work=$(mktemp -d "${TMPDIR:-/tmp}/molt-buildpack.XXXXXX") || exit 1
    fi
}

# A detail line, indented 7 spaces under the step headline, when VERBOSE.
molt_say() {
    if [ "$molt_verbose" = yes ]; then
        printf '       %s\n' "$1"
    fi
}

# Prints a four-part message to stderr and ends the build. Arguments: what went wrong,
# why, what to do, the underlying cause (may be empty). Lines are prefixed ` !     `, and
# a blank line is ` !`, as src/buildpack/messages.rs renders them.
molt_fail() {
    {
        printf '%s\n\n%s\n\n%s\n' "$1" "$2" "$3"
        if [ -n "$4" ]; then
            printf '\nCause: %s\n' "$4"
        fi
    } | sed -e 's/^/ !     /' -e 's/^ !     $/ !/' >&2
    exit 1
}

# The value of variable $1: from the file ENV_DIR/$1 when there is one, else from the
# environment.
molt_env() {
    if [ -n "$molt_env_dir" ] && [ -f "$molt_env_dir/$1" ]; then
        cat "$molt_env_dir/$1"
    else
        eval "printf '%s' \"\${$1:-}\""
    fi
}

# A `key = "value"` from buildpack.toml: the first line that sets key.
molt_descriptor() {
    sed -n "s/^$1 *= *\"\\([^\"]*\\)\".*/\\1/p" "$bp_dir/buildpack.toml" | head -n 1
}

# The sha256 of a file, in hex.
molt_sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d ' ' -f 1
    else
        shasum -a 256 "$1" | cut -d ' ' -f 1
    fi
}

# The sha256 that checksums.txt gives for file name $1 (`<sha256>  <name>` lines, as
# sha256sum writes them; `#` starts a comment), or nothing.
molt_expected_sha256() {
    if [ -f "$bp_dir/checksums.txt" ]; then
        awk -v name="$1" '$1 !~ /^#/ && ($2 == name || $2 == "*" name) { print $1; exit }' \
            "$bp_dir/checksums.txt"
    fi
}

# The Rust target triple of this machine's architecture, or nothing if there is no
# release for it.
molt_target() {
    case $molt_arch in
        x86_64 | amd64) echo x86_64-unknown-linux-musl ;;
        aarch64 | arm64) echo aarch64-unknown-linux-musl ;;
    esac
}

# Whether $1 is a molt binary that runs on this machine; its output, if it does not, is
# left in $molt_run_error.
molt_runs() {
    molt_run_error=$("$1" --version 2>&1 >/dev/null) && return 0
    molt_run_error=${molt_run_error:-$1 --version exited with status $?}
    return 1
}

# Unpacks `molt` from archive $1 into the work directory and points $molt at it.
molt_unpack() {
    molt_workdir
    rm -rf "$molt_work/unpacked"
    mkdir -p "$molt_work/unpacked" &&
        tar -xzf "$1" -C "$molt_work/unpacked" molt 2>/dev/null &&
        [ -f "$molt_work/unpacked/molt" ] &&
        chmod 755 "$molt_work/unpacked/molt" &&
        molt="$molt_work/unpacked/molt"
}

molt_obtain() {
    molt_cache_dir=$1
    molt_env_dir=$2
    molt_verbose=$3
    molt=
    molt_run_error=
    molt_version=$(molt_descriptor version)

    # 1. Packaged with the buildpack.
    if [ -f "$bp_dir/bin/molt" ]; then
        if ! molt_runs "$bp_dir/bin/molt"; then
            molt_fail "The molt binary packaged with this buildpack does not run on this machine." \
                "The buildpack's bin/molt was built for another architecture or is damaged, so the build cannot install molt." \
                "Use the buildpack package made for this machine's architecture (uname -m: $(uname -m)), or run make package again to rebuild it." \
                "$molt_run_error"
        fi
        molt="$bp_dir/bin/molt"
        molt_say "Binary: packaged with the buildpack"
        return 0
    fi

    if [ -n "${MOLT_BUILDPACK_ARCH:-}" ]; then
        molt_arch=$MOLT_BUILDPACK_ARCH molt_arch_source=MOLT_BUILDPACK_ARCH
    elif [ -n "${CNB_TARGET_ARCH:-}" ]; then
        molt_arch=$CNB_TARGET_ARCH molt_arch_source=CNB_TARGET_ARCH
    else
        molt_arch=$(uname -m) molt_arch_source="uname -m"
    fi
    molt_target=$(molt_target)
    molt_archive=
    molt_expected=
    molt_download_error=
    if [ -n "$molt_target" ]; then
        molt_archive="molt-$molt_version-$molt_target.tar.gz"
        molt_expected=$(molt_expected_sha256 "$molt_archive")
    fi

    # 2. Cached by an earlier build. A copy whose checksum does not match is ignored and
    # replaced below.
    molt_cached="$molt_cache_dir/molt/$molt_archive"
    if [ -n "$molt_cache_dir" ] && [ -n "$molt_expected" ] && [ -f "$molt_cached" ] &&
        [ "$(molt_sha256 "$molt_cached")" = "$molt_expected" ] &&
        molt_unpack "$molt_cached" && molt_runs "$molt"; then
        molt_say "Binary: $molt_archive from the build cache (sha256 verified)"
        return 0
    fi

    # 3. Downloaded and checked against checksums.txt. Without a checksum for this
    # archive nothing is downloaded: an unverified binary never runs.
    if [ -n "$molt_expected" ]; then
        molt_base=$(molt_env MOLT_BINARY_URL)
        if [ -z "$molt_base" ]; then
            molt_base=$(molt_descriptor base-url | sed "s/{version}/$molt_version/g")
        fi
        molt_url="${molt_base%/}/$molt_archive"
        molt_workdir
        molt_say "Downloading $molt_url"
        # The retry and timeout flags are those of Heroku's own buildpacks: a flaky
        # network costs a retry, a dead one fails within minutes rather than hanging.
        if molt_download_error=$(curl --fail --silent --show-error --location \
            --retry 5 --retry-connrefused --connect-timeout 5 --max-time 120 \
            --output "$molt_work/$molt_archive" "$molt_url" 2>&1); then
            molt_actual=$(molt_sha256 "$molt_work/$molt_archive")
            if [ "$molt_actual" != "$molt_expected" ]; then
                molt_fail "The downloaded molt archive is not the one this buildpack expects." \
                    "Its sha256 differs from the one in the buildpack's checksums.txt, so it may be damaged or tampered with, and the build will not run it." \
                    "Deploy again to retry the download. If it fails again, check MOLT_BINARY_URL (it must serve the archives of molt $molt_version), or use a packaged buildpack." \
                    "$molt_url has sha256 $molt_actual; checksums.txt expects $molt_expected."
            fi
            if ! molt_unpack "$molt_work/$molt_archive" || ! molt_runs "$molt"; then
                molt_fail "The downloaded molt archive holds no molt binary that runs on this machine." \
                    "The archive matches checksums.txt, but unpacking it did not give a molt that runs here, so the build cannot install molt." \
                    "Use a packaged buildpack for this machine's architecture, or report this with the output above." \
                    "${molt_run_error:-$molt_archive has no file named molt at its top level.}"
            fi
            if [ -n "$molt_cache_dir" ]; then
                # Older versions are dropped so the cache holds one archive.
                mkdir -p "$molt_cache_dir/molt" &&
                    rm -f "$molt_cache_dir/molt/"molt-*.tar.gz &&
                    cp "$molt_work/$molt_archive" "$molt_cached"
            fi
            molt_say "Binary: $molt_archive downloaded (sha256 verified)"
            return 0
        fi
    fi

    # 4. Built from the buildpack's own source.
    if command -v cargo >/dev/null 2>&1 && [ -f "$bp_dir/Cargo.toml" ]; then
        molt_workdir
        molt_target_dir=${CARGO_TARGET_DIR:-$bp_dir/target}
        molt_say "Building molt $molt_version from the buildpack's source with cargo; this takes a few minutes"
        if cargo build --release --locked --quiet --manifest-path "$bp_dir/Cargo.toml" \
            --target-dir "$molt_target_dir" >"$molt_work/cargo.log" 2>&1 &&
            molt_runs "$molt_target_dir/release/molt"; then
            molt="$molt_target_dir/release/molt"
            molt_say "Binary: built from source with cargo"
            return 0
        fi
        molt_fail "molt could not be built from the buildpack's source." \
            "This buildpack carries no packaged bin/molt and no release could be downloaded, so it tried to build molt with cargo, and that failed." \
            "Use a packaged buildpack (make package), or fix the build error below." \
            "$(tail -n 20 "$molt_work/cargo.log")${molt_run_error:+
$molt_run_error}"
    fi

    # 5. Nothing worked: say why, from the first step that could not be taken.
    if [ -z "$molt_target" ]; then
        molt_fail "There is no molt binary for this machine's architecture, $molt_arch." \
            "molt is released for x86_64 (amd64) and aarch64 (arm64) Linux, and this buildpack has no packaged bin/molt and no cargo to build one from source." \
            "Build on an amd64 or arm64 stack, or add a buildpack that puts cargo on PATH before this one so that molt is built from source." \
            "$molt_arch_source says $molt_arch."
    fi
    if [ -z "$molt_expected" ]; then
        molt_fail "This buildpack has no molt binary and no checksum to download one with." \
            "It carries no packaged bin/molt, and its checksums.txt lists no sha256 for $molt_archive, so a download could not be verified and is not made; there is no cargo to build molt from source either." \
            "Use a released or packaged version of the buildpack (make package builds one), or add a buildpack that puts cargo on PATH before this one." \
            "checksums.txt has no line for $molt_archive."
    fi
    molt_fail "The molt binary could not be downloaded." \
        "This buildpack carries no packaged bin/molt, so it downloads the molt $molt_version release archive, and the download failed after retries; there is no cargo to build molt from source either." \
        "Deploy again to retry. If it fails again, check that MOLT_BINARY_URL (if set) serves molt's release archives, or use a packaged buildpack." \
        "$molt_download_error"
}

# Runs the binary found by molt_obtain and exits with its status. A binary unpacked into
# the work directory is not exec'd, so that the directory is removed once it has finished.
molt_run() {
    if [ -z "$molt_work" ]; then
        exec "$molt" "$@"
    fi
    molt_status=0
    "$molt" "$@" || molt_status=$?
    exit "$molt_status"
}
