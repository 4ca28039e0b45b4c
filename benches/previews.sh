#!/usr/bin/env bash
# End-to-end previews benchmark (issue: previews). One run, same machine, same
# 300 x 512^2 16-bit CT series (.cache/ct300, from tests/support/setup.sh):
#
#   1. previews/s, medrelay vs Orthanc (goal: medrelay >= 2x Orthanc)
#        Orthanc  : Debian package, plain process in a network namespace (it
#                   listens on 0.0.0.0), plain HTTP over a veth pair,
#                   GET /instances/{id}/preview, Accept: image/jpeg
#        medrelay : release build, HTTPS on loopback (self-signed, not verified),
#                   GET /api/instances/{sop}/rendered?format=jpeg (full size, on
#                   demand, no server-side cache), background rendering off
#      keep-alive connections, 1 and CONNS (default 2 = cores) of them; a
#      warm-up pass over all 300 instances, then PASSES (default 2) timed
#      round-robin passes; every response must be 200 + JPEG (FF D8).
#   2. C-STORE-RSP -> thumbnail available, 300-slice CT pushed with DCMTK
#      storescu to a fresh medrelay with rendering on (goal p95 <= 1 s):
#      preview_ms - received_ms per instance from data/index.db.
#   3. C-STORE acknowledgement latency seen by `medrelay store --parallel 1`,
#      rendering off vs on, LAT_RUNS (default 3) runs each, alternating, fresh
#      server each run (goal: a burst does not delay acknowledgements).
#
#   bash benches/previews.sh          # needs root (apt-get install orthanc, ip netns)
#
# Knobs: CONNS, PASSES, LAT_RUNS, NET_PREFIX (default 10.213.0; the veth pair
# is NET_PREFIX.1 <-> NET_PREFIX.2). Noise (builds/tests running beside skew
# the numbers): before each measurement wait up to QUIET_WAIT s (default 30)
# until the machine's CPU use is below QUIET_PCT % (default 15), spending at
# most QUIET_BUDGET s (default 150) on such waits in all; a part-1 measurement
# with more than QUIET_PCT % of other load is taken once more and the quieter
# of the two kept. Every figure is printed with the other load it suffered.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
CONNS="${CONNS:-2}"
PASSES="${PASSES:-2}"
LAT_RUNS="${LAT_RUNS:-3}"
NET_PREFIX="${NET_PREFIX:-10.213.0}"
NS=mrbench-orthanc
VETH_HOST=mrb-host
VETH_NS=mrb-orth
HOST_IP="$NET_PREFIX.1"
ORTH_IP="$NET_PREFIX.2"
ORTH_HTTP=8042
ORTH_DICOM=4242
N=300
QUIET_PCT="${QUIET_PCT:-15}"
QUIET_WAIT="${QUIET_WAIT:-30}"
QUIET_BUDGET="${QUIET_BUDGET:-150}"
# anything the caller exported for medrelay would skew the comparison
unset MEDRELAY_CONFIG MEDRELAY_DATA_DIR MEDRELAY_CERT_DIR MEDRELAY_HTTP_LISTEN MEDRELAY_DICOM_LISTEN \
    MEDRELAY_DICOM_TLS_LISTEN MEDRELAY_AE_TITLE MEDRELAY_STABLE_AFTER_SECS MEDRELAY_MIN_FREE_BYTES
export TCP_NODELAY=1 DEBIAN_FRONTEND=noninteractive

