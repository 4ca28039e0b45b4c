#!/usr/bin/env bash
# End-to-end ingest benchmark (issue: DICOM ingest). Side by side, same run,
# same machine, same 300 x 512^2 CT series (~158 MB), TCP_NODELAY=1 on DCMTK:
#
#   anchor : DCMTK storescu -> DCMTK storescp            (no fsync)
#   null   : DCMTK storescu -> DCMTK storescp --ignore   (receives, stores
#            nothing: what the sender alone can do, the ceiling of any
#            single-association receiver)
#   A      : DCMTK storescu -> medrelay                   (data and index
#            durable before each ack: two syncs, see archive::staging)
#   B      : medrelay store --parallel 4 -> medrelay
#   floor  : the durability floor of this disk (benches/fsync_floor.py):
#            write + fdatasync + rename + directory fsync of each instance,
#            and the data-only part (write + fdatasync)
#
# Prints instances/s for each (median of RUNS runs, fresh destination each
# run), the ratios A/anchor and B/anchor, the C-STORE-RSP latency distribution
# seen by the sender, and medrelay's peak RSS while receiving one 1 GiB
# instance.
#
#   bash benches/ingest.sh            # RUNS=5 by default
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
RUNS="${RUNS:-5}"
bash tests/support/setup.sh >/dev/null
cargo build --release --quiet
BIN="$REPO/target/release/medrelay"
CT="$REPO/.cache/ct300"
WORK="$(mktemp -d /tmp/medrelay-bench.XXXXXX)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
export TCP_NODELAY=1
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened" >&2; return 1
}

start_medrelay() { # $1 dir -> sets MR_PID MR_PORT
    MR_PORT=$(free_port); local http; http=$(free_port)
    MEDRELAY_METRICS_LISTEN="127.0.0.1:$(free_port)" "$BIN" serve --data-dir "$1/data" --cert-dir "$WORK/certs" --dicom-listen "127.0.0.1:$MR_PORT" \
        --http-listen "127.0.0.1:$http" --min-free-bytes 0 >"$1/log" 2>&1 &
    MR_PID=$!
    wait_port "$MR_PORT"
}

rate() { # seconds -> instances/s
    awk -v s="$1" 'BEGIN { printf "%.1f", 300 / s }'
}

