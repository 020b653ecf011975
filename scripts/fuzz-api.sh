#!/usr/bin/env bash
# Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis, from
# PyPI): starts `wasmjobs serve` on a fresh SQLite file with one module, one finished job and one
# finished workflow run,
# then sends generated requests to every operation. Fails on any 5xx and on any response that
# breaks the documented schema. Part of scripts/test.sh (CI).
#
# The stateful phase is off: schemathesis 4.32 infers a link from POST /v1/jobs to
# GET /v1/modules/{key} with a parameter named `id` and then refuses its own link. The coverage
# phase still reaches the stored job (ids start at the documented minimum, 1), so its SSE stream
# is checked against the schema.
set -euo pipefail
cd "$(dirname "$0")/.."

EXAMPLES="${WASMJOBS_FUZZ_EXAMPLES:-40}"
VENV=target/schemathesis-venv
if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis>=4,<5"
fi

cargo build --quiet -p wasmjobs --bin wasmjobs
# Where cargo put it (and where the tests' build put the guests): CARGO_TARGET_DIR if set.
T="${CARGO_TARGET_DIR:-target}"
WJ="$T/debug/wasmjobs"
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
"$WJ" serve --db "$DIR/fuzz.db" --addr "127.0.0.1:$PORT" --cache-dir "$DIR/cache" 2> "$DIR/serve.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 1 200); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.05; done

# Something to find: a module, a finished job, a workflow and a finished run of it.
NOOP=$(ls "$T/wasm-guests/wasm32-wasip2/release/noop.wasm")
export WASMJOBS_SERVER="$URL"
"$WJ" module upload "$NOOP" --name noop >/dev/null
"$WJ" job submit noop --input '"hello"' --wait >/dev/null
printf 'name: pair\nnodes:\n  - {name: a, module: noop}\n  - {name: b, module: noop, needs: [a]}\n' > "$DIR/pair.yaml"
"$WJ" workflow create "$DIR/pair.yaml" >/dev/null
"$WJ" workflow run pair --input '"hello"' --follow >/dev/null 2>&1

PYTHONPATH=scripts SCHEMATHESIS_HOOKS=fuzz_hooks "$VENV/bin/schemathesis" run "$URL/openapi.json" \
  --checks not_a_server_error,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --max-examples "$EXAMPLES" \
  --request-timeout 20 \
  --seed "${WASMJOBS_FUZZ_SEED:-20261123}" \
  --no-color && status=0 || status=$?
if grep -q "panicked" "$DIR/serve.log"; then
  echo "the server panicked during the fuzz run:"; grep -A5 panicked "$DIR/serve.log"; exit 1
fi
exit $status
