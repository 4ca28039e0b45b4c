#!/usr/bin/env bash
# The reading API at alliance scale, on both index backends, side by side in
# one run (issue: storage backends; goal p95 <= 50 ms at 1 000 000 studies on
# PostgreSQL).
#
#   1. One release build; accounts; one start and stop of the server on its
#      embedded SQLite (the schema, as in production); STUDIES (default
#      1 000 000) studies seeded into index.db by benches/reading_api.py
#      (20 clinics of different sizes, 5 modalities, two years, ~1 patient
#      per 3 studies, series rows, signed reports, a realistic worklist mix).
#   2. SQLite: the gateway on index.db; every route of reading_api.py (the
#      expert's and a clinic doctor's worklist and study lists, filters, the
#      study detail) N_REQ times, each request followed by the same SQL run
#      directly on index.db by Python's sqlite3 (the SQL anchor).
#   3. PostgreSQL: a throwaway cluster (benches/support/pg.sh, fsync on,
#      shared_buffers 1GB); `medrelay migrate-storage` copies the index
#      (and the empty instance store) to it; the gateway on it; the same
#      routes, the same requests, the same SQL anchor on index.db.
#   4. With INST_ROWS (default 1 000 000) instance rows added to the newest
#      studies on both backends (Python's sqlite3 / one INSERT … SELECT in
#      psql: index rows only, no files), the routes that read instances
#      again, briefly, on both.
#
#   bash benches/index_scale.sh
#
# Knobs: STUDIES, N_REQ (default 100), MAX_ROUTE_S (default 20), INST_ROWS
# (0 = skip step 4). Prints per route the p50/p95 of each backend and the
# PostgreSQL/SQLite ratio of the p95s, measured in this run. Benchmarks, not
# tests: nothing asserts on time. Builds or tests beside make every number
# noisier; the load average is printed.
set -euo pipefail
STUDIES="${STUDIES:-1000000}"
N_REQ="${N_REQ:-100}"
MAX_ROUTE_S="${MAX_ROUTE_S:-20}"
INST_ROWS="${INST_ROWS:-1000000}"
# shellcheck source=support/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/support/common.sh" index_scale.sh
API="$REPO/benches/reading_api.py"
PG="$REPO/benches/support/pg.sh"
bench_build

