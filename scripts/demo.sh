#!/usr/bin/env bash
# The main job: build wasmjobs and the example jobs, then run each example in the sandbox and
# show the results. Works on a fresh machine with a Rust toolchain (rustup).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Installing the wasm32-wasip2 target (once)"
rustup target add wasm32-wasip2 >/dev/null
rustup target list --installed | grep -qx wasm32-wasip2

step "Building wasmjobs (first build compiles wasmtime: several minutes)"
cargo build --quiet -p wasmjobs --bin wasmjobs
WJ="${CARGO_TARGET_DIR:-target}/debug/wasmjobs"

step "Building the example jobs for wasm32-wasip2"
export CARGO_TARGET_DIR="$PWD/target/wasm-guests"
"$WJ" build examples/wordfreq >/dev/null
cargo build --quiet --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml
unset CARGO_TARGET_DIR
J=target/wasm-guests/wasm32-wasip2/release
ls -l "$J"/{wordfreq,csvstats,thumbnail,markdown,linecount,splitter,wordmerge}.wasm | awk '{print "  " $5 " bytes  " $9}'

step "wordfreq: the five most frequent words of a text (JSON in, JSON out)"
"$WJ" run "$J/wordfreq.wasm" --input @examples/data/tale.json
echo

step "csvstats: statistics of each column of a CSV"
"$WJ" run "$J/csvstats.wasm" --input @examples/data/weather.json --quiet
echo

step "markdown: this README's first lines rendered to HTML (raw bytes in, raw bytes out)"
head -n 12 README.md > target/demo-readme-head.md
"$WJ" run "$J/markdown.wasm" --input @target/demo-readme-head.md --quiet | head -n 8

step "thumbnail: a 320x200 PNG shrunk to fit 128x128, with a 32 MiB memory limit"
"$WJ" run "$J/thumbnail.wasm" --input @examples/data/gradient.png --memory 32MiB --quiet > target/demo-thumbnail.png
echo "  wrote target/demo-thumbnail.png ($(wc -c < target/demo-thumbnail.png) bytes)"

step "linecount: a plain fn-main WASI program (wasi:cli/command): stdin in, stdout out"
"$WJ" run "$J/linecount.wasm" --input @README.md --quiet

step "Limits: the same job with too little fuel ends out_of_fuel (exit code 11)"
set +e
"$WJ" run "$J/wordfreq.wasm" --input @examples/data/tale.json --fuel 10000 --quiet
echo "  exit code: $?"
set -e

step "The attempt report (--report): outcome, fuel, peak memory, wall time"
"$WJ" run "$J/wordfreq.wasm" --input @examples/data/tale.json --report --quiet \
  | grep -E '"(outcome|fuel_consumed|peak_memory_bytes|wall_time_us)"'

step "The server: wasmjobs serve on an embedded SQLite file, the examples uploaded and run as jobs"
DEMO=target/demo-server
rm -rf "$DEMO" && mkdir -p "$DEMO"
PORT=18089
export WASMJOBS_SERVER="http://127.0.0.1:$PORT"
"$WJ" serve --db "$DEMO/wasmjobs.db" --addr "127.0.0.1:$PORT" --cache-dir "$DEMO/cache" 2> "$DEMO/serve.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
for _ in $(seq 100); do "$WJ" job list >/dev/null 2>&1 && break; sleep 0.1; done
for m in wordfreq csvstats markdown splitter wordmerge; do
  printf '  uploaded %-9s %s\n' "$m" "$("$WJ" module upload "$J/$m.wasm" --name "$m")"
done
echo "  wordfreq as a job (submit --wait):"
"$WJ" job submit wordfreq --input "$(cat examples/data/tale.json)" --wait
echo "  csvstats as a job, followed live (submit --follow):"
"$WJ" job submit csvstats --input "$(cat examples/data/weather.json)" --follow 2>&1 | grep -E '^\[|^--' | sed 's/^/    /'

step "A workflow: split a text into chunks, count each chunk's words in its own job, merge"
sed -n '/^name:/,$p' examples/workflows/wordcount.yaml | sed 's/^/    /'
"$WJ" workflow create examples/workflows/wordcount.yaml | sed 's/^/  created /'
echo "  its graph (Mermaid):"
"$WJ" workflow graph wordcount | sed 's/^/    /'
echo "  a run, followed live (workflow run --follow; on a terminal the tree redraws in place):"
"$WJ" workflow run wordcount --input @examples/data/tale.json --follow > "$DEMO/run.out" 2> "$DEMO/run.log"
sed 's/^/    /' "$DEMO/run.log"
echo "  the run's output (the merge node's): the ten most frequent words"
sed 's/^/    /' "$DEMO/run.out"

echo "  the jobs, as stored in $DEMO/wasmjobs.db:"
"$WJ" job list | sed 's/^/    /'
kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true
trap - EXIT

step "Done. Next: ./scripts/test.sh runs the whole test suite."