cat "$CT"/* >/dev/null   # warm the page cache: every contender reads the same cached files
declare -a ANCHOR NULL A B FLOORS
for run in $(seq 1 "$RUNS"); do
    # null receiver: storescu -> storescp --ignore
    d="$WORK/null$run"; mkdir -p "$d/out"
    port=$(free_port)
    storescp --ignore -aet DCMTK_SCP -od "$d/out" "$port" >"$d/log" 2>&1 & scp=$!
    wait_port "$port"
    t0=$(now); storescu -aec DCMTK_SCP 127.0.0.1 "$port" +sd "$CT" >/dev/null; t1=$(now)
    kill "$scp"; wait "$scp" 2>/dev/null || true
    NULL+=("$(rate "$(echo "$t1 - $t0" | bc -l)")")
    rm -rf "$d"

    # anchor: storescu -> storescp
    d="$WORK/scp$run"; mkdir -p "$d/out"
    port=$(free_port)
    storescp -aet DCMTK_SCP -od "$d/out" "$port" >"$d/log" 2>&1 & scp=$!
    wait_port "$port"
    t0=$(now); storescu -aec DCMTK_SCP 127.0.0.1 "$port" +sd "$CT" >/dev/null; t1=$(now)
    kill "$scp"; wait "$scp" 2>/dev/null || true
    n=$(ls "$d/out" | wc -l); [ "$n" = 300 ] || { echo "storescp stored $n" >&2; exit 1; }
    ANCHOR+=("$(rate "$(echo "$t1 - $t0" | bc -l)")")
    rm -rf "$d"

    # A: storescu -> medrelay (one association)
    d="$WORK/mrA$run"; mkdir -p "$d"
    start_medrelay "$d"
    t0=$(now); storescu -aec MEDRELAY 127.0.0.1 "$MR_PORT" +sd "$CT" >/dev/null; t1=$(now)
    kill "$MR_PID"; wait "$MR_PID" 2>/dev/null || true
    A+=("$(rate "$(echo "$t1 - $t0" | bc -l)")")
    rm -rf "$d"

    # B: medrelay store --parallel 4 -> medrelay
    d="$WORK/mrB$run"; mkdir -p "$d"
    start_medrelay "$d"
    t0=$(now); "$BIN" store --quiet --parallel 4 --to "MEDRELAY@127.0.0.1:$MR_PORT" "$CT" >"$d/store.out"; t1=$(now)
    LAT_LINE=$(cat "$d/store.out")
    kill "$MR_PID"; wait "$MR_PID" 2>/dev/null || true
    B+=("$(rate "$(echo "$t1 - $t0" | bc -l)")")
    rm -rf "$d"

    # the floor, inside the same run so it sees the same disk weather
    FLOORS+=("$(python3 benches/fsync_floor.py "$WORK/floor" 300 | awk '{print $2, $4}')")
    rm -rf "$WORK/floor"
done

# latency distribution, one association, sender side (medrelay store --parallel 1)
d="$WORK/lat"; mkdir -p "$d"
start_medrelay "$d"
LAT1=$("$BIN" store --quiet --parallel 1 --to "MEDRELAY@127.0.0.1:$MR_PORT" "$CT")
kill "$MR_PID"; wait "$MR_PID" 2>/dev/null || true
rm -rf "$d"

# peak RSS receiving one 1 GiB instance
d="$WORK/big"; mkdir -p "$d"
"$REPO/.cache/venv/bin/python" fixtures/gen_ct.py --size-mb 1024 --out "$d/big.dcm" >/dev/null
start_medrelay "$d"
t0=$(now); storescu -aec MEDRELAY 127.0.0.1 "$MR_PORT" "$d/big.dcm" >/dev/null; t1=$(now)
HWM=$(awk '/VmHWM/ {print $2}' "/proc/$MR_PID/status")
kill "$MR_PID"; wait "$MR_PID" 2>/dev/null || true

FLOOR=$(printf '%s\n' "${FLOORS[@]}" | awk '{print $1}' | median)
DATA_FLOOR=$(printf '%s\n' "${FLOORS[@]}" | awk '{print $2}' | median)

an=$(printf '%s\n' "${ANCHOR[@]}" | median)
nm=$(printf '%s\n' "${NULL[@]}" | median)
am=$(printf '%s\n' "${A[@]}" | median)
bm=$(printf '%s\n' "${B[@]}" | median)
echo "runs: $RUNS (instances/s per run) anchor=[${ANCHOR[*]}] null=[${NULL[*]}] A=[${A[*]}] B=[${B[*]}]"
echo "floor per run (ms per instance: full data): ${FLOORS[*]}"
printf 'anchor storescu->storescp          %8.1f instances/s\n' "$an"
printf 'A      storescu->medrelay (fsync)  %8.1f instances/s   ratio A/anchor = %.2f  (goal >= 0.8)\n' "$am" "$(echo "$am / $an" | bc -l)"
printf 'B      medrelay store -P4->medrelay %7.1f instances/s   ratio B/anchor = %.2f  (goal >= 2)\n' "$bm" "$(echo "$bm / $an" | bc -l)"
echo "sender-side C-STORE latency, 1 association: $LAT1"
echo "sender-side C-STORE latency, 4 associations (last run): $LAT_LINE"
printf 'null   storescu->storescp --ignore %7.1f instances/s   (the sender alone)\n' "$nm"
printf 'durability floor: %.3f ms per instance = %.1f instances/s (write+fdatasync+rename+dir fsync); data only %.3f ms\n' \
    "$FLOOR" "$(echo "1000 / $FLOOR" | bc -l)" "$DATA_FLOOR"
printf 'A / floor = %.2f (issue 18 goal >= 0.9)   A / null receiver = %.2f\n' \
    "$(echo "$am / (1000 / $FLOOR)" | bc -l)" "$(echo "$am / $nm" | bc -l)"
printf 'best possible with this sender: 1 / (null time + data floor) = %.1f instances/s = %.2f x floor\n' \
    "$(echo "1000 / (1000 / $nm + $DATA_FLOOR)" | bc -l)" "$(echo "(1000 / (1000 / $nm + $DATA_FLOOR)) / (1000 / $FLOOR)" | bc -l)"
printf '1 GiB instance: received in %.1f s, medrelay peak RSS %d MB (goal <= 64 MB)\n' "$(echo "$t1 - $t0" | bc -l)" "$((HWM / 1024))"
