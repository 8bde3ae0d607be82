# The two set-up commands in README.md are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: build test lint demo package bench bench-smoke toolchain release verify-release reproducible

# rust-toolchain.toml pins the toolchain; this makes it usable offline where rustup's
# stable is that version (scripts/toolchain.sh), before any cargo call.
toolchain:
	@sh scripts/toolchain.sh

build: toolchain
	$(CARGO) build --release --locked

# Unit tests, then the integration tests against the real binary and real processes.
test: toolchain
	$(CARGO) test --locked --all-targets

lint: toolchain
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# The leak story: the leaking Rack app in test/demo/app (Unicorn, 2 workers) built with the
# buildpack and run with a 512MB budget beside the same app on Unicorn alone, each in a
# 512MB memory cgroup where the machine allows it, under the same load for a minute; prints
# a table and plots memory over time to target/demo/memory.svg and .png. Ruby, Rack,
# Unicorn and matplotlib come first (Debian's packages; installed when run as root), so a
# missing one stops the demo before the build.
demo:
	bash test/demo/setup.sh
	$(MAKE) --no-print-directory build
	bash test/demo/run.sh target/release/molt

# Every benchmark in test/bench/ (proxy overhead against nginx and the bare upstream,
# footprint, recycling under load, start-up and scale-up latency, the musl allocator);
# tables on stdout and in target/bench/results.md, one CSV each under target/bench/.
bench: build
	bash test/bench/all.sh

# The same benchmarks for a few seconds each: they run and write their tables; no speed is judged.
bench-smoke: build
	bash test/bench/all.sh --smoke

# Releases (docs/buildpack.md, "Cutting a release"). `make release VERSION=x.y.z` writes
# the version into Cargo.toml, Cargo.lock and buildpack.toml, and builds under DIST, for
# each target in RELEASE_TARGETS:
#   molt-VERSION-TARGET.tar.gz            the release archive (`molt` at its top level) that
#                                         bin/compile downloads when a buildpack has no bin/molt
#   molt-buildpack-VERSION-TARGET/        the buildpack with bin/molt inside: run
#                                         `pack buildpack package` there (package.toml)
#   molt-buildpack-VERSION-TARGET.tgz     the same as a tarball, for `heroku buildpacks:add URL`
# and checksums.txt (sha256 of the release archives), here and in DIST, so the commit
# tagged vVERSION carries the checksums of its own archives. The builds are bit for bit
# reproducible (scripts/release.sh says how): `make verify-release` rebuilds every archive
# checksums.txt lists and compares, as the release workflow does on a tag, and `make
# reproducible` builds the host's archive in two fresh directories and compares them.
# A target rustup cannot install is reported as NOT BUILT and left out of checksums.txt.
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
RELEASE_TARGETS ?= x86_64-unknown-linux-musl aarch64-unknown-linux-musl
DIST ?= dist

release: toolchain
	bash scripts/release.sh release $(VERSION) $(DIST) $(RELEASE_TARGETS)

# The release of the version Cargo.toml has now.
package: release

verify-release: toolchain
	bash scripts/release.sh verify $(DIST)

reproducible: toolchain
	bash scripts/release.sh reproducible $(DIST)/reproducible $$(uname -m)-unknown-linux-musl
