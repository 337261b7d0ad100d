#!/usr/bin/env bash
# Sets up a fresh machine, builds the guests and the host, and runs the word-count demo.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
"$REPO/scripts/setup.sh"
"$REPO/scripts/build-guests.sh"
step "weir host"
cargo build --manifest-path "$REPO/Cargo.toml" --release -p weir-host
step "word-count demo: weir run examples/word-count/job.toml"
# The counter emits every word's running count; keep each word's last, show the top 15.
# awk reads to the end, where `head` would close the pipe early: under pipefail the
# SIGPIPE of `sort` would make the demo exit 141 after printing its result.
"$(cargo_target_dir)/release/weir" run "$REPO/examples/word-count/job.toml" |
  awk -F'\t' '{ count[$1] = $2 } END { for (w in count) print count[w] "\t" w }' |
  sort -rn | awk 'NR <= 15'
