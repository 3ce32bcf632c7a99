# Mirrors CI: `make test` is the whole test suite, `make quickstart` the main example.
# The build cache lives outside the clone so repeated runs are fast.
CARGO_TARGET_DIR ?= $(HOME)/.cache/serving-target
export CARGO_TARGET_DIR

.PHONY: quickstart test lint ci

quickstart:
	cargo run --release --example quickstart

test:
	./scripts/test

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --all-features -q -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps -q

ci: lint test
