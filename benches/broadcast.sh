#!/usr/bin/env bash
# Teaching-broadcast load benchmark: how many receive-only WebRTC viewers of a
# 1.5 Mbit/s simulcast lecture one gateway serves on this machine, and its
# forwarding cost in packets/s per core against the SRTP-protect floor
# measured in the same run (and LiveKit's published 35-60 k outbound
# packets/s per core on a 16-core machine, quoted, not measured here).
#
# One release gateway (embedded defaults, a temp data dir) and the load
# generator (`medrelay loadtest`: a synthetic presenter sending
# 150/500/1500 kbit/s VP8 layers at 24 fps with a keyframe every 4 s, plus
# Opus-sized audio; N viewers each with their own signaling WebSocket, ICE,
# DTLS and SRTP, reporting a 5 Mbit/s receive estimate so they take the top
# layer) on the same 2 cores. For each N the viewers join within 10 s,
# settle 5 s, and are measured for 20 s.
#
#   bash benches/broadcast.sh                 # N = 50 100 200 300 400 500
#   NS="100 300" SECS=30 bash benches/broadcast.sh
#
# Prints one line per N and a final verdict: the largest N at which every
# viewer got >= 99 % of its video packets.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=${NS:-"50 100 200 300 400 500"}
SECS=${SECS:-20}
cargo build --release --quiet
BIN=$PWD/target/release/medrelay
W=$(mktemp -d /tmp/medrelay-bcbench.XXXXXX)
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
free_udp() { python3 -c 'import socket;s=socket.socket(type=socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
HTTP=$(free_port); DICOM=$(free_port); SFU=$(free_udp)
cat >"$W/medrelay.toml" <<EOF
[sfu]
max_viewers_per_broadcast = 2000

[[clinic]]
id = "t01"
name = "Township 01"
ae_titles = ["T01_CT"]

[[hospital]]
id = "city"
name = "City Hospital"
serves = ["t01"]
EOF
common=(--config "$W/medrelay.toml" --data-dir "$W/data")
PW=bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$PW" | "$BIN" user add lecturer --role expert --hospital city --name "Prof. Bench" --password-stdin "${common[@]}" >/dev/null
echo "$PW" | "$BIN" user add township --role clinic --clinic t01 --password-stdin "${common[@]}" >/dev/null
RUST_LOG=${LOG:-warn,medrelay::app=info} "$BIN" serve "${common[@]}" --cert-dir "$W/certs" \
  --http-listen "127.0.0.1:$HTTP" --dicom-listen "127.0.0.1:$DICOM" --sfu-udp-listen "127.0.0.1:$SFU" \
  2>"$W/server.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "medrelay ready" "$W/server.log" 2>/dev/null && break
  sleep 0.2
done
grep -q "medrelay ready" "$W/server.log" || { cat "$W/server.log"; exit 1; }
echo "gateway pid $SERVER, logs and reports in $W"
best=0
for N in $NS; do
  MEDRELAY_PRESENTER_PASSWORD=$PW MEDRELAY_VIEWER_PASSWORD=$PW "$BIN" loadtest \
    --server "https://127.0.0.1:$HTTP" --ca "$W/certs/medrelay.crt" \
    --presenter lecturer --viewer township --viewers "$N" --join-secs 10 --settle-secs 5 --secs "$SECS" \
    --server-pid "$SERVER" --json "$W/n$N.json" >"$W/n$N.txt" 2>&1 || { cat "$W/n$N.txt"; exit 1; }
  if python3 - "$W/n$N.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["server"] or {}
pps, floor = s.get("packets_per_sec_per_core", 0), s.get("srtp_floor_pps_per_core", 0)
print(f'N={r["viewers"]:4d}: {r["viewers_at_99pct"]:4d} viewers >= 99 % (min {r["delivered_ratio"]["min"]:.4f}), '
      f'video p50 {r["video_kbps"]["p50"]:.0f} kbit/s, freezes {r["freezes"]}, '
      f'first frame p50/max {r["first_frame_ms"]["p50"]:.0f}/{r["first_frame_ms"]["max"]:.0f} ms, '
      f'server {s.get("cpu_cores", 0):.2f} cores {s.get("rss_mb", 0):.0f} MB, '
      f'{s.get("packets_per_sec", 0):.0f} pkt/s = {pps:.0f} pkt/s/core = {pps / max(floor, 1):.2f}x the SRTP floor ({floor:.0f}/core), '
      f'{pps / 35000:.2f}-{pps / 60000:.2f}x LiveKit 35-60k; '
      f'worst PLIs/layer/s {r["presenter"]["worst_plis_per_layer_second"]}, errors {r["errors"]}')
sys.exit(0 if r["viewers_at_99pct"] == r["viewers"] else 3)
EOF
  then best=$N; fi
done
echo "largest N with every viewer >= 99 % of packets: $best"
