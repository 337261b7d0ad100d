#!/usr/bin/env bash
# Installs what building and testing Weir needs on a fresh machine: libclang (the
# rocksdb crate generates its bindings with it), the WASM target for Rust guests,
# componentize-py for the Python guest, and the S3-compatible server the tests start on
# 127.0.0.1. Safe to run again.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "libclang (RocksDB bindings)"
if ! ldconfig -p 2>/dev/null | grep -q 'libclang\(-[0-9.]*\)\?\.so'; then
  sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
fi

step "Rust target wasm32-wasip2"
rustup target add wasm32-wasip2

step "componentize-py (Python guests)"
if ! command -v componentize-py >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'componentize-py==0.25.1'
fi
componentize-py --version

step "s3s-fs (the S3-compatible server the tests start on 127.0.0.1)"
S3S_FS_VERSION=0.14.1
if [[ "$(s3s-fs --version 2>/dev/null || true)" != "s3s-fs $S3S_FS_VERSION" ]]; then
  # 0.15 and later need a newer rustc; the server binary is behind the `binary` feature.
  cargo install s3s-fs --version "$S3S_FS_VERSION" --locked --features binary
fi
s3s-fs --version
