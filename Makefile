# The two set-up commands in README.md are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: build test lint demo package bench bench-smoke

build:
	$(CARGO) build --release --locked

# Unit tests, then the integration tests against the real binary and real processes.
test:
	$(CARGO) test --locked --all-targets

lint:
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

# The buildpack as it is released, under dist/, for each target in PACKAGE_TARGETS:
#   molt-VERSION-TARGET.tar.gz            the release archive (`molt` at its top level) that
#                                         bin/compile downloads when a buildpack has no bin/molt
#   molt-buildpack-VERSION-TARGET/        the buildpack with bin/molt inside: run
#                                         `pack buildpack package` there (package.toml)
#   molt-buildpack-VERSION-TARGET.tgz     the same as a tarball, for `heroku buildpacks:add URL`
# and checksums.txt (sha256 of the release archives) is rewritten, here and in each
# buildpack. The binaries are static musl executables, so one file runs on every stack.
# aarch64 links with rust-lld, which works because every dependency is pure Rust (no C).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
PACKAGE_TARGETS ?= x86_64-unknown-linux-musl aarch64-unknown-linux-musl
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER = rust-lld

package:
	rm -rf dist && mkdir -p dist
	set -e; for target in $(PACKAGE_TARGETS); do \
	  rustup target add $$target; \
	  $(CARGO) build --release --locked --target $$target; \
	  bin=target/$$target/release/molt; \
	  file $$bin; ldd $$bin || true; \
	  tmp=$$(mktemp -d); cp $$bin $$tmp/molt; \
	  tar -czf dist/molt-$(VERSION)-$$target.tar.gz -C $$tmp molt; rm -rf $$tmp; \
	done
	# The binary for this machine must serve: `molt run` in front of python3's http.server.
	PORT=$$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
	  sh test/package-smoke.sh target/$$(uname -m)-unknown-linux-musl/release/molt
	{ sed -n '/^#/p' checksums.txt; cd dist && sha256sum molt-$(VERSION)-*.tar.gz; } > dist/checksums.txt
	cp dist/checksums.txt checksums.txt
	set -e; for target in $(PACKAGE_TARGETS); do \
	  dir=dist/molt-buildpack-$(VERSION)-$$target; \
	  mkdir -p $$dir; \
	  cp -R bin buildpack.toml package.toml checksums.txt README.md docs $$dir/; \
	  cp target/$$target/release/molt $$dir/bin/molt; \
	  tar -czf $$dir.tgz -C $$dir .; \
	done
	cd dist && sha256sum *.tgz *.tar.gz
