# shellcheck shell=bash disable=SC2034  # PY, BIN are for the sourcing script
# The prelude of the end-to-end benchmarks (sourced, not run):
#
#   . "$(dirname "${BASH_SOURCE[0]}")/support/common.sh" NAME
#
# cds to the repository (REPO), clears every MEDRELAY_* variable the caller
# may have exported (they would skew the run), defines log / die (prefixed
# with NAME), free_port and show_logs, runs the test setup (DCMTK, the venv,
# .cache/ct300, PostgreSQL and s3s-fs) and sets PY; `bench_build` makes the
# release binary and sets BIN.
BENCH_NAME="${1:?common.sh NAME}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO" || exit 1
unset MEDRELAY_CONFIG MEDRELAY_DATA_DIR MEDRELAY_CERT_DIR MEDRELAY_HTTP_LISTEN MEDRELAY_DICOM_LISTEN \
    MEDRELAY_DICOM_TLS_LISTEN MEDRELAY_AE_TITLE MEDRELAY_STABLE_AFTER_SECS MEDRELAY_MIN_FREE_BYTES \
    MEDRELAY_SFU_UDP_LISTEN MEDRELAY_WEB_DIR MEDRELAY_INDEX_URL MEDRELAY_STORAGE_URL MEDRELAY_METRICS_LISTEN

log() { echo "$BENCH_NAME: $*" >&2; }
die() { echo "$BENCH_NAME: ERROR: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# show_logs FILE...: the tail of each non-empty file, for a run that failed
show_logs() {
    local f
    for f in "$@"; do
        [ -s "$f" ] && { echo "---- $f (last 15 lines)" >&2; tail -n 15 "$f" >&2; }
    done
    return 0
}

now() { date +%s.%N; }
# orthanc_anchor: checks Debian's Orthanc and its PostgreSQL index plugin
# (the anchor of the storage and Q/R benchmarks) and sets ORTHANC and
# ORTHANC_PG_PLUGIN
orthanc_anchor() {
    ORTHANC=/usr/sbin/Orthanc
    [ -x "$ORTHANC" ] || die "no $ORTHANC (apt-get install orthanc orthanc-postgresql)"
    ORTHANC_PG_PLUGIN=""
    local f
    for f in /usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so /usr/lib/orthanc/libOrthancPostgreSQLIndex.so*; do
        [ -f "$f" ] && { ORTHANC_PG_PLUGIN="$f"; break; }
    done
    [ -n "$ORTHANC_PG_PLUGIN" ] || die "no libOrthancPostgreSQLIndex.so (apt-get install orthanc-postgresql)"
}
# bench_traps FUNC: FUNC runs once on exit; INT and TERM exit with 130 / 143
# so FUNC sees the status (it must reset the traps first: trap - EXIT INT TERM)
bench_traps() {
    # shellcheck disable=SC2064  # the function name is fixed now, on purpose
    trap "$1" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

bash tests/support/setup.sh >/dev/null
PY="$REPO/.cache/venv/bin/python"

bench_build() {
    log "cargo build --release"
    cargo build --release --quiet
    BIN="$REPO/target/release/medrelay"
}
