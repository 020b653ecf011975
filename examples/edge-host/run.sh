#!/usr/bin/env bash
# Builds the example jobs and the runtime-only edge host, precompiles the jobs with
# `wasmjobs compile`, starts the host and sends it a few requests.
set -euo pipefail
cd "$(dirname "$0")/../.."
rustup target add wasm32-wasip2 >/dev/null

cargo build --quiet -p wasmjobs --bin wasmjobs
CARGO_TARGET_DIR="$PWD/target/wasm-guests" \
  cargo build --quiet --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml
# Alone, so that its wasmjobs-host is built without the compiler.
cargo build --quiet --release -p wasmjobs-edge-host

mkdir -p examples/edge-host/artifacts
for job in markdown thumbnail wordfreq; do
  target/debug/wasmjobs compile "target/wasm-guests/wasm32-wasip2/release/$job.wasm" \
    -o "examples/edge-host/artifacts/$job.cwasm" >/dev/null
done

target/release/wasmjobs-edge-host --config examples/edge-host/edge.toml --listen 127.0.0.1:18090 &
HOST=$!
trap 'kill $HOST 2>/dev/null' EXIT
until curl -sf http://127.0.0.1:18090/healthz >/dev/null; do sleep 0.05; done

echo "== POST /render (this README's first lines)"
head -n 6 examples/edge-host/README.md | curl -s --data-binary @- http://127.0.0.1:18090/render
echo "== POST /thumbnail"
curl -s -o target/edge-thumbnail.png -w '%{http_code} %{content_type} %{size_download} bytes\n' \
  --data-binary @examples/data/gradient.png http://127.0.0.1:18090/thumbnail
echo "== POST /wordfreq"
curl -s --data-binary @examples/data/tale.json http://127.0.0.1:18090/wordfreq; echo
echo "== POST /render with a body that is not UTF-8: the job fails, 422"
printf '\xff\xfe' | curl -s -w '\n%{http_code}\n' --data-binary @- http://127.0.0.1:18090/render
