//! Integration tests: run the `molt` binary against the fixture apps in `test/fixtures/`.

/// The Heroku classic buildpack end to end: detect, compile, release, then a dyno's boot;
/// obtaining the binary (packaged, cached, downloaded, built); every failure message.
mod buildpack;
/// The dyno's memory limit for real: a leaking app in a 512 MB memory cgroup, with and
/// without molt.
mod cgroup;
/// The Cloud Native Buildpack as the lifecycle runs it: descriptors parsed with
/// `libcnb-data`, detect, build, and the web process started as the launcher starts it.
mod cnb;
/// Learned concurrency on real app servers: Node I/O- and CPU-bound, Unicorn, Puma,
/// against bare Node's throughput measured in the same test; buffering per request.
mod concurrency;
/// Requests and responses read by real origins and a strict client directly and through
/// molt: the same, but for the documented rewrites.
mod differential;
/// The documentation: every relative link in README.md, ARCHITECTURE.md and docs/*.md
/// resolves, anchors included, and README's set-up section gives `make demo` and `make test`.
mod docs;
/// Faults injected on real processes: kills, stops, resets, a full spool, few descriptors.
mod faults;
/// `molt status` and `molt restart` with no PORT find the running molt by its socket.
mod find_molt;
/// Checks of the Python fixture app itself, run directly without molt.
mod fixture_smoke;
/// Hostile and malformed HTTP on raw sockets, a table-driven corpus, and what molt exposes
/// to other users and on the public port.
mod hostile;
/// Kept-alive upstream connections across Node's, gunicorn's and Puma's idle timeouts.
mod keepalive;
/// Worker and molt lifecycle: boot failures, signals, shutdown, restarts, PID 1.
mod lifecycle;
/// Memory governance, recycling, autoscaling, status and metrics.
mod memory;
/// The metrics listener: promtool, a real Prometheus server under load, only /metrics
/// served, memory across scrapes, and the Kubernetes manifests in test/k8s/.
mod metrics;
/// Requests no worker will take get 503 with Retry-After: molt gave up booting, the
/// shutdown deadline, no worker left.
mod no_worker;
/// Preforking servers (Unicorn, gunicorn, Puma) adopted: their children governed by
/// signals, their shared memory kept.
mod prefork;
/// The proxy: routing, bodies, streaming, upgrades, headers, queue limits.
mod proxy;
/// Responses read ahead of a slow client, in memory and then in a temporary file.
mod relay;
/// The release path: `make release` here, then `bin/compile` from a clean clone of the tag
/// with no cargo installs the archive from a loopback server, verified.
mod release;
/// Configuration errors and `molt plan`.
mod settings;
/// Stopping an app under a wrapper shell: what the shell started gets the stop timeout.
mod stop;
/// Shared helpers: the molt guard, `/proc` inspection, a small HTTP/1.1 client.
mod support;
/// Warm-up and warm-first routing: recycles of an app slow on its first requests, with
/// warm-up off and on side by side; a failing warm-up.
mod warmup;
