#!/usr/bin/env bash
# A client generated from the served OpenAPI document by a real generator
# (openapi-python-client, from PyPI) uploads a module, submits a job, waits for it and reads
# its output, against a live `wasmjobs serve`; then a 404 comes back as the documented problem.
# Proves the document is usable by generators, not only valid. Part of scripts/test.sh (CI).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/openapi-client-venv
if [ ! -x "$VENV/bin/openapi-python-client" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "openapi-python-client==0.26.2" "httpx>=0.23,<0.29" "attrs>=22.2" "python-dateutil>=2.8"
fi

cargo build --quiet -p wasmjobs --bin wasmjobs
T="${CARGO_TARGET_DIR:-target}"
WJ="$T/debug/wasmjobs"
NOOP=$(ls "$T/wasm-guests/wasm32-wasip2/release/noop.wasm")
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
"$WJ" serve --db "$DIR/client.db" --addr "127.0.0.1:$PORT" --cache-dir "$DIR/cache" 2> "$DIR/serve.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 1 200); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.05; done

curl -sf "$URL/openapi.json" -o "$DIR/openapi.json"
# The generator has no notion of application/wasm: it is bytes, as octet-stream is.
printf 'content_type_overrides:\n  application/wasm: application/octet-stream\n' > "$DIR/config.yaml"
(cd "$DIR" && "$OLDPWD/$VENV/bin/openapi-python-client" generate --path openapi.json \
  --config config.yaml --meta none --output-path wasmjobs_client >/dev/null 2>"$DIR/generate.log") \
  || { cat "$DIR/generate.log"; exit 1; }

PYTHONPATH="$DIR" "$VENV/bin/python" - "$URL" "$NOOP" <<'PY'
import sys, time
from wasmjobs_client import Client
from wasmjobs_client.api.modules import upload_module
from wasmjobs_client.api.jobs import submit_job, get_job
from wasmjobs_client.models import SubmitJob, Problem
from wasmjobs_client.types import File

url, noop = sys.argv[1], sys.argv[2]
client = Client(base_url=url, raise_on_unexpected_status=True)
with open(noop, "rb") as f:
    module = upload_module.sync(client=client, body=File(payload=f, file_name="noop.wasm"), name="noop")
assert not isinstance(module, Problem), module
print("uploaded", module.digest)
job = submit_job.sync(client=client, body=SubmitJob(module="noop", input_="through a generated client"))
assert not isinstance(job, Problem), job
for _ in range(200):
    job = get_job.sync(client=client, id=job.id)
    if job.state in ("succeeded", "failed", "cancelled"):
        break
    time.sleep(0.05)
assert job.state == "succeeded", job
print("job", job.id, job.state, job.output)
missing = get_job.sync(client=client, id=987654)
assert isinstance(missing, Problem) and missing.status == 404 and missing.code == "not_found", missing
print("a 404 is a Problem:", missing.detail)
PY
echo "a client generated from /openapi.json works"
