#!/usr/bin/env bash
# End-to-end WAN benchmark: direct DICOM over the WAN vs the edge relay link.
# Run as root (network namespaces, TUN). Side by side, in one run, on the same
# emulated link (tests/support/linkemu.py: per-packet loss, delay and rate
# cap for TCP and UDP alike) and the same 300 x 512^2 CT series (~158 MB):
#
#   direct : DCMTK storescu (clinic namespace) --C-STORE over the WAN--> medrelay hub
#   relay  : DCMTK storescu --LAN (loopback)--> medrelay edge (clinic namespace)
#            --QUIC relay link over the WAN--> medrelay hub (hub namespace)
#
# Links:  a = 200 ms RTT, 1 % loss, 50 Mbit/s     b = 600 ms RTT, 2 % loss, 10 Mbit/s
#
# Per link and method it reports: time to complete (storescu start -> study
# fully committed at the hub; the direct path includes the hub's 2 s
# stable_after, the relay path the edge's), when the last instance arrived,
# time to the first preview at the hub, the WAN time and goodput (study bytes
# / WAN time, also as a fraction of the link rate), and for the relay how long
# after the study completed at the edge the first preview was at the hub
# (goal <= 3 RTT + 1 s). A summary table and relay-vs-direct ratios close the
# run. Logs and per-run JSON stay in a temp dir (printed).
#
#   sudo bash benches/relay.sh                       # both links, both methods, N=300
#   LINKS=a METHODS=direct bash benches/relay.sh
#   N=60 LINKS="a b" bash benches/relay.sh           # a shorter series
#
# Environment:
#   LINKS="a b"  METHODS="direct relay"  N=300
#   TCP_CC=cubic   congestion control of TCP inside the namespaces (storescu's
#                  direct flow). This VM's host default is bbr, which no
#                  modality or PACS runs; cubic is what Windows and Linux
#                  DICOM senders use. TCP_CC=host keeps the host's default.
#   SEED=1         loss pattern seed of the emulator
#   TIMEOUT=7200   seconds per run before giving up (cubic at 600 ms RTT and
#                  2 % loss: the 300-instance direct run takes ~73 min)
#   BUILD=1        cargo build --release first (BUILD=0: use target/release as is)
#   KEEP_DATA=0    keep the hub/edge data dirs (large) after each run
#   PREFIX=mrb     namespace prefix (<prefix>-clinic, <prefix>-hub)
#
# Measured (2-core VM; release build at c817a42; the CT series compresses
# 2.5x with shuffle + zstd-3). Run 1, TCP_CC=host (bbr), both links:
#   link a  direct 180.8 s, first preview 1.7 s, 14 % of the link
#           relay   17.2 s (10.5x), first preview 0.50 s after the study was
#                   complete at the edge, wire 80.7 % of the link (a lower
#                   bound: the stats were read before the emulator's last
#                   once-a-second rewrite; fixed since)
#   link b  direct 592.7 s, first preview 5.8 s, 21 % of the link
#           relay   76.0 s (7.8x), preview 1.02 s after edge-complete, wire 83.8 %
# Runs 2 and 3, TCP_CC=cubic, one per link, alongside run 1's direct phases:
#   link a  direct 1724.3 s, relay 21.6 s (79.7x), wire 66 %
#   link b  direct 4448.8 s, relay 77.4 s (57.5x), wire 82 %
#   Run times: run 1 ~16 min; cubic: link a ~30 min, link b ~75 min.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
LINKS="${LINKS:-a b}"
METHODS="${METHODS:-direct relay}"
N="${N:-300}"
TCP_CC="${TCP_CC:-cubic}"
SEED="${SEED:-1}"
TIMEOUT="${TIMEOUT:-7200}"
BUILD="${BUILD:-1}"
KEEP_DATA="${KEEP_DATA:-0}"
PREFIX="${PREFIX:-mrb}"
CLINIC_NS="$PREFIX-clinic"
HUB_NS="$PREFIX-hub"
HUB_IP=10.201.0.2
LINKEMU="$REPO/tests/support/linkemu.py"
MEASURE="$REPO/benches/relay_measure.py"
STABLE=2

