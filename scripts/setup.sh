#!/usr/bin/env bash
# Installs what building and testing Weir needs on a fresh machine: the WASM target for
# Rust guests and componentize-py for the Python guest. Safe to run again.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "Rust target wasm32-wasip2"
rustup target add wasm32-wasip2

step "componentize-py (Python guests)"
if ! command -v componentize-py >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'componentize-py==0.25.1'
fi
componentize-py --version
