# The two set-up commands in README.md are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: build test lint demo

build:
	$(CARGO) build --release --locked

# Unit tests, then the integration tests against the real binary and real processes.
test:
	$(CARGO) test --locked --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

demo: build
	bash test/demo/run.sh target/release/molt