[ "$(id -u)" = 0 ] || { echo "relay.sh: run as root (network namespaces, TUN)" >&2; exit 1; }
command -v storescu >/dev/null || { echo "relay.sh: storescu missing (bash tests/support/setup.sh)" >&2; exit 1; }

WORK="$(mktemp -d /tmp/medrelay-relaybench.XXXXXX)"
echo "relay.sh: logs and results in $WORK"
EMU_PID=""
MEASURE_PID=""
declare -a SERVER_PIDS=()

stop_pid() { # pid [grace seconds]
    local pid="$1" grace="${2:-10}"
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((grace * 10))); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
stop_servers() {
    local p
    for p in "${SERVER_PIDS[@]}"; do stop_pid "$p" 10; done
    SERVER_PIDS=()
}
link_down() {
    if [ -n "$EMU_PID" ]; then stop_pid "$EMU_PID" 10; EMU_PID=""; fi
}
cleanup() {
    if [ -n "$MEASURE_PID" ]; then stop_pid "$MEASURE_PID" 5; fi   # it stops storescu
    stop_servers
    link_down
    python3 "$LINKEMU" down --prefix "$PREFIX" 2>/dev/null || true
    # keep the logs and results, not the binary copy and generated series
    rm -rf "$WORK/medrelay" "$WORK/ct$N"
    [ "$KEEP_DATA" = 1 ] || rm -rf "$WORK"/link-*/*/hub-data "$WORK"/link-*/*/edge-data
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ binary
if [ "$BUILD" = 1 ]; then cargo build --release --quiet; fi
[ -x target/release/medrelay ] || { echo "relay.sh: target/release/medrelay missing (cargo build --release)" >&2; exit 1; }
# a private copy: a rebuild during the run must not change the contenders
BIN="$WORK/medrelay"
cp target/release/medrelay "$BIN"
HAVE_RELAY=1
if ! "$BIN" relay --help >/dev/null 2>&1; then
    HAVE_RELAY=0
    case " $METHODS " in *" relay "*)
        echo "relay.sh: SKIPPING the relay method: '$BIN relay --help' fails (this build has no relay link)" >&2;;
    esac
fi

# ------------------------------------------------------------------ study
find_python_with_pydicom() {
    local py
    for py in python3 "$REPO/.cache/venv/bin/python"; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import pydicom, numpy' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    return 1
}
if [ "$N" = 300 ] && [ -d "$REPO/.cache/ct300" ] && [ "$(ls "$REPO/.cache/ct300" | wc -l)" = 300 ]; then
    CT="$REPO/.cache/ct300"
else
    PY="$(find_python_with_pydicom)" || { bash tests/support/setup.sh >/dev/null; PY="$(find_python_with_pydicom)"; }
    CT="$WORK/ct$N"
    "$PY" fixtures/gen_ct.py --n "$N" --out "$CT" >/dev/null
