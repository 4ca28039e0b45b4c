#!/usr/bin/env bash
# Long fuzz run of every network parser (the targets of medrelay::fuzz, see
# tests/fuzz_parsers.rs): each target runs for SECS seconds on one core,
# property-based (proptest) from fresh random seeds, every call checked for
# panics, its parser's allocation bound and its round trip.
#
#   SECS=60 bash benches/fuzz.sh            # 11 targets x 60 s
#   SECS=60 TARGETS="walk pdu" bash benches/fuzz.sh
#
# Prints per target: execs, execs/s, crashes (a failure prints the minimal
# input and FUZZ_RNG=... to replay it), the call closest to its allocation
# bound (peak / bound), and a final summary line. Exit status 1 if any
# target failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECS="${SECS:-60}"
TARGETS="${TARGETS:-pdu assembly dimse walk meta signaling datachannel relay_frame bundle stun api_json}"
log_dir="$(mktemp -d)"
trap 'rm -rf "$log_dir"' EXIT

cargo test --locked --test fuzz_parsers --no-run -q 2>"$log_dir/build" || { cat "$log_dir/build"; exit 1; }

total_execs=0 total_crashes=0 total_secs=0
printf '%-12s %12s %10s %8s %8s %26s\n' target execs execs/s secs crashes 'worst peak / bound (bytes)'
for t in $TARGETS; do
    out="$log_dir/$t"
    # One test thread: one core, as the machine is shared.
    FUZZ_SECS="$SECS" cargo test --locked -q --test fuzz_parsers -- --exact "fuzz_$t" \
        --nocapture --test-threads=1 >"$out" 2>&1
    status=$?
    line="$(grep -m1 "^FUZZ $t:" "$out" || true)"
    field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
    if [ "$status" -eq 0 ] && [ -n "$line" ]; then
        execs="$(field execs)" rate="$(field execs_per_sec)" secs="$(field secs)" crashes=0
        peak="$(field worst_peak_bytes)" bound="$(field its_bound)"
    else
        execs='?' rate='?' secs="$SECS" crashes=1 peak='?' bound='?'
        echo "--- $t failed:"; grep -E "fuzz $t:|minimal failing input|FUZZ_RNG" -A3 "$out" | head -40
    fi
    printf '%-12s %12s %10s %8s %8s %26s\n' "$t" "$execs" "$rate" "$secs" "$crashes" "$peak / $bound"
    [ "$execs" != '?' ] && total_execs=$((total_execs + execs))
    total_crashes=$((total_crashes + crashes))
    total_secs="$(awk -v a="$total_secs" -v b="$secs" 'BEGIN { print a + b }')"
done
echo "fuzz: $(wc -w <<<"$TARGETS") targets, $total_execs execs in ${total_secs}s, $total_crashes crashes, every call within its parser's allocation bound: $([ "$total_crashes" -eq 0 ] && echo yes || echo no)"
[ "$total_crashes" -eq 0 ]
