#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) on its committed corpus, then prints
# executions, executions per second, coverage and peak memory per target.
# Needs the nightly toolchain and cargo-fuzz: cargo +nightly fuzz ... (see fuzz/README.md).
# New corpus entries go to fuzz/corpus-new/<target> (git-ignored), so the committed corpus stays
# small; crashes go to fuzz/artifacts/<target>/ and make this script exit non-zero.
set -uo pipefail
SECONDS_PER_TARGET=${1:-60}
cd "$(dirname "$0")"
TARGETS=${TARGETS:-"decode roundtrip streaming session config proxy_header proxy_reply websocket datagram"}
cargo +nightly fuzz build -O >/dev/null || { echo "fuzz build failed"; exit 1; }
status=0
results=()
for t in $TARGETS; do
  mkdir -p "corpus-new/$t" "artifacts/$t"
  log=$(mktemp)
  cargo +nightly fuzz run -O "$t" "corpus-new/$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=1024 -malloc_limit_mb=256 \
    -timeout=20 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  if [ $rc -ne 0 ]; then
    status=1
    echo "== $t FAILED (exit $rc); last lines:"
    tail -30 "$log"
  fi
  results+=("$(printf '%-10s %14s %10s %8s %8s %s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${rss:-?}" "$([ $rc -eq 0 ] && echo ok || echo FAILED)")")
  rm -f "$log"
done
printf '%-10s %14s %10s %8s %8s %s\n' target executions exec/s coverage rss_mb result
for r in "${results[@]}"; do echo "$r"; done
exit $status
