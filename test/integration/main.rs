//! Integration tests: run the `molt` binary against the fixture apps in `test/fixtures/`.

/// Checks of the Python fixture app itself, run directly without molt.
mod fixture_smoke;
/// Worker and molt lifecycle: boot failures, signals, shutdown, restarts, PID 1.
mod lifecycle;
/// Memory governance, recycling, autoscaling, status and metrics.
mod memory;
/// The proxy: routing, bodies, streaming, upgrades, headers, queue limits.
mod proxy;
/// Configuration errors and `molt plan`.
mod settings;
/// Shared helpers: the molt guard, `/proc` inspection, a small HTTP/1.1 client.
mod support;
