#!/usr/bin/env bash
# Ingest at archive scale, per storage backend (issue 18, storage backends).
# Side by side in one run, same machine, same data: the 300 x 512^2 CT series
# (.cache/ct300, ~158 MB) pushed by DCMTK storescu (TCP_NODELAY=1), over one
# association and over 4 at once (4 storescu processes, 75 files each), into
#
#   a  medrelay, SQLite index + local files (the embedded default)
#   b  medrelay, PostgreSQL index + local files
#   c  medrelay, PostgreSQL index + S3 objects on Garage (benches/support/
#      garage.sh, data and metadata fsync on unless GARAGE_FSYNC=0); skipped
#      if Garage is not built
#   d  the anchor: Orthanc (Debian's 1.10) with its PostgreSQL index plugin
#      (orthanc-postgresql 4.0), files on local disk, index on the SAME
#      PostgreSQL server (another database). Orthanc 1.10 has no option to
#      fsync its storage files; its index commits are durable (fsync on).
#
# each with its index already holding SIZES instances (default 0, 1 000 000
# and 5 000 000). Indexes are seeded with rows only, no files
# (benches/ingest_seed.py: ~300 instances per study, 1-4 series, a patient per
# 3 studies, 20 clinics t01..t20, UIDs spread over the UID indexes; the
# columns each server writes itself), batch by batch as the sizes grow, with
# every server stopped: SQLite by Python's sqlite3 (no ANALYZE: the server
# never runs it), medrelay's PostgreSQL and Orthanc's tables (as the plugin
# creates them on first start) by INSERT ... SELECT ... generate_series in
# psql (Orthanc's beside medrelay's: two cores), then VACUUM ANALYZE +
# CHECKPOINT (autovacuum's work on a running archive). c's index is a copy of
# b's (CREATE DATABASE ... TEMPLATE).
# One PostgreSQL cluster (benches/support/pg.sh: fsync on, shared_buffers
# PG_SHARED_BUFFERS, max_wal_size 4GB) serves b, c and d.
#
# Per size all receivers are up at once (all idle but the one pushed to); per
# run, per association count,
# the same fresh copy of the CT (new Study/Series/SOP UIDs, made with pydicom
# per size) goes to each receiver in turn (order rotated per run), after a
# sync; after each push the receiver must hold all 300 instances (medrelay:
# rows in its index; Orthanc: /tools/find) or the script fails, and medrelay's
# previews of the push must be rendered before the next push starts. A warm-up
# push of 30 instances per receiver and size goes first, untimed.
#
# Prints instances/s (median of RUNS pushes) per receiver, size and
# association count; each medrelay backend / Orthanc+PG at the same size and
# associations (goal: PG+S3 >= 2x); per receiver rate at the largest size /
# rate at the smallest (goal >= 0.9 from 0 to 5 M). The seeding times and
# database sizes, and the load average before and after.
#
#   bash benches/ingest_scale.sh
#   SIZES="0 20000" RUNS=1 bash benches/ingest_scale.sh     # a quick try
#
# Knobs: SIZES (ascending instance counts, default "0 1000000 5000000"), RUNS
# (default 3), GARAGE (0 = skip c), SEED_CHUNK (instances per seeding
# transaction, default 1000000), PG_SHARED_BUFFERS (default 1GB),
# ORTHANC_INDEX_CONNECTIONS (the plugin's IndexConnectionsCount, default 1 as
# Orthanc's own default), SQLITE_ANALYZE (1 = ANALYZE the seeded SQLite index
# anyway). The default run needs ~40 GB of free disk under /tmp (checked) and
# an estimated 30 minutes, ~15 of them seeding (from 2 x 200 000 instances per
# backend: SQLite ~3 s, medrelay PG ~5 s, Orthanc PG ~22 s each). Benchmarks, not tests: nothing asserts on time; builds or tests
# running beside make every number noisier (the load average is printed).
set -euo pipefail
SIZES="${SIZES:-0 1000000 5000000}"
RUNS="${RUNS:-3}"
GARAGE="${GARAGE:-1}"
SEED_CHUNK="${SEED_CHUNK:-1000000}"
PG_SHARED_BUFFERS="${PG_SHARED_BUFFERS:-1GB}"
ORTHANC_INDEX_CONNECTIONS="${ORTHANC_INDEX_CONNECTIONS:-1}"
SQLITE_ANALYZE="${SQLITE_ANALYZE:-0}"
N=300
export TCP_NODELAY=1   # DCMTK (storescu, and Orthanc's DICOM server) leaves Nagle on otherwise
# shellcheck source=support/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/support/common.sh" ingest_scale.sh   # also dcmtk, PostgreSQL binaries, venv, .cache/ct300

