#!/usr/bin/env bash
# One 1 GiB multi-frame instance through S3-compatible storage (issue:
# storage backends; goals: gateway peak RSS <= 64 MB, a frame rendered
# without downloading the object).
#
# One release gateway on its embedded SQLite index with its instances on
# Garage (benches/support/garage.sh: a single durable node; s3s-fs from
# tests/support/setup.sh when Garage is not built, GARAGE=0 forces it, and
# the output says which). In one run:
#
#   1. storescu (TCP_NODELAY=1) sends a 1024-frame 1024x1024 8-bit
#      Secondary Capture (fixtures/gen_ct.py --size-mb 1024): time to the
#      C-STORE-RSP, and the gateway's peak RSS (VmHWM) after it.
#   2. Time from the C-STORE-RSP until the API serves the instance's first
#      rendered frame, then an uncached frame in the middle and one near the
#      end (each a ranged read of one frame), and the gateway's peak RSS
#      after all of that (previews included).
#   3. The anchor, same run, same store: downloading the whole object with
#      curl (SigV4), the least a gateway without ranged reads would pay
#      before it could render anything.
#
#   bash benches/s3_multiframe.sh            SIZE_MB=1024 by default
#
# Prints the figures and the ratios frame/anchor. A benchmark, not a test:
# nothing asserts on time; a failed store or render stops it loudly.
set -euo pipefail
SIZE_MB="${SIZE_MB:-1024}"
GARAGE="${GARAGE:-1}"
# shellcheck source=support/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/support/common.sh" s3_multiframe.sh
bench_build
WORK="$(mktemp -d /tmp/medrelay-s3mf.XXXXXX)"
MR_PID="" S3_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$MR_PID" ] && { kill "$MR_PID" 2>/dev/null || true; wait "$MR_PID" 2>/dev/null || true; }
    [ -n "$S3_PID" ] && { kill "$S3_PID" 2>/dev/null || true; wait "$S3_PID" 2>/dev/null || true; }
    bash benches/support/garage.sh stop "$WORK/garage" 2>/dev/null || true
    [ "$rc" != 0 ] && show_logs "$WORK"/medrelay.log "$WORK"/garage/garage.log "$WORK"/s3s.log
    rm -rf "$WORK"
    exit "$rc"
}
bench_traps cleanup
export TCP_NODELAY=1

# ---- the object store
BUCKET=medrelay
if [ "$GARAGE" = 1 ] && [ -x "$REPO/.cache/garage/bin/garage" ]; then
    STORE="Garage 2.5 (one node, data and metadata fsync on)"
    BUCKET="$BUCKET" bash benches/support/garage.sh start "$WORK/garage"
    # shellcheck disable=SC1091
    . "$WORK/garage/env"
    ENDPOINT="$GARAGE_ENDPOINT"
else
    STORE="s3s-fs 0.14.1 (Garage not built: bash benches/support/garage.sh build)"
    port=$(free_port)
    mkdir -p "$WORK/s3/$BUCKET"
    AWS_ACCESS_KEY_ID="bench$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    AWS_SECRET_ACCESS_KEY="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    AWS_REGION=us-east-1
    export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION
    "$REPO/.cache/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
        --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/s3" >"$WORK/s3s.log" 2>&1 &
    S3_PID=$!
    ENDPOINT="http://127.0.0.1:$port"
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    export MEDRELAY_STORAGE_URL="s3://$BUCKET/instances?endpoint=$ENDPOINT&region=$AWS_REGION"
fi
log "object store: $STORE at $ENDPOINT"

# ---- the instance
log "writing a $SIZE_MB MiB multi-frame instance"
"$PY" fixtures/gen_ct.py --size-mb "$SIZE_MB" --out "$WORK/big.dcm" >/dev/null
SOP=$("$PY" -c 'import pydicom,sys; print(pydicom.dcmread(sys.argv[1], stop_before_pixels=True).SOPInstanceUID)' "$WORK/big.dcm")
FRAMES=$("$PY" -c 'import pydicom,sys; print(int(pydicom.dcmread(sys.argv[1], stop_before_pixels=True).NumberOfFrames))' "$WORK/big.dcm")
cat "$WORK/big.dcm" >/dev/null   # the sender reads from the page cache

# ---- the gateway
CFG="$WORK/medrelay.toml"
cat >"$CFG" <<EOF
[[clinic]]
id = "t01"
name = "Township 01"
ae_titles = ["T01_SC"]

[[hospital]]
id = "city"
name = "City Hospital"
serves = ["t01"]
EOF
PW="bench-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$PW" | "$BIN" user add reader --role expert --hospital city --name "Bench Reader" \
    --password-stdin --config "$CFG" --data-dir "$WORK/data" >/dev/null
HTTP=$(free_port); DICOM=$(free_port); UDP=$(free_port); METRICS=$(free_port)
"$BIN" serve --config "$CFG" --data-dir "$WORK/data" --cert-dir "$WORK/certs" --http-listen "127.0.0.1:$HTTP" \
    --dicom-listen "127.0.0.1:$DICOM" --sfu-udp-listen "127.0.0.1:$UDP" --metrics-listen "127.0.0.1:$METRICS" --min-free-bytes 0 >"$WORK/medrelay.log" 2>&1 &
