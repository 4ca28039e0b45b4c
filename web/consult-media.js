// Local capture and the two peer connections of PROTOCOL.md:
//   pub — this browser offers; mic, camera, screen share and the `room` data channel;
//   sub — the server offers; the other participants' tracks.

import { ensureOpusFec, routeVia } from './consult-sdp.js';
import { log } from './consult-util.js';

// The server is ICE-lite and puts its single candidate in every SDP, so no
// STUN/TURN is needed; one bundled transport keeps it to one UDP flow.
const PC_CONFIG = { iceServers: [], bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' };

// 640x360@24 is plenty for a face and fits a few-Mbit/s 4G uplink with room
// for audio and a screen share.
export const CAMERA_CONSTRAINTS = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 24, max: 24 } };
// A lecture's presenter sends 720p, as three simulcast layers (below).
export const PRESENTER_CONSTRAINTS = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 24, max: 24 } };
const AUDIO_CONSTRAINTS = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

// Under congestion the browser's own allocator keeps audio first.
export const MIC_ENCODING = { priority: 'high', networkPriority: 'high' };
export const CAMERA_ENCODING = { maxBitrate: 500_000, maxFramerate: 24 };
// A broadcast presenter's camera as three simulcast layers, 180p/360p/720p
// (rids q/h/f, lowest first, as the server expects): the server gives each
// clinic the one its link carries, so a 1 Mbit/s township link still gets a
// clear 360p picture while the county hospital gets 720p. The lowest layer
// keeps 15 fps so even an audio-and-a-little-video link sees who speaks.
export const CAMERA_SIMULCAST = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000, maxFramerate: 15 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000, maxFramerate: 24 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000, maxFramerate: 24 },
];
// Medical images on a shared screen: sharpness matters far more than motion.
export const SCREEN_ENCODING = { maxBitrate: 1_200_000, maxFramerate: 8 };

// How long to wait for the server's pub answer (TCP carries it, so silence
// this long means something is wrong server-side).
const ANSWER_TIMEOUT_MS = 20000;
const MAX_OFFER_RETRIES = 2;

/* ------------------------------------------------------------------ */
/* Local camera and microphone                                         */
/* ------------------------------------------------------------------ */

export class LocalMedia {
  constructor({ wantAudio, wantVideo, camera = CAMERA_CONSTRAINTS }) {
    this.camera = camera;
    this.wantAudio = wantAudio;
    this.wantVideo = wantVideo;
    this.stream = new MediaStream();
    this.audioDeviceId = '';
    this.videoDeviceId = '';
    this.lastError = null;
  }

  get audioTrack() {
    return this.stream.getAudioTracks()[0] || null;
  }

  get videoTrack() {
    return this.stream.getVideoTracks()[0] || null;
  }

  constraintsFor(kind) {
    if (kind === 'audio') {
      return this.audioDeviceId ? { ...AUDIO_CONSTRAINTS, deviceId: { exact: this.audioDeviceId } } : AUDIO_CONSTRAINTS;
    }
    return this.videoDeviceId
      ? { ...this.camera, deviceId: { exact: this.videoDeviceId } }
      : { ...this.camera, facingMode: 'user' };
  }

  /**
   * Acquire whatever was asked for. Each kind is tried on its own when the
   * combined request fails, so a missing or busy camera does not also cost
   * the doctor the microphone.
   */
  async acquire() {
    this.lastError = null;
    const kinds = [];
    if (this.wantAudio && !this.audioTrack) kinds.push('audio');
    if (this.wantVideo && !this.videoTrack) kinds.push('video');
    if (!kinds.length || !navigator.mediaDevices?.getUserMedia) return;
    try {
      const s = await navigator.mediaDevices.getUserMedia(Object.fromEntries(kinds.map((k) => [k, this.constraintsFor(k)])));
      s.getTracks().forEach((t) => this.adopt(t));
      return;
    } catch (err) {
      if (kinds.length === 1) {
        this.lastError = err;
        return;
      }
    }
    for (const kind of kinds) {
      try {
        const s = await navigator.mediaDevices.getUserMedia({ [kind]: this.constraintsFor(kind) });
        s.getTracks().forEach((t) => this.adopt(t));
      } catch (err) {
        this.lastError = err;
      }
    }
  }

