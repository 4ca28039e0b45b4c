#!/usr/bin/env bash
# Soak run: 30 minutes of mixed load on this machine with kill -9 of the hub
# and the edge at random moments (benches/soak.py has the details), then what
# was lost (goal: nothing acknowledged or signed), memory and task growth
# (goal <= 10 %), C-STORE ack p99 and API p95 per 5-minute window, and errors
# by kind.
#
#   bash benches/soak.sh                    # 30 min, release build
#   SECS=300 KILLS_HUB=1 KILLS_EDGE=1 bash benches/soak.sh
#
# Environment:
#   SECS=1800  SEED=1  KILLS_HUB=2  KILLS_EDGE=2  VIEWERS=50  CONSULTATIONS=2
#   SLICES=20 (instances per pushed study)  STUDY_EVERY=45 (s per clinic)
#   BUILD=1    cargo build --release first (0: use BIN as is)
#   BIN=target/release/medrelay
#   WORK=<temp dir>  logs, per-clinic acked lists, signed lists, result.json
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tests/support/setup.sh
BIN="${BIN:-target/release/medrelay}"
if [ "${BUILD:-1}" = 1 ]; then cargo build --release --locked; fi
WORK="${WORK:-$(mktemp -d /tmp/medrelay-soak-XXXXXX)}"
echo "soak: work dir $WORK"
exec .cache/venv/bin/python benches/soak.py --bin "$BIN" --work "$WORK" \
    --secs "${SECS:-1800}" --seed "${SEED:-1}" \
    --kills-hub "${KILLS_HUB:-2}" --kills-edge "${KILLS_EDGE:-2}" \
    --viewers "${VIEWERS:-50}" --consultations "${CONSULTATIONS:-2}" \
    --slices "${SLICES:-20}" --study-every "${STUDY_EVERY:-45}" \
    --json "$WORK/result.json"
