#!/usr/bin/env bash
# Query/Retrieve against Orthanc (issue 19), side by side in one run, same
# machine, same data:
#
#   a  medrelay, SQLite index (the embedded default), files
#   d  the anchor: Orthanc (Debian's 1.10) with its PostgreSQL index plugin
#      (orthanc-postgresql 4.0), files on local disk
#
# 1. C-FIND, Study Root, STUDY level, with STUDIES studies indexed (default
#    100 000, one instance each, seeded as rows by benches/ingest_seed.py
#    --per-study 1: the same patients, names, dates and accession numbers on
#    both), from one pynetdicom association per server kept open; five query
#    kinds (a day, a patient ID, an accession number, a patient name, a week
#    of CT) over SAMPLE sampled studies, ROUNDS rounds, servers alternating;
#    p50 / p95 ms per kind and the ratio (goal: medrelay >= 5x faster).
# 2. C-MOVE of the 300-slice CT (.cache/ct300, pushed to both first) to DCMTK
#    storescp, by DCMTK movescu, MOVES times alternating; instances/s
#    (median) and the ratio (goal: medrelay >= 1.5x Orthanc's rate).
#
#   bash benches/qr.sh
#   STUDIES=20000 ROUNDS=3 MOVES=1 bash benches/qr.sh      # a quick try
#
# Benchmarks, not tests: nothing asserts on time; builds or tests running
# beside make every number noisier (the load average is printed).
set -euo pipefail
STUDIES="${STUDIES:-100000}"
SAMPLE="${SAMPLE:-20}"
ROUNDS="${ROUNDS:-10}"
MOVES="${MOVES:-3}"
export TCP_NODELAY=1   # DCMTK and Orthanc's DICOM server leave Nagle on otherwise
# shellcheck source=support/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/support/common.sh" qr.sh

SEED="$REPO/benches/ingest_seed.py"
PG="$REPO/benches/support/pg.sh"
CT="$REPO/.cache/ct300"
orthanc_anchor