  adopt(track) {
    if (track.kind === 'video') track.contentHint = 'motion';
    const id = track.getSettings?.().deviceId;
    if (id) {
      if (track.kind === 'audio') this.audioDeviceId = id;
      else this.videoDeviceId = id;
    }
    this.stream.addTrack(track);
  }

  /**
   * Switch one kind to another device; returns the new track (or null). The
   * old track is stopped first: several phones cannot open two cameras at once.
   */
  async switchDevice(kind, deviceId) {
    const old = kind === 'audio' ? this.audioTrack : this.videoTrack;
    const enabled = old ? old.enabled : true;
    if (kind === 'audio') this.audioDeviceId = deviceId;
    else this.videoDeviceId = deviceId;
    if (old) {
      old.stop();
      this.stream.removeTrack(old);
    }
    try {
      const s = await navigator.mediaDevices.getUserMedia({ [kind]: this.constraintsFor(kind) });
      const track = s.getTracks()[0];
      track.enabled = enabled;
      this.adopt(track);
      return track;
    } catch (err) {
      this.lastError = err;
      return null;
    }
  }

  async listDevices() {
    const list = (await navigator.mediaDevices?.enumerateDevices?.()) || [];
    return {
      audio: list.filter((d) => d.kind === 'audioinput'),
      video: list.filter((d) => d.kind === 'videoinput'),
    };
  }

  stop() {
    for (const t of this.stream.getTracks()) {
      t.stop();
      this.stream.removeTrack(t);
    }
  }
}

/* ------------------------------------------------------------------ */
/* pub: what this browser sends                                        */
/* ------------------------------------------------------------------ */

