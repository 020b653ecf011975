#!/usr/bin/env bash
# Replays the Postgres store's insert, claim and ending statements in SQL alone and prints the
# server backend's CPU per job for each variant of replay.sql, runs alternated.
#   scripts/pg-replay/run.sh [iterations (×1,000 jobs), default 20] [rounds, default 2] [variants…]
# Uses $WASMJOBS_TEST_POSTGRES (default the local test database), in a schema `replay_sql` that
# it creates from runtime/migrations/postgres (then runs $REPLAY_SQL there, if set: to try a
# change of the schema, an index dropped, say) and drops at the end. Run it on a quiet machine:
# the figures are CPU time, but two cores shared with a build still move them.
set -euo pipefail
cd "$(dirname "$0")/../.."
URL="${WASMJOBS_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"
ITERS="${1:-20}"
ROUNDS="${2:-2}"
shift $(( $# < 2 ? $# : 2 ))
VARIANTS=("${@:-cur inline seg segnc}")
read -r -a VARIANTS <<< "${VARIANTS[*]}"

{
  echo "DROP SCHEMA IF EXISTS replay_sql CASCADE; CREATE SCHEMA replay_sql; SET search_path TO replay_sql;"
  for f in runtime/migrations/postgres/*.sql; do cat "$f"; echo; done
  cat scripts/pg-replay/replay.sql
  echo "${REPLAY_SQL:-}"
} | psql "$URL" -q -v ON_ERROR_STOP=1 >/dev/null 2>&1 || { echo "cannot set up the schema at $URL" >&2; exit 1; }
trap 'psql "$URL" -qc "DROP SCHEMA IF EXISTS replay_sql CASCADE" >/dev/null 2>&1' EXIT

ticks=$(getconf CLK_TCK)
for ((r = 1; r <= ROUNDS; r++)); do
  for v in "${VARIANTS[@]}"; do
    psql "$URL" -qc "VACUUM replay_sql.job_queue, replay_sql.job_seg, replay_sql.claims, replay_sql.jobs"
    coproc P { psql "$URL" -qAt 2>&1; }
    echo "SET search_path TO replay_sql; SET enable_seqscan = off; SET enable_bitmapscan = off; SET jit = off; SET synchronous_commit = off; SELECT pg_backend_pid();" >&"${P[1]}"
    read -r -u "${P[0]}" pid
    c0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    echo "CALL life($ITERS, '$v');" >&"${P[1]}"
    read -r -u "${P[0]}" res
    c1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    echo '\q' >&"${P[1]}"
    wait "$P_PID" 2>/dev/null || true
    jobs=$((ITERS * 1000))
    IFS='|' read -r ins claim end <<< "$res"
    [[ -n "${end:-}" ]] || { echo "$v: $res" >&2; exit 1; }
    awk -v v="$v" -v c=$((c1 - c0)) -v t="$ticks" -v n="$jobs" -v i="$ins" -v cl="$claim" -v e="$end" 'BEGIN {
      printf "%-9s %6d jobs  backend CPU %5.1f µs/job   wall per job: insert %5.2f  claim %5.2f  end %5.2f µs\n",
        v, n, c * 1e6 / t / n, i * 1e6 / n, cl * 1e6 / n, e * 1e6 / n }'
  done
done