WORK="$(mktemp -d /tmp/medrelay-index-scale.XXXXXX)"
chmod 711 "$WORK"   # the cluster's unprivileged owner must reach $WORK/pg
MR_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$MR_PID" ] && { kill "$MR_PID" 2>/dev/null || true; wait "$MR_PID" 2>/dev/null || true; }
    bash "$PG" stop "$WORK/pg" || true
    [ "$rc" != 0 ] && show_logs "$WORK"/*.log "$WORK"/pg/server.log
    rm -rf "$WORK"
    exit "$rc"
}
bench_traps cleanup

CFG="$WORK/medrelay.toml"
DATA="$WORK/data"
start_medrelay() { # $1: index URL (empty: the embedded SQLite) -> MR_PID BASE
    local http dicom udp
    http=$(free_port); dicom=$(free_port); udp=$(free_port)
    : >"$WORK/medrelay.log"
    MEDRELAY_INDEX_URL="$1" MEDRELAY_WEB_DIR="$REPO/web" MEDRELAY_METRICS_LISTEN="127.0.0.1:$(free_port)" "$BIN" serve --config "$CFG" --data-dir "$DATA" \
        --cert-dir "$WORK/certs" --http-listen "127.0.0.1:$http" --dicom-listen "127.0.0.1:$dicom" \
        --sfu-udp-listen "127.0.0.1:$udp" --min-free-bytes 0 >>"$WORK/medrelay.log" 2>&1 &
    MR_PID=$!
    for _ in $(seq 1 600); do
        grep -q "medrelay ready" "$WORK/medrelay.log" && { BASE="https://127.0.0.1:$http"; return 0; }
        kill -0 "$MR_PID" 2>/dev/null || die "medrelay exited (see its log)"
        sleep 0.1
    done
    die "medrelay not ready after 60 s"
}
stop_medrelay() { kill "$MR_PID" 2>/dev/null || true; wait "$MR_PID" 2>/dev/null || true; MR_PID=""; }
bench() { # $1: label, $2: json out, then extra args
    local label="$1" out="$2"
    shift 2
    log "$label: $N_REQ requests per route (cut after $MAX_ROUTE_S s with >= 20)"
    "$PY" "$API" bench --base "$BASE" --db "$DATA/index.db" --expert expert1 --clinic-user doc01 \
        --n "$N_REQ" --warmup 5 --max-route-s "$MAX_ROUTE_S" --json "$out" "$@" >"$out.txt"
}
# Every route of reading_api.py but the patient-name search: its seeder does
# not fill the name keys the server searches (study_names), so that route
# would measure an empty answer.
ROUTES="wl,wl_ct,wl_clinic,wl_deep,st,st_dates,st_doc,detail"
bench_all() {
    local label="$1" out="$2"
    bench "$label" "$out" --only "$ROUTES"
}

# ---------------------------------------------------------------- 1. seed
MR_BENCH_PASSWORD="bench-$("$PY" -c 'import secrets; print(secrets.token_hex(8))')"
export MR_BENCH_PASSWORD
"$PY" "$API" config "$CFG"
for u in "admin --role admin" "expert1 --role expert --hospital city --name Expert-1" "doc01 --role clinic --clinic t01"; do
    # shellcheck disable=SC2086
    printf '%s\n' "$MR_BENCH_PASSWORD" | "$BIN" user add --config "$CFG" --data-dir "$DATA" $u --password-stdin >/dev/null
done
start_medrelay ""
stop_medrelay
log "seeding $STUDIES studies into index.db (server stopped)"
t0=$(date +%s)
SEED_LINE=$("$PY" "$API" seed "$DATA/index.db" --studies "$STUDIES" --expert expert1)
echo "$SEED_LINE" >&2
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- 2. SQLite
start_medrelay ""
bench_all "SQLite" "$WORK/sqlite.json"
stop_medrelay

# ---------------------------------------------------------------- 3. PostgreSQL
mkdir -p "$WORK/pg"
PG_URL=$(bash "$PG" start "$WORK/pg")
log "migrate-storage: index.db -> PostgreSQL"
t0=$(date +%s.%N)
"$BIN" migrate-storage --config "$CFG" --data-dir "$DATA" --to-index "$PG_URL" \
    --to-storage "file://$WORK/objects" >"$WORK/migrate.log" 2>&1 || die "migrate-storage: $(tail -5 "$WORK/migrate.log")"
t1=$(date +%s.%N)
MIGRATE_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }')
bash "$PG" psql "$WORK/pg" -q -c "VACUUM ANALYZE" >/dev/null
PG_SIZE=$(bash "$PG" psql "$WORK/pg" -At -c "SELECT pg_size_pretty(pg_database_size('medrelay'))")
start_medrelay "$PG_URL"
bench_all "PostgreSQL" "$WORK/pg.json"
stop_medrelay

# ---------------------------------------------------------------- 4. instance rows
if [ "$INST_ROWS" -gt 0 ]; then
    INST_LINE=$("$PY" "$API" seed-instances "$DATA/index.db" --rows "$INST_ROWS")
    log "SQLite: $INST_LINE"
    t0=$(date +%s.%N)
    # The same rows as seed-instances: the newest studies' series, one row per
    # instance, until INST_ROWS; index rows only (paths under bench-fake/).
    bash "$PG" psql "$WORK/pg" -q -v ON_ERROR_STOP=1 -v rows="$INST_ROWS" <<'SQL' >/dev/null
INSERT INTO instances (sop_instance_uid, version, series_uid, study_uid, sop_class_uid, transfer_syntax,
  instance_number, rows, columns, frames, sha256, size_bytes, path, calling_ae, received_ms, preview_status, preview_ms)
SELECT x.series_uid || '.' || g.n, 1, x.series_uid, x.study_uid, '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1',
       g.n, 512, 512, 1, md5(x.series_uid || g.n) || md5(g.n || x.series_uid), 525000,
       'bench-fake/' || md5(x.series_uid || g.n) || '.dcm', x.calling_ae, x.last_received_ms, 'ok', x.last_received_ms + 500
FROM (SELECT se.series_uid, se.study_uid, se.num_instances, se.last_received_ms, s.calling_ae,
             SUM(se.num_instances) OVER (ORDER BY s.last_received_ms DESC, se.series_uid) - se.num_instances AS before
      FROM series se JOIN studies s ON s.study_uid = se.study_uid) x
CROSS JOIN LATERAL generate_series(1, x.num_instances) AS g(n)
WHERE x.before < :rows;
ANALYZE instances;
SQL
    t1=$(date +%s.%N)
    PG_INST=$(bash "$PG" psql "$WORK/pg" -At -c "SELECT COUNT(*) FROM instances")
    PG_INST_LINE=$(awk -v a="$t0" -v b="$t1" -v n="$PG_INST" 'BEGIN { printf "added %d instance rows in %.1f s", n, b - a }')
    log "PostgreSQL: $PG_INST_LINE"
    start_medrelay ""
    bench "SQLite + instances" "$WORK/sqlite-inst.json" --only wl,st_doc,detail --min-n 3
    stop_medrelay
    start_medrelay "$PG_URL"
    bench "PostgreSQL + instances" "$WORK/pg-inst.json" --only wl,st_doc,detail --min-n 3
    MR_RSS=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$MR_PID/status" 2>/dev/null || echo "?")
    stop_medrelay
fi
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- summary
compare() { # $1 sqlite json, $2 pg json
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
a, b = (json.load(open(p))["results"] for p in sys.argv[1:3])
pg = {r["key"]: r for r in b}
print(f"   {'route':40s} {'n':>4s} | {'SQLite p50':>10s} {'p95':>7s} | {'PG p50':>7s} {'p95':>7s} | PG/SQLite p95 | PG p95<=50 | SQL anchor p95")
for r in a:
    p = pg.get(r["key"], {})
    if "api_p95" not in r or "api_p95" not in p:
        print(f"   {r['route']:40s} missing: {r.get('errors')} {p.get('errors')}")
        continue
    ok = "yes" if p["api_p95"] <= 50 else "NO"
    print(f"   {r['route']:40s} {min(r['n'], p['n']):4d} | {r['api_p50']:10.1f} {r['api_p95']:7.1f} | {p['api_p50']:7.1f} "
          f"{p['api_p95']:7.1f} | {p['api_p95'] / r['api_p95']:12.2f}x | {ok:>10s} | {r['sql_p95']:8.1f}")
EOF
}
echo
echo "================ index at scale ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), medrelay $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty'); load average $LOAD0 -> $LOAD1)"
echo "index: $SEED_LINE" | head -1
echo "PostgreSQL $(bash "$PG" psql "$WORK/pg" -At -c 'SHOW server_version') (shared_buffers 1GB, fsync on): copied by migrate-storage in $MIGRATE_S s, database $PG_SIZE"
echo "API p50/p95 in ms over HTTPS on loopback, N_REQ=$N_REQ per route, same requests on both; SQL anchor = the route's SQL on index.db (Python sqlite3)"
compare "$WORK/sqlite.json" "$WORK/pg.json"
if [ "$INST_ROWS" -gt 0 ]; then
    echo "with instance rows: SQLite $INST_LINE; PostgreSQL $PG_INST_LINE; gateway peak RSS on PostgreSQL $MR_RSS MB"
    compare "$WORK/sqlite-inst.json" "$WORK/pg-inst.json"
fi
