#!/usr/bin/env bash
# Builds app.py into a Weir operator component with componentize-py.
#
# Usage: build.sh [OUTPUT]   (default: <repo>/target/guests/python_counter.wasm)
# Needs `componentize-py` on PATH: pip install componentize-py==0.25.1
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$repo/target/guests/python_counter.wasm}"

mkdir -p "$(dirname "$out")"
cd "$here"
# The flat-batch helpers (weir_batch.py) live in python-upper; both examples use them.
# No --stub-wasi: the host provides the WASI 0.2 imports the Python runtime uses.
componentize-py -d "$repo/wit" -w operator componentize app \
  -p "$here" -p "$repo/examples/python-upper" -o "$out"
