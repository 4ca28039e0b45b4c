// Link quality from getStats on both peer connections: RTT, inbound loss over
// the last interval, in/out bitrate; combined with the server's `link` state
// into a green/amber/red level.

export const STATS_EVERY_MS = 2000;

/** RTT in ms of the selected candidate pair, or null. */
export function rttFromReport(report) {
  if (!report) return null;
  let pairId = null;
  report.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  });
  let pair = pairId ? report.get(pairId) : null;
  if (!pair) {
    report.forEach((s) => {
      if (!pair && s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
    });
  }
  const rtt = pair?.currentRoundTripTime;
  return typeof rtt === 'number' ? Math.round(rtt * 1000) : null;
}

function totals(report, type) {
  const t = { packets: 0, lost: 0, bytes: 0 };
  if (!report) return t;
  report.forEach((s) => {
    if (s.type !== type) return;
    if (type === 'inbound-rtp') {
      t.packets += s.packetsReceived || 0;
      t.lost += s.packetsLost || 0;
      t.bytes += s.bytesReceived || 0;
    } else {
      t.packets += s.packetsSent || 0;
      t.bytes += s.bytesSent || 0;
    }
  });
  return t;
}

/** Loss the server reports for our uplink (RTCP receiver reports), in %. */
function uplinkLoss(report) {
  let worst = null;
  report?.forEach((s) => {
    if (s.type === 'remote-inbound-rtp' && typeof s.fractionLost === 'number') {
      worst = Math.max(worst ?? 0, s.fractionLost * 100);
    }
  });
  return worst;
}

export function levelOf({ rttMs, lossPct, serverState }) {
  if (serverState === 'audio_only' || (lossPct ?? 0) > 10 || (rttMs ?? 0) > 1200) return 'red';
  if (serverState === 'weak' || (lossPct ?? 0) > 3 || (rttMs ?? 0) > 500) return 'amber';
  return 'green';
}

/** Samples both connections periodically and reports a summary. */
export class LinkMonitor {
  /**
   * @param {{pcs(): {pub: RTCPeerConnection|null, sub: RTCPeerConnection|null}, serverLink(): object, onSample(summary): void}} hooks
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.prev = null;
    this.timer = null;
  }

  start() {
    this.stop();
    this.prev = null;
    this.timer = setInterval(() => this.sample().catch(() => {}), STATS_EVERY_MS);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  async sample() {
    const { pub, sub } = this.hooks.pcs();
    const [pr, sr] = await Promise.all([safeStats(pub), safeStats(sub)]);
    const now = performance.now();
    const inbound = totals(sr, 'inbound-rtp');
    const outbound = totals(pr, 'outbound-rtp');
    const rttMs = rttFromReport(pr) ?? rttFromReport(sr);

    let lossPct = null;
    let inKbps = null;
    let outKbps = null;
    const p = this.prev;
    // Deltas only make sense against a sample of the same connections.
    if (p && p.pub === pub && p.sub === sub) {
      const dt = (now - p.at) / 1000;
      const dRecv = Math.max(0, inbound.packets - p.inbound.packets);
      const dLost = Math.max(0, inbound.lost - p.inbound.lost);
      if (dRecv + dLost > 0) lossPct = (100 * dLost) / (dRecv + dLost);
      if (dt > 0) {
        inKbps = Math.max(0, (8 * (inbound.bytes - p.inbound.bytes)) / dt / 1000);
        outKbps = Math.max(0, (8 * (outbound.bytes - p.outbound.bytes)) / dt / 1000);
      }
    }
    this.prev = { at: now, pub, sub, inbound, outbound };

    const server = this.hooks.serverLink();
    const summary = {
      rttMs,
      lossPct: lossPct === null ? null : Math.round(lossPct * 10) / 10,
      uplinkLossPct: roundOrNull(uplinkLoss(pr)),
      inKbps: roundOrNull(inKbps),
      outKbps: roundOrNull(outKbps),
      serverState: server.state,
      bweKbps: server.bwe_kbps ?? null,
    };
    summary.level = levelOf(summary);
    this.hooks.onSample(summary);
  }
}

const roundOrNull = (v) => (v === null || v === undefined ? null : Math.round(v));

async function safeStats(pc) {
  if (!pc || pc.connectionState === 'closed') return null;
  try {
    return await pc.getStats();
  } catch {
    return null;
  }
}

/**
 * Per-stream stats for the test hook `mrTest.stats()`.
 * @param {RTCPeerConnection|null} pub
 * @param {RTCPeerConnection|null} sub
 * @param {(mid: string|null, trackId: string|undefined) => {participant, source}|null} inboundInfo
 * @param {(mid: string|null, trackId: string|undefined) => string|null} outboundSource
 */
export async function collectStreamStats(pub, sub, inboundInfo, outboundSource) {
  const [pr, sr] = await Promise.all([safeStats(pub), safeStats(sub)]);
  const inbound = [];
  sr?.forEach((s) => {
    if (s.type !== 'inbound-rtp') return;
    const info = inboundInfo(s.mid ?? null, s.trackIdentifier) || {};
    inbound.push({
      kind: s.kind,
      participant: info.participant ?? null,
      source: info.source ?? null,
      packetsReceived: s.packetsReceived ?? 0,
      framesDecoded: s.framesDecoded ?? 0,
      bytesReceived: s.bytesReceived ?? 0,
      nackCount: s.nackCount ?? 0,
      retransmittedPacketsReceived: s.retransmittedPacketsReceived ?? 0,
      packetsLost: s.packetsLost ?? 0,
      jitter: s.jitter ?? 0,
      frameHeight: s.frameHeight ?? null,
      freezeCount: s.freezeCount ?? 0,
      pliCount: s.pliCount ?? 0,
    });
  });
  const outbound = [];
  pr?.forEach((s) => {
    if (s.type !== 'outbound-rtp') return;
    outbound.push({
      kind: s.kind,
      source: outboundSource(s.mid ?? null, s.mediaSourceId ? pr.get(s.mediaSourceId)?.trackIdentifier : undefined),
      packetsSent: s.packetsSent ?? 0,
      framesEncoded: s.framesEncoded ?? 0,
      nackCount: s.nackCount ?? 0,
      retransmittedPacketsSent: s.retransmittedPacketsSent ?? 0,
      rid: s.rid ?? null,
      bytesSent: s.bytesSent ?? 0,
      frameHeight: s.frameHeight ?? null,
      pliCount: s.pliCount ?? 0,
    });
  });
  return { inbound, outbound, rttMs: rttFromReport(pr) ?? rttFromReport(sr) };
}