export class PubConnection {
  /**
   * @param {{send(msg): boolean, onNegotiated(): void, onRefused(code): void, onError(key): void}} hooks (onError: a message key)
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.pc = new RTCPeerConnection(PC_CONFIG);
    /** transceiver -> "mic" | "camera" | "screen" */
    this.sources = new Map();
    this.busy = false; // an offer is in flight
    this.again = false; // something changed while it was
    this.timer = null;
    this.retries = 0;
    this.closed = false;
    this.negotiations = 0;
    // The protocol wants the channel to exist before the first offer so the
    // first SDP already carries the SCTP m-line.
    this.dc = this.pc.createDataChannel('room', { ordered: true });
  }

  /**
   * Start sending `track` as `source`. Reuses an idle m-line of the same source.
   * `encoding`: one encoding's caps, or an array of them for simulcast.
   */
  async addSource(source, track, stream, encoding) {
    const layers = Array.isArray(encoding) ? encoding : encoding ? [encoding] : null;
    for (const [t, s] of this.sources) {
      if (s === source && !t.sender.track && t.direction === 'inactive' && t.currentDirection !== 'stopped') {
        await t.sender.replaceTrack(track);
        t.sender.setStreams?.(stream);
        t.direction = 'sendonly';
        await applyEncoding(t.sender, layers);
        return t;
      }
    }
    const t = this.pc.addTransceiver(track, {
      direction: 'sendonly',
      streams: [stream],
      sendEncodings: layers ? layers.map((e) => ({ ...e })) : undefined,
    });
    if (layers && layers.length > 1) {
      // Under CPU load, lower the frame rate rather than the resolution:
      // a smaller input makes the browser drop simulcast layers altogether.
      await applyEncoding(t.sender, null, { degradationPreference: 'maintain-resolution' });
    }
    this.sources.set(t, source);
    return t;
  }

  /**
   * Stop sending `source`: its m-line goes inactive and is reused by the next
   * share of the same source, so m-lines do not pile up. (Not transceiver.stop():
   * Chromium re-associates a stopped, never-negotiated transceiver with the
   * next new m-line, which then carries no track.)
   */
  removeSource(source) {
    if (this.closed) return;
    for (const [t, s] of this.sources) {
      if (s === source && t.sender.track) this.pc.removeTrack(t.sender);
    }
  }

  /** Swap the track of a source without renegotiating (device change). */
  async replaceTrack(source, track) {
    for (const [t, s] of this.sources) {
      if (s === source && t.sender.track) await t.sender.replaceTrack(track);
    }
  }

  /** Whether `source` currently has a track on a transceiver. */
  hasSource(source) {
    for (const [t, s] of this.sources) if (s === source && t.sender.track) return true;
    return false;
  }

  /** Source of an outbound stream, by mid or (older browsers) by track id; for stats. */
  sourceOf(mid, trackId) {
    for (const [t, s] of this.sources) {
      if ((mid !== null && t.mid === mid) || (trackId && t.sender.track?.id === trackId)) return s;
    }
    return null;
  }

  /** mid -> source for every m-line that is currently sending. */
  tracksMap() {
    const tracks = {};
    for (const [t, source] of this.sources) {
      const sending = t.direction === 'sendonly' || t.direction === 'sendrecv';
      if (t.mid !== null && t.sender.track && sending) tracks[t.mid] = source;
    }
    return tracks;
  }

  /**
   * Ask for a (re)negotiation. Only one offer is ever in flight: changes made
   * meanwhile are folded into one follow-up offer once the answer is in.
   */
  negotiate() {
    if (this.closed) return;
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    this.again = false;
    this.sendOffer().catch((err) => {
      log('pub offer failed', err?.name);
      this.hooks.onError('consult.media.offer_failed');
      this.release();
    });
  }

  async sendOffer() {
    const pc = this.pc;
    const offer = await pc.createOffer();
    try {
      await pc.setLocalDescription({ type: 'offer', sdp: ensureOpusFec(offer.sdp) });
    } catch {
      // A browser that refuses the munged SDP still gets a working call.
      await pc.setLocalDescription(offer);
    }
    if (this.closed) return;
    const sent = this.hooks.send({ type: 'offer', pc: 'pub', sdp: pc.localDescription.sdp, tracks: this.tracksMap() });
    if (!sent) throw new Error('signaling closed');
    this.timer = setTimeout(() => this.onTimeout(), ANSWER_TIMEOUT_MS);
  }

  async onAnswer(sdp) {
    if (this.closed) return;
    if (this.pc.signalingState !== 'have-local-offer') {
      log('pub answer without an offer', this.pc.signalingState);
      return;
    }
    clearTimeout(this.timer);
    try {
      await this.pc.setRemoteDescription({ type: 'answer', sdp: routeVia(ensureOpusFec(sdp)) });
      this.retries = 0;
      this.negotiations += 1;
      this.hooks.onNegotiated();
    } catch (err) {
      log('pub answer rejected by the browser', err?.name);
      await this.rollback();
      this.hooks.onError('consult.media.answer_failed');
    }
    this.release();
  }

  /** The server refused the outstanding offer (`bad_sdp`, `too_many_tracks`). */
  async onRefused(code) {
    if (!this.busy || this.pc.signalingState !== 'have-local-offer') return false;
    clearTimeout(this.timer);
    await this.rollback();
    this.hooks.onRefused(code);
    this.release();
    return true;
  }

  async onTimeout() {
    if (this.closed || this.pc.signalingState !== 'have-local-offer') return;
    log('pub answer timed out');
    await this.rollback();
    if (this.retries < MAX_OFFER_RETRIES) {
      this.retries += 1;
      this.again = true;
    } else {
      this.hooks.onError('consult.media.no_answer');
    }
    this.release();
  }

  async rollback() {
    try {
      await this.pc.setLocalDescription({ type: 'rollback' });
    } catch {
      /* nothing to roll back */
    }
  }

  release() {
    this.busy = false;
    if (this.again && !this.closed) this.negotiate();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    try {
      this.dc.close();
    } catch {
      /* ignore */
    }
    this.pc.close();
  }
}

