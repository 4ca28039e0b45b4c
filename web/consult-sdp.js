// SDP munging. One change is made to every SDP: every Opus payload type gets
// `useinbandfec=1;usedtx=1` in its fmtp line. (A second, `routeVia`, is a
// test hook only: see there.)
//
// Why: on a 1-5 % loss link Opus in-band FEC lets the receiver rebuild a lost
// 20 ms frame from the next packet (no retransmission round trip at 800 ms
// RTT), and DTX stops sending full-rate audio during silence, leaving more of
// a thin uplink for video. A sender's Opus encoder follows the fmtp of the
// *remote* description, so the page applies this to its own offers/answers
// (what it asks to receive) and to the server's pub answer (what configures
// its own encoder).

const OPUS_RTPMAP = /^a=rtpmap:(\d+) opus\/48000(\/\d+)?$/i;

const WANTED = [
  ['useinbandfec', '1'],
  ['usedtx', '1'],
];

/** Return `sdp` with FEC and DTX enabled on every Opus payload type. Idempotent. */
export function ensureOpusFec(sdp) {
  if (typeof sdp !== 'string' || !sdp) return sdp;
  const lines = sdp.split(/\r?\n/);
  // A well-formed SDP ends with CRLF, which leaves a trailing empty element.
  const trailing = lines.length && lines[lines.length - 1] === '' ? lines.pop() : null;

  const opusPts = new Set();
  for (const line of lines) {
    const m = OPUS_RTPMAP.exec(line);
    if (m) opusPts.add(m[1]);
  }
  if (opusPts.size === 0) return sdp;

  const withFmtp = new Set();
  const out = lines.map((line) => {
    const m = /^a=fmtp:(\d+) (.*)$/.exec(line);
    if (!m || !opusPts.has(m[1])) return line;
    withFmtp.add(m[1]);
    return `a=fmtp:${m[1]} ${mergeParams(m[2])}`;
  });

  // Payload types without an fmtp line get one right after their rtpmap.
  const final = [];
  for (const line of out) {
    final.push(line);
    const m = OPUS_RTPMAP.exec(line);
    if (m && !withFmtp.has(m[1])) final.push(`a=fmtp:${m[1]} ${mergeParams('')}`);
  }
  if (trailing !== null) final.push(trailing);
  return final.join('\r\n');
}

function mergeParams(paramString) {
  const params = [];
  for (const p of paramString.split(';')) {
    const t = p.trim();
    if (!t) continue;
    const eq = t.indexOf('=');
    params.push(eq < 0 ? [t, null] : [t.slice(0, eq).trim(), t.slice(eq + 1).trim()]);
  }
  for (const [key, value] of WANTED) {
    const existing = params.find(([k]) => k.toLowerCase() === key);
    if (existing) existing[1] = value;
    else params.push([key, value]);
  }
  return params.map(([k, v]) => (v === null ? k : `${k}=${v}`)).join(';');
}

/**
 * Test hook (`#via=host:port` in the page URL): send everything for the
 * server through `host:port` instead of the server's own candidates. The
 * integration tests put one viewer behind a rate-limited UDP link emulator
 * this way while the others reach the server directly; the emulator then
 * forwards to the real server, so media, ICE and DTLS are unchanged.
 * consult.js passes it on only when the server marks the page as a test
 * page (`[http] test_hooks`); a production page ignores it.
 */
let via = null;

export function setVia(hostPort) {
  const m = /^([0-9.]+):(\d{1,5})$/.exec(hostPort || '');
  via = m ? { host: m[1], port: m[2] } : null;
}

export function routeVia(sdp) {
  if (!via || typeof sdp !== 'string') return sdp;
  return sdp.replace(/^(a=candidate:\S+ \d+ udp \d+ )(\S+) (\d+)( typ host.*)$/gim, `$1${via.host} ${via.port}$4`);
}
