#!/usr/bin/env bash
# Installs what building and testing Weir needs on a fresh machine: libclang (the
# rocksdb crate generates its bindings with it), the WASM target for Rust guests,
# componentize-py for the Python guests, Node.js and ComponentizeJS for the JavaScript
# guest, the S3-compatible server the tests start on 127.0.0.1, what the REST tests
# drive the server with: headless Chromium for the web page, schemathesis for the
# OpenAPI contract and prometheus-client for the text of /metrics, and for the Kafka
# tests the Kafka-compatible broker they start on 127.0.0.1 (tansu) and the independent
# client they check it with (confluent-kafka), and iproute2 for the cluster test that
# puts workers in network namespaces. Safe to run again.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "libclang (RocksDB bindings)"
if ! ldconfig -p 2>/dev/null | grep -q 'libclang\(-[0-9.]*\)\?\.so'; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
fi

step "iproute2 (network namespaces for the cluster tests)"
if ! command -v ip >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
fi

step "Rust target wasm32-wasip2"
rustup target add wasm32-wasip2

step "componentize-py (Python guests)"
if ! command -v componentize-py >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'componentize-py==0.25.1'
fi
componentize-py --version

step "Node.js and ComponentizeJS (JavaScript guests)"
# ComponentizeJS 0.23 needs Node.js 20 or newer (its oxc-parser says so); Debian 12's
# own nodejs is 18, so a machine without a newer one fails here, saying why.
NODE_MAJOR_MIN=20
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt "$NODE_MAJOR_MIN" ]; then
  echo "setup: Node.js $(node --version) is too old for ComponentizeJS; need $NODE_MAJOR_MIN or newer" >&2
  exit 1
fi
node --version
# The versions are pinned by examples/js-counter/package-lock.json; the copy of the lock
# left in node_modules tells a later run (and build.sh) what is installed.
js_dir="$REPO/examples/js-counter"
if ! cmp -s "$js_dir/package-lock.json" "$js_dir/node_modules/.weir-installed-lock"; then
  (cd "$js_dir" && npm ci --no-audit --no-fund)
  cp "$js_dir/package-lock.json" "$js_dir/node_modules/.weir-installed-lock"
fi

step "s3s-fs (the S3-compatible server the tests start on 127.0.0.1)"
S3S_FS_VERSION=0.14.1
if [[ "$(s3s-fs --version 2>/dev/null || true)" != "s3s-fs $S3S_FS_VERSION" ]]; then
  # 0.15 and later need a newer rustc; the server binary is behind the `binary` feature.
  cargo install s3s-fs --version "$S3S_FS_VERSION" --locked --features binary
fi
s3s-fs --version

step "Chromium (the web page's test drives it headless)"
if ! command -v chromium >/dev/null 2>&1; then
  as_root apt-get update -qq
  # Without the recommended desktop extras (notification daemon, printing, GL drivers):
  # the test renders headless with the fonts the machine has.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
chromium --version

step "schemathesis and prometheus-client (the REST contract test)"
SCHEMATHESIS_VERSION=4.32.5
PROMETHEUS_CLIENT_VERSION=0.26.0
installed() { python3 -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
if [[ "$(installed schemathesis)" != "$SCHEMATHESIS_VERSION" ||
      "$(installed prometheus-client)" != "$PROMETHEUS_CLIENT_VERSION" ]]; then
  python3 -m pip install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" "prometheus-client==$PROMETHEUS_CLIENT_VERSION"
fi
schemathesis --version

step "tansu and confluent-kafka (the Kafka broker the tests start on 127.0.0.1, and its client)"
TANSU_VERSION=0.6.0
CONFLUENT_KAFKA_VERSION=2.16.1
if [[ "$(tansu --version 2>/dev/null || true)" != "tansu $TANSU_VERSION" ]]; then
  # `dynostore` is the storage engine on S3: the tests keep the broker's log in an
  # s3s-fs server (above), so that a broker they restart keeps it.
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore
fi
tansu --version
if [[ "$(installed confluent-kafka)" != "$CONFLUENT_KAFKA_VERSION" ]]; then
  # The wheel carries librdkafka: no system library needed.
  python3 -m pip install --quiet --disable-pip-version-check \
    "confluent-kafka==$CONFLUENT_KAFKA_VERSION"
fi
python3 -c 'import confluent_kafka; print("confluent-kafka", confluent_kafka.version(), "librdkafka", confluent_kafka.libversion()[0])'