/**
 * Best effort: caps set on a reused sender (addTransceiver takes them
 * directly), per encoding (by position; a rid cannot be changed), and
 * sender-wide parameters.
 */
async function applyEncoding(sender, layers, extra = null) {
  if (!layers && !extra) return;
  try {
    const params = sender.getParameters();
    if (layers) {
      if (!params.encodings || !params.encodings.length) return;
      layers.forEach((e, i) => {
        if (params.encodings[i]) {
          const { rid: _rid, ...caps } = e;
          Object.assign(params.encodings[i], caps);
        }
      });
    }
    if (extra) Object.assign(params, extra);
    await sender.setParameters(params);
  } catch {
    /* older browsers: the server's bandwidth estimate still applies */
  }
}

/* ------------------------------------------------------------------ */
/* sub: what the others send                                          */
/* ------------------------------------------------------------------ */

export class SubConnection {
  /**
   * @param {{send(msg): boolean, onTrack(info), onTracksSettled(list), onError(key)}} hooks (onError: a message key)
   *   onTrack({mid, participant, source, kind, track}) on each ontrack;
   *   onTracksSettled(list) after each answer with every track now received.
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.pc = new RTCPeerConnection(PC_CONFIG);
    /** mid -> {participant, source, kind}, from the last sub offer */
    this.tracks = {};
    this.chain = Promise.resolve();
    this.closed = false;
    this.pc.ontrack = (ev) => {
      const mid = ev.transceiver?.mid;
      const info = mid != null ? this.tracks[mid] : null;
      if (info) this.hooks.onTrack({ mid, ...info, track: ev.track });
    };
  }

  /** Server offers are answered strictly one after another. */
  onOffer(msg) {
    this.chain = this.chain
      .then(() => this.answer(msg))
      .catch((err) => {
        log('sub negotiation failed', err?.name);
        this.hooks.onError('consult.media.receive_failed');
      });
  }

  async answer(msg) {
    if (this.closed) return;
    // Set before setRemoteDescription: ontrack fires during it and looks mids up here.
    this.tracks = msg.tracks && typeof msg.tracks === 'object' ? msg.tracks : {};
    await this.pc.setRemoteDescription({ type: 'offer', sdp: routeVia(msg.sdp) });
    const answer = await this.pc.createAnswer();
    try {
      await this.pc.setLocalDescription({ type: 'answer', sdp: ensureOpusFec(answer.sdp) });
    } catch {
      await this.pc.setLocalDescription(answer);
    }
    if (this.closed) return;
    this.hooks.send({ type: 'answer', pc: 'sub', sdp: this.pc.localDescription.sdp });
    this.hooks.onTracksSettled(this.receiving());
  }

  /** Every transceiver that is negotiated to receive and is named in `tracks`. */
  receiving() {
    const list = [];
    for (const t of this.pc.getTransceivers()) {
      const dir = t.currentDirection;
      if (t.mid === null || !(dir === 'recvonly' || dir === 'sendrecv')) continue;
      const info = this.tracks[t.mid];
      if (info && info.kind === t.receiver.track.kind) list.push({ mid: t.mid, ...info, track: t.receiver.track });
    }
    return list;
  }

  /** mid of the transceiver that receives `track`, for stats mapping. */
  midOfTrackId(trackId) {
    for (const t of this.pc.getTransceivers()) if (t.receiver.track.id === trackId) return t.mid;
    return null;
  }

  close() {
    this.closed = true;
    this.pc.close();
  }
}

/** Add a trickled ICE candidate from the server (it normally has none to send). */
export async function addRemoteCandidate(pc, candidate) {
  if (!pc || !candidate) return;
  try {
    const routed =
      typeof candidate.candidate === 'string'
        ? { ...candidate, candidate: routeVia(`a=${candidate.candidate}`).slice(2) }
        : candidate;
    await pc.addIceCandidate(routed);
  } catch {
    log('remote candidate rejected');
  }
}
