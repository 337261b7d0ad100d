#!/usr/bin/env bash
# Builds every guest operator (the Rust examples and the Python example) into
# target/guests/, where the example job files and the tests find them.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mkdir -p "$GUESTS"

RUST_GUESTS=(word-count-tokenizer word-count-counter map-filter faulty latest hostile)
step "Rust guests: ${RUST_GUESTS[*]}"
args=()
for p in "${RUST_GUESTS[@]}"; do args+=(-p "$p"); done
cargo build --manifest-path "$REPO/Cargo.toml" --target wasm32-wasip2 --release "${args[@]}"
wasm_dir="$(cargo_target_dir)/wasm32-wasip2/release"
for p in "${RUST_GUESTS[@]}"; do
  cp "$wasm_dir/${p//-/_}.wasm" "$GUESTS/"
done

step "Python guest: python-upper"
if [ ! -f "$GUESTS/python_upper.wasm" ] || [ -n "$(find "$REPO/examples/python-upper" "$REPO/wit" -newer "$GUESTS/python_upper.wasm" -type f | head -1)" ]; then
  "$REPO/examples/python-upper/build.sh" "$GUESTS/python_upper.wasm"
fi
ls -l "$GUESTS"
