#!/usr/bin/env bash
# Garage (a production, distributed S3-compatible object store: what an
# alliance might run) as a single node for the storage benchmarks of issue 18.
# Not used by the tests (they use s3s-fs, tests/support/s3.rs): Garage takes
# ~29 min to build on the 2-core machine, so it is built on first use only.
#
#   bash benches/support/garage.sh build          # cargo install garage into .cache/garage (once)
#   bash benches/support/garage.sh start DIR      # config + server + layout + bucket + key in DIR
#   . DIR/env                                     # GARAGE_ENDPOINT, AWS_ACCESS_KEY_ID,
#                                                 # AWS_SECRET_ACCESS_KEY, MEDRELAY_STORAGE_URL
#   bash benches/support/garage.sh stop DIR
#
# DIR keeps metadata (LMDB), data blocks, the config, garage.log and pid.
# Ports are free ones picked at start (S3 API, RPC, admin), written to DIR/env.
# data_fsync and metadata_fsync are on (the benchmark compares durable
# stores); GARAGE_FSYNC=0 gives Garage's shipped defaults (both off: a real
# cluster relies on its three replicas instead).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
GARAGE_VERSION="${GARAGE_VERSION:-2.5.0}"
ROOT="$REPO/.cache/garage"
GARAGE="$ROOT/bin/garage"
BUCKET="${BUCKET:-medrelay}"
REGION="${REGION:-us-east-1}"
case "${GARAGE_FSYNC:-1}" in 0) FSYNC=false ;; *) FSYNC=true ;; esac

die() { echo "garage.sh: $*" >&2; exit 1; }

build() {
    if [ -x "$GARAGE" ] && "$GARAGE" --version 2>/dev/null | grep -q "v\?$GARAGE_VERSION"; then return 0; fi
    echo "garage.sh: building garage $GARAGE_VERSION into $ROOT (cargo install --locked; ~29 min on 2 cores, once)" >&2
    nice -n 19 cargo install -q garage --version "$GARAGE_VERSION" --locked --root "$ROOT" </dev/null
    [ -x "$GARAGE" ] || die "garage not built"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {
    local dir="$1"
    build
    mkdir -p "$dir/meta" "$dir/data"
    dir="$(cd "$dir" && pwd)"
    local s3_port rpc_port admin_port
    s3_port=$(free_port); rpc_port=$(free_port); admin_port=$(free_port)
    cat >"$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
metadata_fsync = $FSYNC
data_fsync = $FSYNC
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
admin_token = "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
TOML
    chmod 600 "$dir/garage.toml"
    local g=("$GARAGE" -c "$dir/garage.toml")
    RUST_LOG=garage=info "${g[@]}" server >"$dir/garage.log" 2>&1 &
    echo $! >"$dir/pid"
    local node=""
    for _ in $(seq 100); do
        node=$("${g[@]}" node id -q 2>/dev/null | cut -d@ -f1) && [ -n "$node" ] && break
        kill -0 "$(cat "$dir/pid")" 2>/dev/null || die "garage exited: $(tail -20 "$dir/garage.log")"
        sleep 0.2
    done
    [ -n "$node" ] || die "garage did not answer: $(tail -20 "$dir/garage.log")"
    # `node id` reads the key from disk; the layout commands need the RPC
    # port, which opens a moment later.
    local up=""
    for _ in $(seq 100); do
        "${g[@]}" status >/dev/null 2>&1 && { up=1; break; }
        sleep 0.2
    done
    [ -n "$up" ] || die "garage RPC did not come up: $(tail -20 "$dir/garage.log")"
    "${g[@]}" layout assign -z dc1 -c 10G "$node" >/dev/null
    "${g[@]}" layout apply --version 1 >/dev/null
    "${g[@]}" bucket create "$BUCKET" >/dev/null
    local out key secret
    out=$("${g[@]}" key create medrelay-bench)
    key=$(echo "$out" | grep -E 'Key ID' | awk '{print $NF}')
    secret=$(echo "$out" | grep -E 'Secret key' | awk '{print $NF}')
    [ -n "$key" ] && [ -n "$secret" ] || die "could not read the key from: $out"
    "${g[@]}" bucket allow --read --write --owner "$BUCKET" --key "$key" >/dev/null
    cat >"$dir/env" <<ENV
GARAGE_ENDPOINT=http://127.0.0.1:$s3_port
AWS_ACCESS_KEY_ID=$key
AWS_SECRET_ACCESS_KEY=$secret
AWS_REGION=$REGION
MEDRELAY_STORAGE_URL='s3://$BUCKET/instances?endpoint=http://127.0.0.1:$s3_port&region=$REGION'
export GARAGE_ENDPOINT AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION MEDRELAY_STORAGE_URL
ENV
    chmod 600 "$dir/env"
    echo "garage.sh: garage running (pid $(cat "$dir/pid")), S3 at http://127.0.0.1:$s3_port, bucket $BUCKET; . $dir/env" >&2
}

stop() {
    local dir="$1"
    [ -f "$dir/pid" ] || return 0
    local pid; pid=$(cat "$dir/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/pid"
}

case "${1:-}" in
    build) build ;;
    start) [ -n "${2:-}" ] || die "usage: garage.sh start DIR"; start "$2" ;;
    stop) [ -n "${2:-}" ] || die "usage: garage.sh stop DIR"; stop "$2" ;;
    *) die "usage: garage.sh build | start DIR | stop DIR" ;;
esac
