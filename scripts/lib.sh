# Shared by the scripts in this folder: where things are, and a step banner.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Built guests land here, where the example job files look for them.
GUESTS="$REPO/target/guests"
# Console scripts installed by pip (componentize-py) may not be on PATH yet on a fresh
# machine (pyenv shims need a rehash; --user installs go to ~/.local/bin).
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
export PATH
step() { printf '\n==> %s\n' "$*" >&2; }
cargo_target_dir() {
  cargo metadata --format-version 1 --no-deps --manifest-path "$REPO/Cargo.toml" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}
