#!/usr/bin/env bash
# Builds app.js into a Weir operator component with ComponentizeJS (build.mjs calls its
# `componentize()` API).
#
# Usage: build.sh [OUTPUT]   (default: <repo>/target/guests/js_counter.wasm)
# Needs Node.js 20 or newer and the pinned ComponentizeJS in ./node_modules:
# `npm ci` in this folder (scripts/setup.sh does it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$repo/target/guests/js_counter.wasm}"

# setup.sh leaves a copy of the lock it installed from; a different one means the pins
# changed since, and building with the old packages would not be what the lock says.
if ! cmp -s "$here/package-lock.json" "$here/node_modules/.weir-installed-lock"; then
  echo "js-counter: node_modules is missing or older than package-lock.json;" \
    "run scripts/setup.sh (or: cd $here && npm ci)" >&2
  exit 1
fi
node "$here/build.mjs" "$repo/wit" "$out"
