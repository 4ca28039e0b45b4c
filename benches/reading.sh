#!/usr/bin/env bash
# End-to-end reading benchmark (issue: reading workflow). One run, one release
# build, one medrelay (HTTPS on loopback, self-signed, not verified):
#
#   1. Worklist and study-list API with STUDIES (default 100 000) studies in
#      the index (goal p95 <= 50 ms). The server creates the schema, is
#      stopped, and the index is seeded directly with Python's sqlite3 in one
#      transaction (20 clinics t01..t20 of different sizes, CT/MR/CR/DX/US with
#      body parts, dates over 2 years, Pinyin-like names, ~1 patient per 3
#      studies, series rows, signed reports; worklist ~5 % new, 1 % claimed,
#      the rest reported/delivered, a few returned/cancelled; priorities 2 %
#      STAT, 10 % urgent); no instance rows. Then per route N_REQ (default 200)
#      sequential requests on one keep-alive connection per user (an expert of
#      hospital "city", which serves every clinic, and a clinic doctor of t01),
#      a route being cut after MAX_ROUTE_S s (default 25) once it has 20
#      samples: p50/p95/p99.
#      Anchor, side by side (after every request): the same SQL run directly
#      on index.db with Python's sqlite3 -> API/SQL ratio of the p95s.
#      Then INST_ROWS (default 300 000) instance rows are added to the newest
#      studies (a small part of what such an archive holds) and three routes
#      are measured again briefly: how the study queries scale with them.
#   2. Viewer time to first image (goal <= 2 s for a CT series) for the
#      300-slice CT (.cache/ct300), pushed with storescu, previews rendered,
#      headless Chromium via chromedriver, fresh profile and cold cache each
#      time, VIEW_RUNS (default 3) runs of: through tests/support/tcp_impair.py
#      at DELAY_MS (150) one way + RATE_KBIT (2000) kbit/s each way (300 ms
#      RTT, 2 Mbit/s, TCP handshake and slow start modelled) with a new
#      connection (link-cold) and with the login's connection reused
#      (link-warm), and on plain loopback.
#      Anchor on the same link: fetching the first slice's DICOM file
#      (/api/instances/{sop}/file) on a fresh HTTPS connection.
#
#   bash benches/reading.sh
#
# Knobs: STUDIES, N_REQ, MAX_ROUTE_S, INST_ROWS (0 = skip), VIEW_RUNS, DELAY_MS,
# RATE_KBIT. Builds or tests running beside make every number noisier; the load
# average is printed with the results. Benchmarks, not tests: nothing asserts
# on time.
set -euo pipefail
STUDIES="${STUDIES:-100000}"
N_REQ="${N_REQ:-200}"
MAX_ROUTE_S="${MAX_ROUTE_S:-25}"
INST_ROWS="${INST_ROWS:-300000}"
VIEW_RUNS="${VIEW_RUNS:-3}"
DELAY_MS="${DELAY_MS:-150}"
RATE_KBIT="${RATE_KBIT:-2000}"
N=300
export TCP_NODELAY=1
# shellcheck source=support/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/support/common.sh" reading.sh   # also dcmtk, chromium + chromedriver, venv, .cache/ct300
API="$REPO/benches/reading_api.py"
VIEWER="$REPO/benches/reading_viewer.py"
IMPAIR="$REPO/tests/support/tcp_impair.py"
CT="$REPO/.cache/ct300"
[ "$(find "$CT" -maxdepth 1 -name '*.dcm' | wc -l)" = "$N" ] || die "$CT does not hold $N files"
bench_build

