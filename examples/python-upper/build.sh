#!/usr/bin/env bash
# Builds app.py into a Weir operator component with componentize-py.
#
# Usage: build.sh [OUTPUT]   (default: <repo>/target/guests/python_upper.wasm)
# Needs `componentize-py` on PATH: pip install componentize-py==0.25.1
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$here/../../target/guests/python_upper.wasm}"

mkdir -p "$(dirname "$out")"
cd "$here"
# No --stub-wasi: the host provides the WASI 0.2 imports the Python runtime uses.
componentize-py -d "$repo/wit" -w operator componentize app -o "$out"