# ---------------------------------------------------------------- knobs, tools
# shellcheck disable=SC2086  # SIZES is a list of words
read -r -a SIZE_LIST <<<"$(printf '%s\n' $SIZES | sort -n -u | tr '\n' ' ')"
[ "${#SIZE_LIST[@]}" -gt 0 ] || die "SIZES is empty"
for s in "${SIZE_LIST[@]}"; do [[ "$s" =~ ^[0-9]+$ ]] || die "SIZES: not a count: $s"; done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS: $RUNS"
[[ "$SEED_CHUNK" =~ ^[1-9][0-9]*$ ]] || die "SEED_CHUNK: $SEED_CHUNK"

SEED="$REPO/benches/ingest_seed.py"
PG="$REPO/benches/support/pg.sh"
GARAGE_SH="$REPO/benches/support/garage.sh"
CT="$REPO/.cache/ct300"
orthanc_anchor
[ "$(find "$CT" -name '*.dcm' | wc -l)" = "$N" ] || die "$CT does not hold $N files"

# c needs Garage's binary; building it takes ~29 min, so never from here
RECEIVERS="a b c d"
C_SKIP=""
if [ "$GARAGE" = 0 ]; then
    C_SKIP="GARAGE=0"
elif ! [ -x "$REPO/.cache/garage/bin/garage" ]; then
    C_SKIP="Garage not built (bash benches/support/garage.sh build, ~29 min once)"
elif ! "$REPO/.cache/garage/bin/garage" --version 2>/dev/null | grep -q "2\.5\.0"; then
    C_SKIP="Garage in .cache/garage is not 2.5.0 (garage.sh start would rebuild it)"
fi
if [ -n "$C_SKIP" ]; then
    RECEIVERS="a b d"
    log "receiver c (medrelay PostgreSQL + S3 on Garage) SKIPPED: $C_SKIP"
fi
has_c() { [ -z "$C_SKIP" ]; }

bench_build

WORK="$(mktemp -d /tmp/medrelay-ingest-scale.XXXXXX)"
chmod 711 "$WORK"   # the cluster's unprivileged owner must reach $WORK/pg