fi
[ "$(ls "$CT" | wc -l)" = "$N" ] || { echo "relay.sh: $CT does not hold $N files" >&2; exit 1; }
STUDY_BYTES=$(du -cb "$CT"/* | tail -1 | cut -f1)
cat "$CT"/* >/dev/null   # page cache: every contender reads the same cached files
echo "relay.sh: study $CT: $N instances, $STUDY_BYTES bytes; TCP congestion control in the namespaces: $TCP_CC"

# ------------------------------------------------------------------ helpers
measure() { # args of relay_measure.py run; in the background so that a
            # SIGTERM/SIGINT to this script is acted on at once
    python3 "$MEASURE" run "$@" &
    MEASURE_PID=$!
    wait "$MEASURE_PID" || true
    MEASURE_PID=""
}

link_params() { # a|b -> RTT LOSS RATE
    case "$1" in
        a) RTT=200; LOSS=0.01; RATE=50;;
        b) RTT=600; LOSS=0.02; RATE=10;;
        *) echo "relay.sh: unknown link '$1' (a or b)" >&2; exit 1;;
    esac
}

link_up() { # link dir
    local cc_arg=()
    [ "$TCP_CC" = host ] || cc_arg=(--tcp-cc "$TCP_CC")
    python3 "$LINKEMU" up --prefix "$PREFIX" --rtt-ms "$RTT" --loss "$LOSS" --rate-mbit "$RATE" \
        --seed "$SEED" --stats-file "$2/linkemu.json" "${cc_arg[@]}" >"$2/linkemu.out" 2>"$2/linkemu.err" &
    EMU_PID=$!
    for _ in $(seq 1 100); do
        grep -q READY "$2/linkemu.out" 2>/dev/null && return 0
        kill -0 "$EMU_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "relay.sh: link emulator did not start:" >&2; cat "$2/linkemu.err" >&2; exit 1
}

wait_port() { # ns ip port [pid]
    for _ in $(seq 1 300); do
        ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0
        if [ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "relay.sh: $2:$3 never opened in $1" >&2; return 1
}

write_hub_config() { # dir with_relay
    cat >"$1/hub.toml" <<EOF
data_dir = "$1/hub-data"
cert_dir = "$1/hub-certs"
shutdown_grace_secs = 5
log = "${LOG:-info}"
[http]
listen = "127.0.0.1:8443"
[dicom]
ae_title = "MEDRELAY"
listen = "$HUB_IP:11112"
check_called_ae = true
min_free_bytes = 0
[stability]
stable_after_secs = $STABLE
[sfu]
udp_listen = "127.0.0.1:7882"
[[clinic]]
id = "clinicA"
name = "Clinic A"
ae_titles = ["STORESCU"]
EOF
    if [ "$2" = 1 ]; then
        cat >>"$1/hub.toml" <<EOF
[relay]
listen = "$HUB_IP:4433"
name = "medrelay-hub"
EOF
    fi
}

write_edge_config() { # dir
    cat >"$1/edge.toml" <<EOF
role = "edge"
data_dir = "$1/edge-data"
cert_dir = "$1/edge-certs"
shutdown_grace_secs = 5
log = "${LOG:-info}"
[http]
listen = "127.0.0.1:8444"
[dicom]
ae_title = "EDGE"
listen = "127.0.0.1:11113"
check_called_ae = true
min_free_bytes = 0
[stability]
stable_after_secs = $STABLE
[sfu]
udp_listen = "127.0.0.1:7883"
[[clinic]]
id = "clinicA"
name = "Clinic A"
ae_titles = ["STORESCU"]
[edge]
hub = "$HUB_IP:4433"
hub_name = "medrelay-hub"
cert = "$1/edge-id/edge-cert.pem"
key = "$1/edge-id/edge-key.pem"
hub_ca = "$1/edge-id/hub-ca.pem"
EOF
}

start_hub() { # dir
    ip netns exec "$HUB_NS" "$BIN" serve -c "$1/hub.toml" >"$1/hub.log" 2>&1 &
    SERVER_PIDS+=("$!")
    wait_port "$HUB_NS" "$HUB_IP" 11112 "$!" || { tail -20 "$1/hub.log" >&2; return 1; }
}

start_edge() { # dir
    ip netns exec "$CLINIC_NS" "$BIN" serve -c "$1/edge.toml" >"$1/edge.log" 2>&1 &
    SERVER_PIDS+=("$!")
    wait_port "$CLINIC_NS" 127.0.0.1 11113 "$!" || { tail -20 "$1/edge.log" >&2; return 1; }
}

declare -a RESULTS=()

run_direct() { # link dir
    local d="$2"
    write_hub_config "$d" 0
    start_hub "$d" || { stop_servers; return 0; }
    echo "relay.sh: [$1/direct] storescu -> hub over the WAN ..."
    measure --method direct --n "$N" --study-bytes "$STUDY_BYTES" \
        --hub-db "$d/hub-data/index.db" --link "$1" --rtt-ms "$RTT" --rate-mbit "$RATE" --loss "$LOSS" \
        --linkemu-stats "$LINK_DIR/linkemu.json" --linkemu-pid "$EMU_PID" --timeout "$TIMEOUT" --log "$d/storescu.log" --out "$d/result.json" -- \
        ip netns exec "$CLINIC_NS" env TCP_NODELAY=1 storescu -aet STORESCU -aec MEDRELAY "$HUB_IP" 11112 +sd "$CT"
    RESULTS+=("$d/result.json")
    stop_servers
}

run_relay() { # link dir
    local d="$2"
    write_hub_config "$d" 1
    mkdir -p "$d/edge-id"
    if ! "$BIN" relay issue-edge -c "$d/hub.toml" --name clinic-edge --clinic clinicA --out "$d/edge-id" >"$d/issue-edge.log" 2>&1; then
        echo "relay.sh: [$1/relay] issue-edge failed:" >&2; cat "$d/issue-edge.log" >&2; return 0
    fi
    write_edge_config "$d"
    start_hub "$d" || return 0
    start_edge "$d" || { stop_servers; return 0; }
    echo "relay.sh: [$1/relay] storescu -> edge (LAN) -> relay link -> hub ..."
    measure --method relay --n "$N" --study-bytes "$STUDY_BYTES" \
        --hub-db "$d/hub-data/index.db" --edge-db "$d/edge-data/index.db" \
        --link "$1" --rtt-ms "$RTT" --rate-mbit "$RATE" --loss "$LOSS" \
        --linkemu-stats "$LINK_DIR/linkemu.json" --linkemu-pid "$EMU_PID" --timeout "$TIMEOUT" --log "$d/storescu.log" --out "$d/result.json" -- \
        ip netns exec "$CLINIC_NS" env TCP_NODELAY=1 storescu -aet STORESCU -aec EDGE 127.0.0.1 11113 +sd "$CT"
    RESULTS+=("$d/result.json")
    stop_servers
}

# ------------------------------------------------------------------ runs
for link in $LINKS; do
    link_params "$link"
    LINK_DIR="$WORK/link-$link"
    mkdir -p "$LINK_DIR"
    echo "relay.sh: link $link: RTT $RTT ms, loss $LOSS, $RATE Mbit/s (seed $SEED)"
    link_up "$link" "$LINK_DIR"
    for method in $METHODS; do
        if ! kill -0 "$EMU_PID" 2>/dev/null; then
            echo "relay.sh: the link emulator is gone; its log:" >&2; cat "$LINK_DIR/linkemu.err" >&2; break
        fi
        d="$LINK_DIR/$method"
        mkdir -p "$d"
        case "$method" in
            direct) run_direct "$link" "$d";;
            relay)
                if [ "$HAVE_RELAY" = 1 ]; then run_relay "$link" "$d"
                else echo "relay.sh: [$link/relay] skipped (no 'medrelay relay' in this build)"; fi;;
            *) echo "relay.sh: unknown method '$method' (direct or relay)" >&2; exit 1;;
        esac
        [ "$KEEP_DATA" = 1 ] || rm -rf "$d/hub-data" "$d/edge-data"
    done
    link_down
done

echo
echo "== summary (N=$N, $STUDY_BYTES bytes, TCP $TCP_CC; logs: $WORK)"
if [ "${#RESULTS[@]}" -gt 0 ]; then
    python3 "$MEASURE" summary "${RESULTS[@]}"
else
    echo "no runs"
fi
