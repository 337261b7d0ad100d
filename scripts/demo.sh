#!/usr/bin/env bash
# Sets up a fresh machine, builds the guests and the host, and runs the word-count demo.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
"$REPO/scripts/setup.sh"
"$REPO/scripts/build-guests.sh"
step "weir host"
cargo build --manifest-path "$REPO/Cargo.toml" --release -p weir-host
step "word-count demo: weir run examples/word-count/job.toml"
"$(cargo_target_dir)/release/weir" run "$REPO/examples/word-count/job.toml" | sort -t$'\t' -k2,2nr | head -20
