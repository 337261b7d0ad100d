# Shared by the scripts in this folder: where things are, and a step banner.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Built guests land here, where the example job files look for them.
GUESTS="$REPO/target/guests"
step() { printf '\n==> %s\n' "$*" >&2; }
cargo_target_dir() {
  cargo metadata --format-version 1 --no-deps --manifest-path "$REPO/Cargo.toml" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}