# disk: per seeded instance ~0.7 kB (SQLite) + 2 x ~1 kB (b, c) + ~2.4 kB (Orthanc);
# per push ~158 MB per receiver; the copies of one size
MAX_SIZE="${SIZE_LIST[${#SIZE_LIST[@]}-1]}"
NEED_MB=$(( MAX_SIZE * 5 / 1000 + ${#SIZE_LIST[@]} * (2 * RUNS * 4 + 4) * 160 + (2 * RUNS + 1) * 160 + 1000 ))
FREE_MB=$(df -Pm "$WORK" | awk 'NR == 2 {print $4}')
[ "$FREE_MB" -ge "$NEED_MB" ] || die "needs ~$NEED_MB MB free under $WORK, has $FREE_MB MB (smaller SIZES or RUNS)"

declare -A PID=() DPORT=() AEC=() HPORT=()
LABEL_a="medrelay SQLite + files"
LABEL_b="medrelay PG + files"
LABEL_c="medrelay PG + S3 (Garage)"
LABEL_d="Orthanc + PG (anchor)"
label() { local v="LABEL_$1"; echo "${!v}"; }

stop_one() { # $1 receiver
    local p="${PID[$1]:-}"
    [ -n "$p" ] || return 0
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    PID[$1]=""
}
stop_all() { local r; for r in a b c d; do stop_one "$r"; done; }
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    if has_c; then bash "$GARAGE_SH" stop "$WORK/garage" 2>/dev/null || true; fi
    bash "$PG" stop "$WORK/pg" || true
    [ "$rc" != 0 ] && show_logs "$WORK"/*.log "$WORK"/pg/server.log "$WORK"/garage/garage.log
    rm -rf "$WORK"
    exit "$rc"
}
bench_traps cleanup

since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
wait_port() {
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- PostgreSQL, Garage
mkdir -p "$WORK/pg"
PG_URL=$(bash "$PG" start "$WORK/pg" "$PG_SHARED_BUFFERS")   # database "medrelay": receiver b
PG_PORT=$(cat "$WORK/pg/port")
PG_PW=$(cat "$WORK/pg/pwfile")
psql_db() {
    local db="$1"
    shift
    PGOPTIONS="-c client_min_messages=warning" bash "$PG" psql "$WORK/pg" -d "$db" -X -q -v ON_ERROR_STOP=1 "$@"
}
# bulk seeding writes GBs of WAL: fewer forced checkpoints (a common production value)
psql_db postgres -c "ALTER SYSTEM SET max_wal_size = '4GB'" -c "SELECT pg_reload_conf()" >/dev/null
psql_db postgres -c "CREATE DATABASE orthanc OWNER pgadmin"
URL_b="$PG_URL"
URL_c="${PG_URL%/medrelay}/medrelay_s3"
if has_c; then
    mkdir -p "$WORK/garage"
    bash "$GARAGE_SH" start "$WORK/garage" 2>>"$WORK/garage-start.log" || die "garage.sh start: $(tail -5 "$WORK/garage-start.log")"
fi

# ---------------------------------------------------------------- receivers
CFG="$WORK/medrelay.toml"
"$PY" benches/reading_api.py config "$CFG"   # clinics t01..t20; T01_CT is clinic t01's CT
CALLING=T01_CT
index_url() { case "$1" in a) echo "" ;; b) echo "$URL_b" ;; c) echo "$URL_c" ;; esac; }
start_medrelay() { # $1 receiver a|b|c
    local r="$1" http udp metrics dicom url
    http=$(free_port); udp=$(free_port); metrics=$(free_port); dicom=$(free_port)
    url=$(index_url "$r")
    : >"$WORK/$r.log"
    (
        if [ "$r" = c ]; then
            # shellcheck disable=SC1091
            . "$WORK/garage/env"   # MEDRELAY_STORAGE_URL and AWS_* for Garage
        fi
        MEDRELAY_INDEX_URL="$url" exec "$BIN" serve --config "$CFG" --data-dir "$WORK/$r" --cert-dir "$WORK/certs" \
            --http-listen "127.0.0.1:$http" --dicom-listen "127.0.0.1:$dicom" --sfu-udp-listen "127.0.0.1:$udp" \
            --metrics-listen "127.0.0.1:$metrics" --min-free-bytes 0
    ) >>"$WORK/$r.log" 2>&1 &
    PID[$r]=$!
    DPORT[$r]=$dicom
    AEC[$r]=MEDRELAY
    local t0; t0=$(now)
    for _ in $(seq 1 3000); do
        grep -q "medrelay ready" "$WORK/$r.log" && { log "$r: medrelay ready in $(since "$t0") s"; return 0; }
        kill -0 "${PID[$r]}" 2>/dev/null || die "$r: medrelay exited (see $r.log)"
        sleep 0.1
    done
    die "$r: medrelay not ready after 300 s"
}
start_orthanc() {
    local http dicom t0
    http=$(free_port); dicom=$(free_port)
    mkdir -p "$WORK/d/storage"
    cat >"$WORK/d/orthanc.json" <<JSON
{
  "Name": "ingest-scale",
  "StorageDirectory": "$WORK/d/storage",
  "IndexDirectory": "$WORK/d/storage",
  "Plugins": ["$ORTHANC_PG_PLUGIN"],
  "PostgreSQL": {
    "EnableIndex": true, "EnableStorage": false, "Host": "127.0.0.1", "Port": $PG_PORT,
    "Database": "orthanc", "Username": "pgadmin", "Password": "$PG_PW", "Lock": false,
    "IndexConnectionsCount": $ORTHANC_INDEX_CONNECTIONS
  },
  "HttpPort": $http, "RemoteAccessAllowed": false, "AuthenticationEnabled": false,
  "DicomAet": "ORTHANC", "DicomPort": $dicom, "DicomCheckCalledAet": false,
  "DicomAlwaysAllowStore": true, "DicomAlwaysAllowEcho": true, "DicomCheckModalityHost": false,
  "DicomModalities": {}, "StorageCompression": false, "SaveJobs": false
}
JSON
    chmod 600 "$WORK/d/orthanc.json"
    : >"$WORK/d.log"
    "$ORTHANC" "$WORK/d/orthanc.json" >>"$WORK/d.log" 2>&1 &
    PID[d]=$!
    DPORT[d]=$dicom
    AEC[d]=ORTHANC
    HPORT[d]=$http
    t0=$(now)
    for _ in $(seq 1 3000); do
        if curl -sf "http://127.0.0.1:$http/system" >/dev/null 2>&1 && wait_port "$dicom"; then
            log "d: Orthanc ready in $(since "$t0") s"
            return 0
        fi
        kill -0 "${PID[d]}" 2>/dev/null || die "d: Orthanc exited (see d.log)"
        sleep 0.1
    done
    die "d: Orthanc not ready after 300 s"
}
start_one() { if [ "$1" = d ]; then start_orthanc; else start_medrelay "$1"; fi; }

# instances of study $2 that receiver $1 holds
stored() {
    local r="$1" uid="$2"
    case "$r" in
        a) sqlite3 -cmd ".timeout 10000" "$WORK/a/index.db" "SELECT COUNT(*) FROM instances WHERE study_uid = '$uid'" ;;
        b) psql_db medrelay -At -c "SELECT COUNT(*) FROM instances WHERE study_uid = '$uid'" ;;
        c) psql_db medrelay_s3 -At -c "SELECT COUNT(*) FROM instances WHERE study_uid = '$uid'" ;;
        d) curl -sf -X POST "http://127.0.0.1:${HPORT[d]}/tools/find" \
               -d "{\"Level\": \"Instance\", \"Query\": {\"StudyInstanceUID\": \"$uid\"}}" |
               python3 -c 'import json, sys; print(len(json.load(sys.stdin)))' ;;
    esac
}
# medrelay renders a preview of every instance it receives: let it finish before the next push
wait_previews() { # $1 receiver, $2 study
    local r="$1" uid="$2" q n
    [ "$r" = d ] && return 0
    q="SELECT COUNT(*) FROM instances WHERE study_uid = '$uid' AND preview_status = 'pending'"
    for _ in $(seq 1 1200); do
        case "$r" in
            a) n=$(sqlite3 -cmd ".timeout 10000" "$WORK/a/index.db" "$q") ;;
            b) n=$(psql_db medrelay -At -c "$q") ;;
            c) n=$(psql_db medrelay_s3 -At -c "$q") ;;
        esac
        [ "$n" = 0 ] && return 0
        sleep 0.25
    done
    log "$r: WARNING: $n previews of $uid still pending after 300 s"
}

# push: $1 receiver, $2 copy dir, $3 associations, $4 files (0 = all) -> prints instances/s
push() {
    local r="$1" dir="$2" assoc="$3" limit="$4" uid t0 t1 rc=0 n want q per
    uid=$(cat "$dir.uid")
    local files=()
    mapfile -t files < <(find "$dir" -name '*.dcm' | sort)
    if [ "$limit" -gt 0 ]; then files=("${files[@]:0:$limit}"); fi
    want=${#files[@]}
    sync
    local pids=() out="$WORK/push-$r.log"
    : >"$out"
    per=$(( (want + assoc - 1) / assoc ))
    t0=$(now)
    for ((q = 0; q < assoc; q++)); do
        storescu -aet "$CALLING" -aec "${AEC[$r]}" 127.0.0.1 "${DPORT[$r]}" "${files[@]:$((q * per)):$per}" >>"$out" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=$?; done
    t1=$(now)
    [ "$rc" = 0 ] || die "$r: storescu failed (exit $rc) pushing $dir: $(tail -5 "$out")"
    n=$(stored "$r" "$uid") || die "$r: could not count the stored instances of $uid"
    [ "$n" = "$want" ] || die "$r ($(label "$r")): holds $n of the $want instances pushed ($dir, $assoc associations): $(grep -iE 'error|fail|warn' "$out" | head -5)"
    wait_previews "$r" "$uid"
    awk -v a="$t0" -v b="$t1" -v n="$want" 'BEGIN { printf "%.1f\n", n / (b - a) }'
}

# ---------------------------------------------------------------- schemas
log "schemas: medrelay (SQLite, PostgreSQL), Orthanc's PostgreSQL plugin (first start)"
"$BIN" migrate --config "$CFG" --data-dir "$WORK/a" >/dev/null
MEDRELAY_INDEX_URL="$URL_b" "$BIN" migrate --config "$CFG" --data-dir "$WORK/b" >/dev/null
start_orthanc
stop_one d

# ---------------------------------------------------------------- seeding
SEEDED=0
BATCH=0
declare -A SEED_S=([a]=0 [b]=0 [c]=0 [d]=0)
add_time() { SEED_S[$1]=$(awk -v a="${SEED_S[$1]}" -v b="$2" 'BEGIN { printf "%.1f", a + b }'); }
seed_to() { # $1 target instance count; every server stopped
    local target="$1" n t0 nowms ta tb td dpid
    while [ "$SEEDED" -lt "$target" ]; do
        n=$(( target - SEEDED < SEED_CHUNK ? target - SEEDED : SEED_CHUNK ))
        BATCH=$((BATCH + 1))
        nowms=$(date +%s%3N)
        log "seeding batch $BATCH: $n instances ($SEEDED -> $((SEEDED + n)))"
        # Orthanc's (the longest) beside medrelay's two, one after the other: two cores
        t0=$(now)
        (
            "$PY" "$SEED" orthanc-sql --batch "$BATCH" --n "$n" | psql_db orthanc -v now_ms="$nowms" -f - >/dev/null
            since "$t0" >"$WORK/seed-d.s"
        ) &
        dpid=$!
        "$PY" "$SEED" sqlite "$WORK/a/index.db" --batch "$BATCH" --n "$n"
        ta=$(since "$t0")
        t0=$(now)
        "$PY" "$SEED" pg-sql --batch "$BATCH" --n "$n" | psql_db medrelay -v now_ms="$nowms" -f - >/dev/null
        tb=$(since "$t0")
        wait "$dpid" || die "seeding Orthanc's index failed"
        td=$(cat "$WORK/seed-d.s")
        log "batch $BATCH seeded (Orthanc's beside medrelay's): SQLite $ta s, medrelay PG $tb s, Orthanc PG $td s"
        add_time a "$ta"; add_time b "$tb"; add_time d "$td"
        SEEDED=$((SEEDED + n))
    done
    t0=$(now)
    if [ "$SQLITE_ANALYZE" = 1 ]; then sqlite3 "$WORK/a/index.db" "ANALYZE"; fi
    ta=$(since "$t0")
    t0=$(now)
    psql_db medrelay -c "VACUUM ANALYZE"
    tb=$(since "$t0")
    t0=$(now)
    psql_db orthanc -c "VACUUM ANALYZE"
    td=$(since "$t0")
    add_time a "$ta"; add_time b "$tb"; add_time d "$td"
    log "VACUUM ANALYZE: medrelay PG $tb s, Orthanc PG $td s"
    if has_c; then
        # c: b's index as it is now (b's own pushes come along: other UIDs, harmless)
        t0=$(now)
        psql_db postgres -c "DROP DATABASE IF EXISTS medrelay_s3" -c "CREATE DATABASE medrelay_s3 TEMPLATE medrelay STRATEGY FILE_COPY"
        add_time c "$(since "$t0")"
        log "c's index copied from b's in $(since "$t0") s"
    fi
    psql_db postgres -c "CHECKPOINT"
    sync
}
index_count() { # instances in receiver $1's index
    case "$1" in
        a) sqlite3 -cmd ".timeout 10000" "$WORK/a/index.db" "SELECT COUNT(*) FROM instances" ;;
        b) psql_db medrelay -At -c "SELECT COUNT(*) FROM instances" ;;
        c) psql_db medrelay_s3 -At -c "SELECT COUNT(*) FROM instances" ;;
        d) psql_db orthanc -At -c "SELECT value FROM globalintegers WHERE key = 5" ;;
    esac
}

# ---------------------------------------------------------------- the runs
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
: >"$WORK/sizes.txt"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(now)
read -r -a RECV <<<"$RECEIVERS"
for size in "${SIZE_LIST[@]}"; do
    stop_all
    seed_to "$size"
    rm -rf "$WORK/copies"
    log "size $size: $((2 * RUNS + 1)) copies of the CT with new UIDs"
    "$PY" "$SEED" copies "$CT" "$WORK/copies" $((2 * RUNS + 1))
    cat "$WORK"/copies/*/*.dcm >/dev/null   # every push reads the same cached files
    for r in "${RECV[@]}"; do start_one "$r"; done
    counts=""
    for r in "${RECV[@]}"; do counts+="$r=$(index_count "$r") "; done
    echo "$size ${counts% }" >>"$WORK/sizes.txt"
    log "size $size: index instances before the pushes: $counts"
    # warm-up, untimed: 30 instances of the last copy to each receiver
    for r in "${RECV[@]}"; do push "$r" "$WORK/copies/c$(printf %02d $((2 * RUNS + 1)))" 1 30 >/dev/null; done
    c=0
    for run in $(seq 1 "$RUNS"); do
        for assoc in 1 4; do
            c=$((c + 1))
            dir="$WORK/copies/c$(printf %02d "$c")"
            k=${#RECV[@]}
            for ((j = 0; j < k; j++)); do
                r=${RECV[$(( (j + run + assoc) % k ))]}
                rate=$(push "$r" "$dir" "$assoc" 0)
                log "size $size run $run: $(label "$r"), $assoc association(s): $rate instances/s"
                printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$size" "$assoc" "$run" "$rate" >>"$RESULTS"
            done
        done
    done
done
stop_all
# c's own floor, same run: Garage alone taking objects of the CT's mean size
# one acknowledged PUT at a time per connection (what one association
# waits for before its C-STORE-RSP), over 1 and 4 connections
FLOOR="$WORK/floor.tsv"
: >"$FLOOR"
if has_c; then
    BYTES=$(find "$CT" -name '*.dcm' -printf '%s\n' | awk '{ s += $1 } END { printf "%d", s / NR }')
    for run in $(seq 1 "$RUNS"); do
        for streams in 1 4; do
            rate=$( # shellcheck disable=SC1091
                . "$WORK/garage/env"
                "$PY" benches/support/s3get.py puts "$GARAGE_ENDPOINT" medrelay "floor/$run-$streams/" "$N" "$BYTES" "$streams"
            ) || die "Garage PUT floor failed"
            log "Garage alone, run $run: $N PUTs of $BYTES bytes over $streams connection(s): $rate/s"
            printf '%s\t%s\n' "$streams" "$rate" >>"$FLOOR"
        done
    done
fi
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
TOTAL_MIN=$(awk -v a="$T_START" -v b="$(now)" 'BEGIN { printf "%.0f", (b - a) / 60 }')
DB_SIZES=$(psql_db postgres -At -F' ' -c "SELECT datname, pg_size_pretty(pg_database_size(datname)) FROM pg_database
    WHERE datname IN ('medrelay', 'medrelay_s3', 'orthanc') ORDER BY 1" | tr '\n' ',' | sed 's/,$//; s/,/, /g')
SQLITE_SIZE=$(du -h "$WORK/a/index.db" | cut -f1)

# ---------------------------------------------------------------- summary
echo
echo "================ ingest at scale ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), medrelay $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty'); load average $LOAD0 -> $LOAD1; ${TOTAL_MIN} min)"
echo "CT $N x 512^2 (~158 MB) by DCMTK storescu $(storescu --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1), TCP_NODELAY=1, calling AE $CALLING; RUNS=$RUNS pushes per cell, fresh UIDs each; median instances/s"
echo "PostgreSQL $(psql_db postgres -At -c 'SHOW server_version') (shared_buffers $PG_SHARED_BUFFERS, fsync on, max_wal_size 4GB); Orthanc $("$ORTHANC" --version 2>/dev/null | head -1 | awk '{print $2}') + $(basename "$ORTHANC_PG_PLUGIN") (IndexConnectionsCount $ORTHANC_INDEX_CONNECTIONS, no fsync of its files)"
has_c || echo "c (medrelay PG + S3 on Garage) SKIPPED: $C_SKIP"
has_c && echo "Garage: data_fsync and metadata_fsync $([ "${GARAGE_FSYNC:-1}" = 0 ] && echo "off (GARAGE_FSYNC=0: Garage's defaults)" || echo on)"
echo "seeding (rows only, all sizes): SQLite ${SEED_S[a]} s, medrelay PG ${SEED_S[b]} s$(has_c && echo " (+ ${SEED_S[c]} s copying it for c)"), Orthanc PG ${SEED_S[d]} s (incl. VACUUM ANALYZE)$([ "$SQLITE_ANALYZE" = 1 ] && echo "; SQLite ANALYZEd")"
echo "databases at the end: $DB_SIZES; index.db $SQLITE_SIZE"
echo "instances in each index before the pushes, per size: $(awk '{ $1 = $1 ":"; print }' "$WORK/sizes.txt" | tr '\n' ';' | sed 's/;$//; s/;/; /g')"
"$PY" - "$RESULTS" "$LABEL_a" "$LABEL_b" "$LABEL_c" "$LABEL_d" "$FLOOR" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l]
labels = dict(zip("abcd", sys.argv[2:6]))
floor = {}
for l in open(sys.argv[6]).read().splitlines():
    streams, rate = l.split("\t")
    floor.setdefault(int(streams), []).append(float(rate))
cells = {}
for r, size, assoc, run, rate in rows:
    cells.setdefault((r, int(size), int(assoc)), []).append(float(rate))
med = {k: statistics.median(v) for k, v in cells.items()}
recv = [r for r in "abcd" if any(k[0] == r for k in cells)]
sizes = sorted({k[1] for k in cells})
print()
print(f"{'receiver':28s} {'instances':>10s} {'assoc':>5s} | {'per push':24s} | {'median':>7s} | {'/ Orthanc+PG':>12s}")
for r in recv:
    for s in sizes:
        for a in (1, 4):
            v = cells.get((r, s, a))
            if not v:
                continue
            anchor = med.get(("d", s, a))
            ratio = "" if r == "d" or not anchor else f"{med[r, s, a] / anchor:11.2f}x"
            runs = " ".join(f"{x:.0f}" for x in v)
            print(f"{labels[r]:28s} {s:10d} {a:5d} | {runs:24s} | {med[r, s, a]:7.1f} | {ratio:>12s}")
if len(sizes) > 1:
    lo, hi = sizes[0], sizes[-1]
    print()
    print(f"scaling: rate with {hi} instances in the index / rate with {lo} (goal >= 0.9)")
    for r in recv:
        parts = []
        for a in (1, 4):
            if (r, lo, a) in med and (r, hi, a) in med:
                x = med[r, hi, a] / med[r, lo, a]
                parts.append(f"{a} assoc {x:.2f}{'' if round(x, 2) >= 0.9 else ' (below 0.9)'}")
        print(f"  {labels[r]:28s} " + ", ".join(parts))
if "c" in recv:
    print()
    print("goal: medrelay PG + S3 >= 2x Orthanc + PG")
    for s in sizes:
        for a in (1, 4):
            if ("c", s, a) in med and ("d", s, a) in med:
                x = med["c", s, a] / med["d", s, a]
                print(f"  {s:10d} instances, {a} assoc: {x:.2f}x {'met' if round(x, 2) >= 2 else 'NOT met'}")
if floor:
    print()
    print("c's floor, same run: Garage alone, one acknowledged PUT at a time per connection")
    for a in (1, 4):
        if a not in floor:
            continue
        f = statistics.median(floor[a])
        runs = " ".join(f"{x:.0f}" for x in floor[a])
        vs = ", ".join(f"{s}: {med['c', s, a] / f:.2f}x" for s in sizes if ("c", s, a) in med)
        print(f"  {a} connection(s): {runs} -> median {f:.1f} PUTs/s; medrelay PG + S3 / Garage alone: {vs}")
EOF
