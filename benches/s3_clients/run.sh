#!/usr/bin/env bash
# Compare S3 client crates for medrelay's blob backend (issue 18), by measurement.
#
#   bash benches/s3_clients/run.sh                 # all: baseline object_store aws rust_s3
#   CLIENTS="object_store aws" bash benches/s3_clients/run.sh
#   SIZE_MIB=200 PART_MIB=8 ...                     # the object (defaults shown)
#
# For each client: a scratch crate in $WORK/<client> holding only that client
# (plus tokio/bytes/futures, the "baseline" row), built clean in release into
# its own target dir and timed; its Cargo.lock compared with medrelay's (crates
# medrelay does not already build); then the binary is run against a fresh
# s3s-fs (.cache/s3s-fs, from tests/support/setup.sh) with an access key: wrong
# secret refused, 200 MiB multipart upload in 8 MiB parts (2 in flight), ten
# ranged 1 MiB reads checked byte for byte, peak RSS of the client process.
# Prints a markdown table (docs/storage.md keeps the last one).
#
# Compile times are wall-clock on whatever else the machine is doing; run it
# on a quiet machine for figures to compare with others. Everything runs under
# nice -n 19.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WORK="${WORK:-/tmp/medrelay-s3-clients}"
CLIENTS="${CLIENTS:-baseline object_store aws rust_s3}"
SIZE_MIB="${SIZE_MIB:-200}"
PART_MIB="${PART_MIB:-8}"
S3S="$REPO/.cache/s3s-fs/bin/s3s-fs"
mkdir -p "$WORK"

dep_line() { # feature name -> its (optional) dependency line in Cargo.toml
    local name
    case "$1" in
        object_store) name=object_store ;;
        aws) name=aws-sdk-s3 ;;
        rust_s3) name=rust-s3 ;;
        *) return 0 ;;
    esac
    grep "^$name = {" "$HERE/Cargo.toml"
}

start_s3s() { # $1 root dir -> sets S3S_PID, ENDPOINT
    for _ in $(seq 1200); do [ -x "$S3S" ] && break; sleep 1; done  # setup.sh may still be building it
    [ -x "$S3S" ] || { echo "run.sh: $S3S missing: bash tests/support/setup.sh" >&2; exit 1; }
    mkdir -p "$1/bench"
    RUST_LOG=s3s_fs=info "$S3S" --host 127.0.0.1 --port 0 \
        --access-key benchkey --secret-key benchsecret "$1" >"$1.log" 2>&1 &
    S3S_PID=$!
    for _ in $(seq 100); do
        ENDPOINT=$(grep -oE 'http://127\.0\.0\.1:[0-9]+' "$1.log" | head -1 || true)
        [ -n "$ENDPOINT" ] && return 0
        sleep 0.1
    done
    echo "run.sh: s3s-fs did not start: $(cat "$1.log")" >&2
    exit 1
}

ROWS=()
for c in $CLIENTS; do
    d="$WORK/$c"
    rm -rf "$d"
    mkdir -p "$d/src"
    cp "$HERE/src/main.rs" "$d/src/main.rs"
    feat=""
    [ "$c" = baseline ] || feat=$(grep "^$c = \[" "$HERE/Cargo.toml")
    cat >"$d/Cargo.toml" <<TOML
[package]
name = "s3-clients-bench"
version = "0.0.0"
edition = "2024"
publish = false
[workspace]
[features]
$feat
[dependencies]
tokio = { version = "1", features = ["rt-multi-thread", "macros", "io-util"] }
bytes = "1"
futures = "0.3"
$(dep_line "$c")
TOML
    fargs=()
    [ "$c" = baseline ] || fargs=(--features "$c")
    echo "run.sh: building $c (clean, release)" >&2
    (cd "$d" && nice -n 19 cargo generate-lockfile -q)
    t0=$(date +%s.%N)
    (cd "$d" && nice -n 19 cargo build -q --release "${fargs[@]}" --target-dir "$d/target")
    build_s=$(echo "$(date +%s.%N) - $t0" | bc)
    crates=$(grep -c '^name = ' "$d/Cargo.lock")
    new=$(comm -23 \
        <(awk '/^name = /{n=$3} /^version = /{print n" "$3}' "$d/Cargo.lock" | sort -u) \
        <(awk '/^name = /{n=$3} /^version = /{print n" "$3}' "$REPO/Cargo.lock" | sort -u) | wc -l)
    ver=$(awk -v want="$(dep_line "$c" | cut -d' ' -f1)" '/^name = /{n=$3; gsub(/"/,"",n)} /^version = /{if (n==want) {v=$3; gsub(/"/,"",v); print v}}' "$d/Cargo.lock" | head -1)
    res="(not run)"
    if [ "$c" != baseline ]; then
        root="$WORK/s3s-$c"
        rm -rf "$root" "$root.log"
        start_s3s "$root"
        res=$(nice -n 19 "$d/target/release/s3-clients-bench" "$ENDPOINT" bench benchkey benchsecret "$SIZE_MIB" "$PART_MIB" 2>&1 | tail -1) || true
        kill "$S3S_PID" 2>/dev/null || true
        wait "$S3S_PID" 2>/dev/null || true
        rm -rf "$root"
    fi
    echo "run.sh: $c ${ver:-} build ${build_s}s, $crates crates ($new not in medrelay's lock): $res" >&2
    ROWS+=("$c|${ver:--}|$build_s|$crates|$new|$res")
done

echo
echo "| client | version | clean release build (s) | crates in lock | not in medrelay's lock | wrong secret refused | upload ${SIZE_MIB} MiB (s) | MiB/s | 10 ranged 1 MiB reads (ms) | peak RSS (MiB) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for r in "${ROWS[@]}"; do
    IFS='|' read -r c ver b n new res <<<"$r"
    kv() { echo "$res" | grep -oE "$1=[^ ]+" | cut -d= -f2 || true; }
    if [[ "$res" == RESULT* ]]; then
        printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$c" "$ver" "$b" "$n" "$new" \
            "$(kv sigv4_checked)" "$(kv upload_s)" "$(kv upload_mib_s)" "$(kv ranged_10x1mib_ms)" "$(kv peak_rss_mib)"
    else
        printf '| %s | %s | %.0f | %s | %s | %s | | | | |\n' "$c" "$ver" "$b" "$n" "$new" "$res"
    fi
done
