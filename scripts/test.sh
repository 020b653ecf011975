#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test (SQLite always; Postgres when
# WASMJOBS_TEST_POSTGRES is set), and the edge (no-compiler) build of the example edge host.
# Then fuzzes the live HTTP API from its OpenAPI document (scripts/fuzz-api.sh) and drives it
# with a client generated from that document (scripts/client-from-openapi.sh).
# Installs what it needs. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain"
rustup target add wasm32-wasip2 >/dev/null
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo --version

echo "== headless Chromium for the dashboard's browser test"
# Debian's own packages (the security archive replaces old Chromium builds, so the version is
# the distribution's, not a fixed number); without root, the test says it was skipped.
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: cannot install chromium and chromium-driver (not root): the dashboard's browser test will say it was skipped"
  fi
fi
command -v chromium >/dev/null && chromium --version || true

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== edge profile: the example edge host, with wasmjobs-host built without the compiler"
# The edge tests run this binary (tests/src/lib.rs: edge_host_bin).
cargo build --quiet -p wasmjobs-edge-host --profile edge

echo "== tests"
if [ -z "${WASMJOBS_TEST_POSTGRES:-}" ]; then
  echo "note: WASMJOBS_TEST_POSTGRES is not set; Postgres tests will report that they were skipped"
fi
cargo test --workspace

echo "== API fuzzing from the OpenAPI document (schemathesis)"
./scripts/fuzz-api.sh

echo "== a client generated from the OpenAPI document (openapi-python-client)"
./scripts/client-from-openapi.sh
