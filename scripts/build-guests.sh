#!/usr/bin/env bash
# Builds every guest operator (the Rust examples, the Python and JavaScript examples) into
# target/guests/, where the example job files and the tests find them.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mkdir -p "$GUESTS"

RUST_GUESTS=(word-count-tokenizer word-count-counter map-filter window-count faulty latest hostile old-contract)
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

# python-counter imports weir_batch.py from python-upper, so that file counts as a source.
step "Python guest: python-counter"
if [ ! -f "$GUESTS/python_counter.wasm" ] || [ -n "$(find "$REPO/examples/python-counter" "$REPO/examples/python-upper/weir_batch.py" "$REPO/wit" -newer "$GUESTS/python_counter.wasm" -type f -not -path '*/__pycache__/*' | head -1)" ]; then
  "$REPO/examples/python-counter/build.sh" "$GUESTS/python_counter.wasm"
fi

# node_modules is left out of the comparison: package-lock.json stands for it.
step "JavaScript guest: js-counter"
if [ ! -f "$GUESTS/js_counter.wasm" ] || [ -n "$(find "$REPO/examples/js-counter" "$REPO/wit" -path "$REPO/examples/js-counter/node_modules" -prune -o -newer "$GUESTS/js_counter.wasm" -type f -print | head -1)" ]; then
  "$REPO/examples/js-counter/build.sh" "$GUESTS/js_counter.wasm"
fi
ls -l "$GUESTS"