# ---------------------------------------------------------------- processes, cleanup
PIDS=()
WORK="$(mktemp -d /tmp/medrelay-reading.XXXXXX)"
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ "$rc" != 0 ] && show_logs "$WORK"/*.log "$WORK"/*.err
    rm -rf "$WORK"
    exit "$rc"
}
bench_traps cleanup

forget() { local keep=() p; for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; PIDS=("${keep[@]}"); }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; forget "$1"; }
run() { # a helper in the background, so that a TERM to this script reaches the trap at once
    "$@" &
    local p=$!
    PIDS+=("$p")
    local rc=0
    wait "$p" || rc=$?
    forget "$p"
    return $rc
}

CFG="$WORK/medrelay.toml"
DATA="$WORK/data"
start_medrelay() { # -> MR_PID MR_HTTP MR_DICOM
    MR_HTTP=$(free_port); MR_DICOM=$(free_port); local udp; udp=$(free_port)
    : >"$WORK/medrelay.log"
    MEDRELAY_WEB_DIR="$REPO/web" "$BIN" serve --config "$CFG" --data-dir "$DATA" --cert-dir "$WORK/certs" \
        --http-listen "127.0.0.1:$MR_HTTP" --dicom-listen "127.0.0.1:$MR_DICOM" --sfu-udp-listen "127.0.0.1:$udp" \
        --stable-after-secs 1 --min-free-bytes 0 >>"$WORK/medrelay.log" 2>&1 &
    MR_PID=$!
    PIDS+=("$MR_PID")
    for _ in $(seq 1 300); do
        grep -q "medrelay ready" "$WORK/medrelay.log" && return 0
        kill -0 "$MR_PID" 2>/dev/null || die "medrelay exited (see its log)"
        sleep 0.1
    done
    die "medrelay not ready after 30 s"
}

# ---------------------------------------------------------------- setup
MR_BENCH_PASSWORD="bench-$("$PY" -c 'import secrets; print(secrets.token_hex(8))')"
export MR_BENCH_PASSWORD
"$PY" "$API" config "$CFG"
# accounts first (with none, the first start would make its own admin), then one
# start and stop of the server: the schema and its migrations, as in production
for u in "admin --role admin" "expert1 --role expert --hospital city --name Expert-1" "doc01 --role clinic --clinic t01"; do
    # shellcheck disable=SC2086
    printf '%s\n' "$MR_BENCH_PASSWORD" | "$BIN" user add --config "$CFG" --data-dir "$DATA" $u --password-stdin >/dev/null
done
log "medrelay: create the schema"
start_medrelay
stop "$MR_PID"
log "seeding $STUDIES studies into index.db (server stopped)"
SEED_LINE=$("$PY" "$API" seed "$DATA/index.db" --studies "$STUDIES" --expert expert1)
echo "$SEED_LINE" >&2
start_medrelay
BASE="https://127.0.0.1:$MR_HTTP"

# ================================================================ 1. API
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
log "1/2 API: $N_REQ requests per route (cut after $MAX_ROUTE_S s with >= 20), each followed by its SQL on index.db"
run "$PY" "$API" bench --base "$BASE" --db "$DATA/index.db" --expert expert1 --clinic-user doc01 \
    --n "$N_REQ" --warmup 10 --max-route-s "$MAX_ROUTE_S" --json "$WORK/api.json" >"$WORK/api.txt"
INST_TXT=""
if [ "$INST_ROWS" -gt 0 ]; then
    log "1/2 API with $INST_ROWS instance rows (preview ok) on the newest studies, three routes, briefly"
    INST_LINE=$("$PY" "$API" seed-instances "$DATA/index.db" --rows "$INST_ROWS")
    echo "$INST_LINE" >&2
    run "$PY" "$API" bench --base "$BASE" --db "$DATA/index.db" --expert expert1 --clinic-user doc01 \
        --only wl,st_doc,detail --n 30 --warmup 1 --max-route-s 20 --min-n 3 --json "$WORK/api-inst.json" >"$WORK/api-inst.txt"
    "$PY" "$API" unseed-instances "$DATA/index.db" >&2
    INST_TXT="$WORK/api-inst.txt"
fi

# ================================================================ 2. viewer
log "2/2 viewer: storescu $N slices (T01_CT), waiting for the previews"
t0=$(date +%s.%N)
storescu -aet T01_CT -aec MEDRELAY 127.0.0.1 "$MR_DICOM" +sd "$CT" >"$WORK/storescu.log" 2>&1 \
    || die "storescu failed: $(tail -5 "$WORK/storescu.log")"
t1=$(date +%s.%N)
PUSH_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
run "$PY" "$VIEWER" wait-previews --base "$BASE" --user expert1 --n "$N" --timeout 300 >"$WORK/wait.txt"
WAIT_LINE=$(cat "$WORK/wait.txt")
log "$WAIT_LINE"
: >"$WORK/link.out"
"$PY" "$IMPAIR" --listen 127.0.0.1:0 --to "127.0.0.1:$MR_HTTP" --delay-ms "$DELAY_MS" --rate-kbit "$RATE_KBIT" \
    --stats-file "$WORK/link.json" >"$WORK/link.out" 2>"$WORK/link.err" &
LINK_PID=$!
PIDS+=("$LINK_PID")
for _ in $(seq 1 100); do grep -q '^ready' "$WORK/link.out" && break; sleep 0.1; done
LINK_PORT=$(awk '/^ready/ {print $2}' "$WORK/link.out")
[ -n "$LINK_PORT" ] || die "tcp_impair.py did not start"
log "link: 127.0.0.1:$LINK_PORT -> :$MR_HTTP, $DELAY_MS ms one way, $RATE_KBIT kbit/s each way"
mkdir -p "$WORK/browser"
run "$PY" "$VIEWER" measure --direct "$BASE" --link "https://127.0.0.1:$LINK_PORT" --user expert1 --n "$N" \
    --runs "$VIEW_RUNS" --tmp "$WORK/browser" --json "$WORK/viewer.json" >"$WORK/viewer.txt"
stop "$LINK_PID"
LINK_STATS=$("$PY" - "$WORK/link.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
up, down = d["up"], d["down"]
print(f"{d['connections']} connections, {up['bytes'] / 1e6:.2f} MB up, {down['bytes'] / 1e6:.1f} MB down; emulator lateness "
      f"max {up['max_late_ms']} ms up / {down['max_late_ms']} ms down, {up['late_over_5ms'] + down['late_over_5ms']} writes > 5 ms late")
EOF
)
MR_RSS=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$MR_PID/status" 2>/dev/null || echo "?")
stop "$MR_PID"
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# ================================================================ summary
echo
echo "================ reading benchmark ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), medrelay $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty'); load average $LOAD0 -> $LOAD1)"
echo "index: $SEED_LINE" | head -1
echo "$SEED_LINE" | tail -n +2 | sed 's/^/      /'
echo "1. reading API, p95 goal <= 50 ms; anchor = the same SQL on index.db from Python's sqlite3, after each request:"
cat "$WORK/api.txt"
if [ -n "$INST_TXT" ]; then
    echo "   with instance rows: $INST_LINE"
    cat "$INST_TXT"
    echo "   (the expert's study lists are not measured again here: they evaluate previews_ready for every matching row)"
fi
echo "2. viewer time to first image (performance.now() when drawn; navigation start = 0), $VIEW_RUNS runs each,"
echo "   fresh profile + cleared cache, 300-slice CT 512x512 (storescu $PUSH_S s; $WAIT_LINE)"
echo "   link = tcp_impair.py, $DELAY_MS ms one way + $RATE_KBIT kbit/s each way, TCP handshake + slow start (initcwnd 10) modelled; goal <= 2000 ms"
echo "   full-fidelity = when hook.fullLoaded first counted (\"not asked\": at fit the viewer keeps the preview, which is native size for 512x512)"
cat "$WORK/viewer.txt"
echo "   link: $LINK_STATS; medrelay peak RSS $MR_RSS MB"
