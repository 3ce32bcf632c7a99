# Mirrors CI: `make test` is the whole test suite, `make quickstart` the main example.
# The build cache lives outside the clone so repeated runs are fast.
CARGO_TARGET_DIR ?= $(HOME)/.cache/serving-target
export CARGO_TARGET_DIR

.PHONY: quickstart test lint ci bench soak

quickstart:
	cargo run --release --example quickstart

test:
	./scripts/test

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --all-features -q -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps -q

ci: lint test

# Benchmarks (not part of `make test`): the web service against bare axum, then batching.
bench:
	./scripts/bench-setup
	cargo bench --bench http
	cargo bench --bench batching

# Saturation load for SOAK_SECS (default 600) seconds: errors, throughput per minute, RSS.
soak:
	./scripts/bench-setup
	cargo bench --bench soak