log() { echo "previews.sh: $*" >&2; }
die() { echo "previews.sh: ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (apt-get install orthanc, ip netns)"

# One run at a time: the namespace, veth names and subnet are fixed. The
# servers get `8>&-`, so the lock dies with this script even if it is killed.
exec 8>/tmp/medrelay-previews-bench.lock
flock -n 8 || die "another benches/previews.sh is running"
# What this script started ("WORK dir" line, then one pid a line), so that the
# leftovers of a run killed with SIGKILL are removed by the next run.
STATE=/tmp/medrelay-previews-bench.state

# ---------------------------------------------------------------- dependencies
apt_install() { # packages...; never let the package start a system service
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        guard=1
    fi
    local rc=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" </dev/null >/dev/null; } || rc=$?
    [ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
    return $rc
}
need=()
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} (apt)"
    apt_install "${need[@]}"
fi
command -v Orthanc >/dev/null 2>&1 || die "Orthanc still missing after apt-get install orthanc"
bash tests/support/setup.sh >/dev/null   # dcmtk, venv, .cache/ct300
PY="$REPO/.cache/venv/bin/python"
HELPER="$REPO/benches/previews_load.py"
CT="$REPO/.cache/ct300"
[ "$(find "$CT" -maxdepth 1 -type f | wc -l)" = "$N" ] || die "$CT does not hold $N files"
log "cargo build --release"
cargo build --release --quiet
BIN="$REPO/target/release/medrelay"

# ---------------------------------------------------------------- cleanup
PIDS=()
WORK=""
remove_netns() {
    if ip netns list 2>/dev/null | grep -qw "^$NS"; then
        # only processes this script started in its own namespace (a previous,
        # interrupted run holds the same lock, so nothing else can be in there)
        for p in $(ip netns pids "$NS" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
        for _ in $(seq 1 50); do [ -z "$(ip netns pids "$NS" 2>/dev/null)" ] && break; sleep 0.1; done
        for p in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        ip netns del "$NS" 2>/dev/null || true
    fi
    ip link del "$VETH_HOST" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    remove_netns
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$rc" != 0 ]; then
            for f in "$WORK"/*.log "$WORK"/*/log; do
                [ -f "$f" ] && { echo "---- ${f#"$WORK"/} (last 15 lines)" >&2; tail -n 15 "$f" >&2; }
            done
        fi
        rm -rf "$WORK"
    fi
    rm -f "$STATE"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# leftovers of a killed run: its servers (only pids whose command line names
# that run's own work dir), its work dir, its namespace
if [ -s "$STATE" ]; then
    old_work=$(head -n 1 "$STATE")
    if [[ "$old_work" == /tmp/medrelay-previews.* ]]; then
        for p in $(tail -n +2 "$STATE"); do
            if [[ "$p" =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF "$old_work"; then
                log "stopping pid $p left by an interrupted run"
                kill "$p" 2>/dev/null || true
            fi
        done
        rm -rf "$old_work"
    fi
fi
remove_netns
WORK="$(mktemp -d /tmp/medrelay-previews.XXXXXX)"
echo "$WORK" >"$STATE"

stop() { # pid: SIGTERM, wait, forget
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
free_port() { "$PY" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_tcp() { # host port
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        sleep 0.1
    done
    die "$1:$2 never opened"
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }   # "RESULT a=1 b=2" b -> 2
TCK=$(getconf CLK_TCK)
cpu_snap() { # server pid -> SNAP="wall system_busy_s server_s children_s"; call it without $(...):
    times >"$WORK/times"   # builtin: CPU of every child this shell has waited for
    local wall sys srv kids
    wall=$(date +%s.%N)
    sys=$(awk -v t="$TCK" '/^cpu / {print ($2 + $3 + $4 + $7 + $8 + $9) / t}' /proc/stat)
    srv=$(awk -v t="$TCK" '{sub(/.*\) /, ""); print ($12 + $13) / t}' "/proc/$1/stat")
    kids=$(awk 'END {s = 0; for (i = 1; i <= 2; i++) {split($i, a, /[ms]/); s += a[1] * 60 + a[2]} print s}' "$WORK/times")
    SNAP="$wall $sys $srv $kids"
}
other_load() { # snap0 snap1 -> % of all cores used by anything but the server and our own children
    awk -v a="$1" -v b="$2" -v n="$(nproc)" 'BEGIN { split(a, x, " "); split(b, y, " ")
        o = (y[2] - x[2]) - (y[3] - x[3]) - (y[4] - x[4]); if (o < 0) o = 0
        printf "%.0f", o * 100 / ((y[1] - x[1]) * n) }'
}
QUIET_SPENT=0
quiet() { # wait for a quiet machine, within what is left of QUIET_BUDGET
    local left=$((QUIET_BUDGET - QUIET_SPENT)) t0=$SECONDS
    [ "$left" -gt "$QUIET_WAIT" ] && left=$QUIET_WAIT
    [ "$left" -ge 1 ] || return 0
    "$PY" "$HELPER" wait-quiet "$QUIET_PCT" "$left"
    QUIET_SPENT=$((QUIET_SPENT + SECONDS - t0))
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

start_medrelay() { # dir render(on|off) -> MR_PID MR_DICOM MR_HTTP
    local d="$1"
    mkdir -p "$d"
    MR_DICOM=$(free_port); MR_HTTP=$(free_port)
    local cfg=()
    if [ "$2" = off ]; then
        printf '[render]\nenabled = false\n' >"$d/medrelay.toml"
        cfg=(--config "$d/medrelay.toml")
    fi
    "$BIN" serve "${cfg[@]}" --data-dir "$d/data" --cert-dir "$WORK/certs" \
        --http-listen "127.0.0.1:$MR_HTTP" --dicom-listen "127.0.0.1:$MR_DICOM" --min-free-bytes 0 \
        >"$d/log" 2>&1 8>&- &
    MR_PID=$!
    PIDS+=("$MR_PID")
    echo "$MR_PID" >>"$STATE"
    wait_tcp 127.0.0.1 "$MR_DICOM"
    wait_tcp 127.0.0.1 "$MR_HTTP"
    # Log in as the first admin the gateway generated, for the API clients.
    local pw
    pw=$(cat "$d/data/initial-admin-password")
    MEDRELAY_COOKIE=$(curl -sk -o /dev/null -D - -H 'content-type: application/json' \
        -d "{\"username\":\"admin\",\"password\":\"$pw\"}" "https://127.0.0.1:$MR_HTTP/api/login" |
        sed -n 's/^[Ss]et-[Cc]ookie: \(mr_session=[0-9a-f]*\).*/\1/p')
    [ -n "$MEDRELAY_COOKIE" ] || { echo "login to medrelay failed" >&2; exit 1; }
    export MEDRELAY_COOKIE
}

cat "$CT"/* >/dev/null   # same page-cache state for every contender

# ================================================================ 1. previews/s
log "1/3 Orthanc in netns $NS ($ORTH_IP, veth $VETH_HOST<->$VETH_NS)"
if ip -o -4 addr show | grep -q " $NET_PREFIX\."; then
    die "$NET_PREFIX.0/24 is already in use on this host; set NET_PREFIX"
fi
ip netns add "$NS"
ip link add "$VETH_HOST" type veth peer name "$VETH_NS"
ip link set "$VETH_NS" netns "$NS"
ip addr add "$HOST_IP/24" dev "$VETH_HOST"
ip link set "$VETH_HOST" up
ip -n "$NS" addr add "$ORTH_IP/24" dev "$VETH_NS"
ip -n "$NS" link set "$VETH_NS" up
ip -n "$NS" link set lo up

mkdir -p "$WORK/orthanc/storage"
cat >"$WORK/orthanc/config.json" <<EOF
{
  "Name": "medrelay-bench",
  "StorageDirectory": "$WORK/orthanc/storage",
  "IndexDirectory": "$WORK/orthanc/storage",
  "StorageCompression": false,
  "HttpServerEnabled": true,
  "HttpPort": $ORTH_HTTP,
  "DicomServerEnabled": true,
  "DicomPort": $ORTH_DICOM,
  "RemoteAccessAllowed": true,
  "AuthenticationEnabled": false,
  "KeepAlive": true,
  "HttpCompressionEnabled": false,
  "TcpNoDelay": true,
  "SaveJobs": false,
  "Plugins": []
}
EOF
ip netns exec "$NS" env TCP_NODELAY=1 Orthanc "$WORK/orthanc/config.json" >"$WORK/orthanc.log" 2>&1 8>&- &
ORTH_PID=$!
PIDS+=("$ORTH_PID")
echo "$ORTH_PID" >>"$STATE"
ORTH="http://$ORTH_IP:$ORTH_HTTP"
for i in $(seq 1 300); do
    curl -fsS -o /dev/null "$ORTH/system" 2>/dev/null && break
    kill -0 "$ORTH_PID" 2>/dev/null || die "Orthanc exited (see log above)"
    [ "$i" = 300 ] && die "Orthanc did not answer on $ORTH"
    sleep 0.1
done
ORTH_VERSION=$(curl -fsS "$ORTH/system" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Version"])')
log "Orthanc $ORTH_VERSION up; uploading $N instances (POST /instances)"
"$PY" "$HELPER" orthanc-upload "$ORTH" "$CT" "$WORK/orthanc.ids" >&2

log "medrelay (render off) on 127.0.0.1; medrelay store"
start_medrelay "$WORK/mr1" off
MR1_PID=$MR_PID
"$BIN" store --quiet --to "MEDRELAY@127.0.0.1:$MR_DICOM" "$CT" >"$WORK/mr1/store.out"
grep -q "sent $N of $N files" "$WORK/mr1/store.out" || die "medrelay store: $(cat "$WORK/mr1/store.out")"
MR="https://127.0.0.1:$MR_HTTP"
"$PY" "$HELPER" medrelay-uids "$MR" "$WORK/medrelay.ids" >&2
[ "$(wc -l <"$WORK/medrelay.ids")" = "$N" ] || die "medrelay lists $(wc -l <"$WORK/medrelay.ids") instances, not $N"
[ "$(wc -l <"$WORK/orthanc.ids")" = "$N" ] || die "Orthanc returned $(wc -l <"$WORK/orthanc.ids") IDs, not $N"

measure() { # load args... -> BEST: the RESULT line of the less disturbed of up to 2 attempts
    # (not in $(...): quiet() keeps its budget in this shell)
    local best_o=1000 r o attempt
    BEST=""
    for attempt in 1 2; do
        quiet
        r=$("$PY" "$HELPER" load "$@")
        echo "$r" >&2
        o=$(field "$r" other_cpu_pct); o=${o%%.*}; [[ "$o" =~ ^[0-9]+$ ]] || o=999
        if [ "$o" -lt "$best_o" ]; then BEST=$r; best_o=$o; fi
        [ "$o" -le "$QUIET_PCT" ] && break
        [ "$attempt" -lt 2 ] && log "other load $o% during that run (> $QUIET_PCT%): measuring again"
    done
    return 0
}
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A RES
for c in $(printf '%s\n' 1 "$CONNS" | sort -nu); do
    log "load: $c connection(s), warm-up + $PASSES x $N requests each (Orthanc, then medrelay)"
    measure --name orthanc --base "$ORTH" --path '/instances/{id}/preview' \
        --accept image/jpeg --ids "$WORK/orthanc.ids" --conns "$c" --passes "$PASSES" --server-pid "$ORTH_PID"
    RES[orthanc$c]=$BEST
    measure --name medrelay --base "$MR" --path '/api/instances/{id}/rendered?format=jpeg' \
        --ids "$WORK/medrelay.ids" --conns "$c" --passes "$PASSES" --server-pid "$MR1_PID"
    RES[medrelay$c]=$BEST
done
ORTH_RSS=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$ORTH_PID/status" 2>/dev/null || echo "?")
MR1_RSS=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$MR1_PID/status" 2>/dev/null || echo "?")
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
stop "$MR1_PID"
stop "$ORTH_PID"
ORTH_ERR=$(grep -c -E '^E[0-9]' "$WORK/orthanc.log" || true)
if [ "$ORTH_ERR" != 0 ]; then   # distinct Orthanc errors, for the record
    log "Orthanc errors:"
    grep -E '^E[0-9]' "$WORK/orthanc.log" | sed -E 's/^E[0-9]+ [0-9:.]+ +[^ ]+ +//' | sort | uniq -c | head -20 >&2
fi
remove_netns
rm -rf "$WORK/mr1" "$WORK/orthanc/storage"

# ================================================================ 2. C-STORE-RSP -> thumbnail
log "2/3 storescu -> fresh medrelay (render on), waiting for all previews"
start_medrelay "$WORK/mr2" on
quiet
cpu_snap "$MR_PID"; snap0=$SNAP
t0=$(date +%s.%N)
storescu -aec MEDRELAY 127.0.0.1 "$MR_DICOM" +sd "$CT" >"$WORK/mr2/storescu.out" 2>&1 \
    || die "storescu failed: $(tail -5 "$WORK/mr2/storescu.out")"
t1=$(date +%s.%N)
STORESCU_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
WAIT_LINE=$("$PY" "$HELPER" wait-previews "$WORK/mr2/data/index.db" "$N" 180)
cpu_snap "$MR_PID"; OTHER2=$(other_load "$snap0" "$SNAP")
DELAY=$("$PY" "$HELPER" preview-delay "$WORK/mr2/data/index.db")
echo "$DELAY" >&2
stop "$MR_PID"
rm -rf "$WORK/mr2"

# ================================================================ 3. ack latency, render off vs on
log "3/3 C-STORE latency, medrelay store --parallel 1, render off/on x $LAT_RUNS"
declare -a OFF50 OFF95 ON50 ON95 ON_DONE OTHER3
for run in $(seq 1 "$LAT_RUNS"); do
    for mode in off on; do
        d="$WORK/lat-$mode-$run"
        start_medrelay "$d" "$mode"
        quiet
        cpu_snap "$MR_PID"; snap0=$SNAP
        line=$("$BIN" store --quiet --parallel 1 --to "MEDRELAY@127.0.0.1:$MR_DICOM" "$CT")
        cpu_snap "$MR_PID"; OTHER3+=("$(other_load "$snap0" "$SNAP")")
        grep -q "sent $N of $N files" <<<"$line" || die "medrelay store ($mode): $line"
        p50=$(sed -n 's/.*p50 \([0-9.]*\).*/\1/p' <<<"$line")
        p95=$(sed -n 's/.*p95 \([0-9.]*\).*/\1/p' <<<"$line")
        echo "  run $run render $mode: $line" >&2
        if [ "$mode" = off ]; then
            OFF50+=("$p50"); OFF95+=("$p95")
        else
            ON50+=("$p50"); ON95+=("$p95")
            # how far rendering had got when the last ack arrived
            ON_DONE+=("$("$PY" -c 'import sqlite3,sys; c=sqlite3.connect(f"file:{sys.argv[1]}?mode=ro",uri=True,timeout=30); print(c.execute("SELECT COUNT(*) FROM instances WHERE preview_status != '"'pending'"'").fetchone()[0])' "$d/data/index.db")")
        fi
        stop "$MR_PID"
        rm -rf "$d"
    done
done

# ================================================================ summary
m() { printf '%s\n' "$@" | median; }
off50=$(m "${OFF50[@]}"); off95=$(m "${OFF95[@]}"); on50=$(m "${ON50[@]}"); on95=$(m "${ON95[@]}")
echo
echo "================ previews benchmark ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), medrelay $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty'), Orthanc $ORTH_VERSION)"
echo "series: $N x 512x512 16-bit CT ($CT)"
echo "1. previews/s, warm-up pass then $PASSES x $N requests round-robin, keep-alive, every response checked 200 + JPEG:"
echo "   Orthanc : GET /instances/{id}/preview (Accept: image/jpeg), plain HTTP, separate netns via veth ($ORTH_IP)"
echo "   medrelay: GET /api/instances/{sop}/rendered?format=jpeg, full size, HTTPS (TLS, self-signed) on loopback, background render off"
for c in $(printf '%s\n' 1 "$CONNS" | sort -nu); do
    o=${RES[orthanc$c]}; r=${RES[medrelay$c]}
    printf '   %d conn: Orthanc %6.1f/s  medrelay %6.1f/s  ratio medrelay/Orthanc = %s%s\n' "$c" \
        "$(field "$o" rate)" "$(field "$r" rate)" "$(ratio "$(field "$r" rate)" "$(field "$o" rate)")" \
        "$([ "$c" = "$CONNS" ] && echo '   (goal >= 2)')"
    for x in "Orthanc :$o" "medrelay:$r"; do
        v=${x#*:}
        printf '      %s p50 %s ms p95 %s ms, %s KB avg, %s, errors %s; CPU per preview: server %s ms, client %s ms; other load %s%%\n' \
            "${x%%:*}" "$(field "$v" p50_ms)" "$(field "$v" p95_ms)" "$(field "$v" mean_kb)" "$(field "$v" sizes)" \
            "$(field "$v" errors)" "$(field "$v" server_cpu_ms)" "$(field "$v" client_cpu_ms)" "$(field "$v" other_cpu_pct)"
    done
done
echo "   (other load = CPU used by anything but that server and the client during the timed passes, % of all cores;"
echo "    builds/tests running beside make the numbers noisy; load average before/after part 1: $LOAD_BEFORE / $LOAD_AFTER)"
echo "   peak RSS during the load: Orthanc $ORTH_RSS MB, medrelay $MR1_RSS MB; Orthanc log errors: $ORTH_ERR"
printf '2. C-STORE-RSP -> thumbnail, storescu +sd %s slices (%.1f s) to a fresh medrelay, render on:\n' "$N" "$STORESCU_S"
echo "   preview_ms - received_ms: p50 $(field "$DELAY" p50_ms) ms  p95 $(field "$DELAY" p95_ms) ms  max $(field "$DELAY" max_ms) ms  (goal p95 <= 1000 ms; statuses $(field "$DELAY" statuses))"
echo "   $WAIT_LINE; other load meanwhile $OTHER2%"
echo "3. C-STORE ack latency, medrelay store --parallel 1, median of $LAT_RUNS fresh-server runs each:"
echo "   render off: p50 $off50 ms  p95 $off95 ms   (runs p50 [${OFF50[*]}] p95 [${OFF95[*]}])"
echo "   render on : p50 $on50 ms  p95 $on95 ms   (runs p50 [${ON50[*]}] p95 [${ON95[*]}]; previews done at last ack [${ON_DONE[*]}] of $N)"
echo "   other load during the runs (off,on per run): [${OTHER3[*]}] %"
echo "   ratio on/off: p50 $(ratio "$on50" "$off50")  p95 $(ratio "$on95" "$off95")  (goal ~1: a burst does not delay acknowledgements)"