bench_build
WORK="$(mktemp -d /tmp/medrelay-qr.XXXXXX)"
chmod 711 "$WORK"
A_PID="" D_PID="" S_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "$A_PID" "$D_PID" "$S_PID"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
    wait 2>/dev/null || true
    bash "$PG" stop "$WORK/pg" || true
    [ "$rc" != 0 ] && show_logs "$WORK"/*.log "$WORK"/pg/server.log
    rm -rf "$WORK"
    exit "$rc"
}
bench_traps cleanup
wait_port() {
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- PostgreSQL for Orthanc
mkdir -p "$WORK/pg"
bash "$PG" start "$WORK/pg" 1GB >/dev/null
PG_PORT=$(cat "$WORK/pg/port")
PG_PW=$(cat "$WORK/pg/pwfile")
psql_db() {
    local db="$1"
    shift
    PGOPTIONS="-c client_min_messages=warning" bash "$PG" psql "$WORK/pg" -d "$db" -X -q -v ON_ERROR_STOP=1 "$@"
}
psql_db postgres -c "CREATE DATABASE orthanc OWNER pgadmin"

# ---------------------------------------------------------------- servers
SCP_PORT=$(free_port)
mkdir -p "$WORK/scp"
storescp -aet STORESCP -od "$WORK/scp" "$SCP_PORT" >"$WORK/storescp.log" 2>&1 &
S_PID=$!
CFG="$WORK/medrelay.toml"
"$PY" benches/reading_api.py config "$CFG"
{
    echo '[[hospital]]'
    echo 'id = "bench"'
    echo "serves = [$(seq -f '"t%02g"' 1 20 | paste -sd,)]"
    echo 'ae_titles = ["BENCH_WS"]'
    echo
    echo '[[dicom.destination]]'
    echo 'ae_title = "STORESCP"'
    echo 'host = "127.0.0.1"'
    echo "port = $SCP_PORT"
} >>"$CFG"
A_DICOM=$(free_port)
start_medrelay() {
    : >"$WORK/a.log"
    "$BIN" serve --config "$CFG" --data-dir "$WORK/a" --cert-dir "$WORK/certs" \
        --http-listen "127.0.0.1:$(free_port)" --dicom-listen "127.0.0.1:$A_DICOM" \
        --sfu-udp-listen "127.0.0.1:$(free_port)" --metrics-listen "127.0.0.1:$(free_port)" \
        --min-free-bytes 0 --stable-after-secs 2 >>"$WORK/a.log" 2>&1 &
    A_PID=$!
    for _ in $(seq 1 3000); do
        grep -q "medrelay ready" "$WORK/a.log" && return 0
        kill -0 "$A_PID" 2>/dev/null || die "medrelay exited (see a.log)"
        sleep 0.1
    done
    die "medrelay not ready"
}
D_DICOM=$(free_port)
D_HTTP=$(free_port)
start_orthanc() {
    mkdir -p "$WORK/d/storage"
    cat >"$WORK/d/orthanc.json" <<JSON
{
  "Name": "qr-bench",
  "StorageDirectory": "$WORK/d/storage", "IndexDirectory": "$WORK/d/storage",
  "Plugins": ["$ORTHANC_PG_PLUGIN"],
  "PostgreSQL": {
    "EnableIndex": true, "EnableStorage": false, "Host": "127.0.0.1", "Port": $PG_PORT,
    "Database": "orthanc", "Username": "pgadmin", "Password": "$PG_PW", "Lock": false
  },
  "HttpPort": $D_HTTP, "RemoteAccessAllowed": false, "AuthenticationEnabled": false,
  "DicomAet": "ORTHANC", "DicomPort": $D_DICOM, "DicomCheckCalledAet": false,
  "DicomAlwaysAllowStore": true, "DicomAlwaysAllowEcho": true, "DicomCheckModalityHost": false,
  "DicomModalities": {
    "bench": ["BENCH_WS", "127.0.0.1", 1],
    "storescp": ["STORESCP", "127.0.0.1", $SCP_PORT]
  },
  "StorageCompression": false, "SaveJobs": false, "LimitFindResults": 0, "LimitFindInstances": 0
}
JSON
    chmod 600 "$WORK/d/orthanc.json"
    : >"$WORK/d.log"
    "$ORTHANC" "$WORK/d/orthanc.json" >>"$WORK/d.log" 2>&1 &
    D_PID=$!
    for _ in $(seq 1 3000); do
        if curl -sf "http://127.0.0.1:$D_HTTP/system" >/dev/null 2>&1 && wait_port "$D_DICOM"; then return 0; fi
        kill -0 "$D_PID" 2>/dev/null || die "Orthanc exited (see d.log)"
        sleep 0.1
    done
    die "Orthanc not ready"
}

# ---------------------------------------------------------------- seeding (servers stopped)
log "schemas, then $STUDIES studies seeded into each index"
"$BIN" migrate --config "$CFG" --data-dir "$WORK/a" >/dev/null
start_orthanc
kill "$D_PID"; wait "$D_PID" 2>/dev/null || true; D_PID=""
t0=$(now)
"$PY" "$SEED" sqlite "$WORK/a/index.db" --batch 1 --n "$STUDIES" --per-study 1 >/dev/null
log "medrelay SQLite seeded in $(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s"
t0=$(now)
"$PY" "$SEED" orthanc-sql --batch 1 --n "$STUDIES" --per-study 1 |
    psql_db orthanc -v now_ms="$(date +%s%3N)" -f - >/dev/null
psql_db orthanc -c "VACUUM ANALYZE" >/dev/null
log "Orthanc PostgreSQL seeded in $(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s"
start_medrelay
start_orthanc

# ---------------------------------------------------------------- 1. C-FIND
"$PY" benches/qr_timing.py sample "$WORK/a/index.db" "$SAMPLE" >"$WORK/sample.json"
log "C-FIND: $SAMPLE studies x 5 kinds x $ROUNDS rounds per server"
echo
echo "== C-FIND, Study Root, STUDY level, $STUDIES studies indexed (one association per server, kept open)"
"$PY" benches/qr_timing.py find "$WORK/sample.json" "$ROUNDS" \
    "medrelay=MEDRELAY@127.0.0.1:$A_DICOM" "orthanc=ORTHANC@127.0.0.1:$D_DICOM"

# ---------------------------------------------------------------- 2. C-MOVE
log "pushing the 300-slice CT to both"
storescu -aet T01_CT -aec MEDRELAY +sd +r 127.0.0.1 "$A_DICOM" "$CT" >"$WORK/push-a.log" 2>&1 || die "push to medrelay"
storescu -aet T01_CT -aec ORTHANC +sd +r 127.0.0.1 "$D_DICOM" "$CT" >"$WORK/push-d.log" 2>&1 || die "push to Orthanc"
UID_CT=$("$PY" -c 'import pydicom,sys,os; d=sys.argv[1]; f=sorted(os.listdir(d))[0]; print(pydicom.dcmread(os.path.join(d,f), stop_before_pixels=True).StudyInstanceUID)' "$CT")
sleep 3   # medrelay: the study completes (stable after 2 s)
move() { # $1 AE, $2 port -> seconds
    rm -rf "$WORK/scp"/*
    local t0 t1 n
    t0=$(now)
    movescu -S -aet BENCH_WS -aec "$1" -aem STORESCP -k QueryRetrieveLevel=STUDY -k "StudyInstanceUID=$UID_CT" \
        127.0.0.1 "$2" >>"$WORK/move.log" 2>&1 || die "movescu to $1 failed: $(tail -3 "$WORK/move.log")"
    t1=$(now)
    n=$(find "$WORK/scp" -type f | wc -l)
    [ "$n" = 300 ] || die "$1: storescp received $n of 300"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}
move MEDRELAY "$A_DICOM" >/dev/null   # warm-up (page cache) for both
move ORTHANC "$D_DICOM" >/dev/null
A_T=() D_T=()
for r in $(seq 1 "$MOVES"); do
    if [ $((r % 2)) = 1 ]; then
        A_T+=("$(move MEDRELAY "$A_DICOM")"); D_T+=("$(move ORTHANC "$D_DICOM")")
    else
        D_T+=("$(move ORTHANC "$D_DICOM")"); A_T+=("$(move MEDRELAY "$A_DICOM")")
    fi
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
A_MED=$(median "${A_T[@]}")
D_MED=$(median "${D_T[@]}")
echo
echo "== C-MOVE of the 300-slice CT (158 MB) to storescp, movescu, median of $MOVES"
awk -v a="$A_MED" -v d="$D_MED" 'BEGIN {
    printf "medrelay  %6.2f s  %6.1f instances/s\n", a, 300 / a
    printf "orthanc   %6.2f s  %6.1f instances/s\n", d, 300 / d
    printf "ratio     medrelay / orthanc rate: %.2fx (goal >= 1.5x)\n", d / a }'
echo
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