MR_PID=$!
for _ in $(seq 600); do
    grep -q "medrelay ready" "$WORK/medrelay.log" && break
    kill -0 "$MR_PID" 2>/dev/null || die "medrelay exited"
    sleep 0.1
done
grep -q "medrelay ready" "$WORK/medrelay.log" || die "medrelay not ready"
BASE="https://127.0.0.1:$HTTP"
hwm() { awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$MR_PID/status"; }
RSS_IDLE=$(hwm)
# Log in first: one password check is argon2 with 19 MiB of memory (the
# OWASP setting), a cost of every login, not of the image. The password
# thread gives it back after 10 s idle (accounts::SCRATCH_IDLE); then the
# peak is reset (clear_refs 5) so what follows measures the instance's path.
JAR="$WORK/cookies"
curl -skf -c "$JAR" -H 'content-type: application/json' \
    -d "{\"username\":\"reader\",\"password\":\"$PW\"}" "$BASE/api/login" >/dev/null || die "login failed"
RSS_LOGIN=$(hwm)
sleep 11
echo 5 >"/proc/$MR_PID/clear_refs"
RSS_RESET=$(hwm)

# ---- 1. store
t0=$(now)
storescu -aet T01_SC -aec MEDRELAY 127.0.0.1 "$DICOM" "$WORK/big.dcm" >"$WORK/storescu.log" 2>&1 \
    || die "storescu failed: $(tail -5 "$WORK/storescu.log")"
t1=$(now)
RSS_STORE=$(hwm)

# ---- 2. frames through the API
frame_after() { # $1 frame -> seconds from the C-STORE-RSP ($t1) until a 200 with an image, or dies after 120 s
    local code
    for _ in $(seq 1200); do
        code=$(curl -sk -b "$JAR" -o "$WORK/frame.img" -w '%{http_code}' \
            "$BASE/api/instances/$SOP/rendered?frame=$1&size=512&format=jpeg") || code=000
        if [ "$code" = 200 ]; then
            [ "$(head -c 2 "$WORK/frame.img" | od -An -tx1 | tr -d ' ')" = ffd8 ] || die "frame $1: not a JPEG"
            echo "$(now) - $t1" | bc -l
            return 0
        fi
        sleep 0.1
    done
    die "frame $1 not served within 120 s (last status $code)"
}
time_frame() { # $1 frame -> seconds for one request
    local a b
    a=$(now)
    curl -skf -b "$JAR" -o "$WORK/frame.img" "$BASE/api/instances/$SOP/rendered?frame=$1&size=512&format=jpeg" \
        || die "frame $1 failed"
    b=$(now)
    echo "$b - $a" | bc -l
}
FIRST=$(frame_after 0)
RSS_FIRST=$(hwm)
MID=$((FRAMES / 2 + 1))
LATE=$((FRAMES - 3))
T_MID=$(time_frame "$MID")
T_LATE=$(time_frame "$LATE")
RSS_FRAMES=$(hwm)
# the previews of the stored instance (thumbnail, first, middle, cine strip)
for _ in $(seq 600); do
    ready=$(curl -skf -b "$JAR" "$BASE/api/studies" \
        | "$PY" -c 'import json,sys; s=json.load(sys.stdin)["studies"]; print(s[0]["previews_ready"] if s else 0)') || ready=0
    [ "$ready" -ge 1 ] && break
    sleep 0.1
done
[ "$ready" -ge 1 ] || die "previews not rendered within 60 s"
RSS_ALL=$(hwm)

# ---- 3. the anchor: the whole object over the same S3 API
S3GET=("$PY" benches/support/s3get.py)
KEY=$("${S3GET[@]}" largest "$ENDPOINT" "$BUCKET" instances/) || die "could not list the bucket"
read -r DL_BYTES T_DL < <("${S3GET[@]}" get "$ENDPOINT" "$BUCKET" "$KEY") || die "download failed"
DL_MB=$((DL_BYTES / 1048576))

echo "object store: $STORE; instance: $SIZE_MB MiB, $FRAMES frames of 1024x1024; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf 'stored (C-STORE-RSP) after %.1f s = %.0f MB/s\n' "$(echo "$t1 - $t0" | bc -l)" \
    "$(echo "$SIZE_MB / ($t1 - $t0)" | bc -l)"
printf 'first rendered frame %.2f s after the C-STORE-RSP\n' "$FIRST"
printf 'uncached frame %d: %.3f s; frame %d: %.3f s\n' "$MID" "$T_MID" "$LATE" "$T_LATE"
printf 'anchor: the whole object (%s MB) over S3 in %.2f s\n' "$DL_MB" "$T_DL"
printf 'ratios: first frame / anchor = %.2f; uncached frame / anchor = %.3f\n' \
    "$(echo "$FIRST / $T_DL" | bc -l)" "$(echo "$T_MID / $T_DL" | bc -l)"
printf 'gateway peak RSS (VmHWM): idle %d MB, after a login %d MB, 11 s later (reset) %d MB; after the store %d MB, after the first frame %d MB, after 3 frames %d MB, after previews %d MB (goal <= 64 MB)\n' \
    "$RSS_IDLE" "$RSS_LOGIN" "$RSS_RESET" "$RSS_STORE" "$RSS_FIRST" "$RSS_FRAMES" "$RSS_ALL"
