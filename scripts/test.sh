#!/usr/bin/env bash
# Sets up a fresh machine, builds the guests and the host, and runs the whole test suite
# (unit tests, doctests and the end-to-end tests that drive the real `weir` binary).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
"$REPO/scripts/setup.sh"
"$REPO/scripts/build-guests.sh"
step "weir host"
cargo build --manifest-path "$REPO/Cargo.toml" --release -p weir-host
step "tests"
cargo test --manifest-path "$REPO/Cargo.toml" --release --workspace "$@"
