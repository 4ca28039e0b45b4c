// Live consultation page: pre-join preview, signaling (web/PROTOCOL.md),
// the pub/sub peer connections, controls, chat, the shared study viewer,
// the link indicator and the `window.mrTest` hooks used by the integration
// tests. Plain ES modules, no build step, nothing loaded from elsewhere.
//
// PHI rule: nothing here logs names, chat text, study UIDs or the token;
// `log()` only ever receives event names and codes.

import { ChatPanel, chunkChatText } from './consult-chat.js';
import { FloorPanel } from './consult-floor.js';
import { ICONS } from './consult-icons.js';
import {
  addRemoteCandidate,
  CAMERA_CONSTRAINTS,
  CAMERA_ENCODING,
  CAMERA_SIMULCAST,
  LocalMedia,
  PRESENTER_CONSTRAINTS,
  MIC_ENCODING,
  PubConnection,
  SCREEN_ENCODING,
  SubConnection,
} from './consult-media.js';
import { setVia } from './consult-sdp.js';
import { FATAL_CODES, Signal, TOO_SLOW_CLOSE } from './consult-signal.js';
import { collectStreamStats, LinkMonitor, levelOf } from './consult-stats.js';
import { Tiles } from './consult-tiles.js';
import {
  el,
  flagOn,
  isFiniteNumber,
  isValidUid,
  log,
  parseFragment,
  pushBounded,
  setData,
  setMsg,
  setMsgAttr,
  setRich,
  throttle,
  utf8Length,
} from './consult-util.js';
import { StudyViewer } from './consult-viewer.js';
import { fmtNumber, has as hasMessage, onLang, t } from './i18n.js';

const MAX_RECONNECTS = 5;
const VIEW_MIN_INTERVAL_MS = 200; // at most ~5 `view` messages per second
// After the channel opens the server sends the room's latest view; only if
// none arrives within this grace does a study from our own URL become the room's.
const INITIAL_VIEW_GRACE_MS = 1500;
const ROOM_MSG_MAX_BYTES = 4096;
const DC_HIGH_WATER = 256 * 1024; // skip views/points while this much is queued
const OUTBOX_MAX = 100;

/**
 * The message key for a signaling error code (web/PROTOCOL.md): the
 * catalogue's error.sig.<code>, else a generic one. The server's English
 * `message` is for logs and tests, never shown.
 */
function sigKey(code) {
  const key = `error.sig.${code}`;
  return hasMessage(key) ? key : 'consult.sig.unknown';
}

/* ------------------------------------------------------------------ */
/* State                                                                */
/* ------------------------------------------------------------------ */

const frag = parseFragment(location.hash);
// Test hooks (`#via=` sends media to another host, `#autojoin=1` starts
// camera and microphone without a click) work only on a test server, which
// marks the page (`[http] test_hooks`): a link must not do either.
const TEST_HOOKS = document.querySelector('meta[name="mr-test-hooks"]')?.content === '1';
const opts = {
  token: frag.token || '',
  autojoin: TEST_HOOKS && flagOn(frag, 'autojoin'),
  nocam: flagOn(frag, 'nocam'),
  nomic: flagOn(frag, 'nomic'),
  study: frag.study || '',
  via: TEST_HOOKS ? frag.via || '' : '',
};
setVia(opts.via);
// /broadcast serves this page for teaching broadcasts: a presenter there
// captures 720p for the simulcast layers (viewers capture nothing).
const BROADCAST_PAGE = location.pathname.startsWith('/broadcast');

const app = {
  state: 'prejoin',
  me: null,
  room: null,
  limits: null, // from `joined`: {max_participants, max_tracks, max_dc_bytes}
  participants: new Map(), // the others, by id
  link: {
    state: null,
    bwe_kbps: null,
    layer: null, // simulcast: the layer the server sends us (0 = lowest) of `layers`
    layers: null,
    level: null,
    rttMs: null,
    lossPct: null,
    inKbps: null,
    outKbps: null,
  },
  chat: [],
  views: [],
  points: [],
  errors: [],
  dcOpen: false,
  viewers: null,
  live: true, // a broadcast is on air (a consultation always is)
  speaking: null, // broadcast viewer with the floor: {stream, video}
  micMuted: false,
  camOff: false,
  screen: null, // {stream, track} while sharing
  media: new LocalMedia({
    wantAudio: !opts.nomic,
    wantVideo: !opts.nocam,
    camera: BROADCAST_PAGE ? PRESENTER_CONSTRAINTS : CAMERA_CONSTRAINTS,
  }),
  signal: null,
  pub: null,
  sub: null,
  fatal: null,
  leaving: false,
  reconnects: 0,
  outbox: [], // chat waiting for the data channel: [{msg, item}]
  pendingView: null, // a local view made before the channel opened
  viewReceived: false, // a `view` arrived since the channel opened
  viewSent: false,
};

const $ = (sel) => document.querySelector(sel);

/* ------------------------------------------------------------------ */
/* UI modules                                                           */
/* ------------------------------------------------------------------ */

const tiles = new Tiles($('#tiles'), {
  onAudioBlocked: () => {
    $('#enable-audio').hidden = false;
  },
});

const chatPanel = new ChatPanel($('#panel-chat'), { submit: (text) => sendChat(text) });

const floor = new FloorPanel($('#panel-floor'), {
  send: (m) => !!app.signal?.send(m),
  toast: (key, args) => toast(key, args),
  stopSpeaking: () => app.signal?.send({ type: 'demote', participant: app.me?.id }),
});

const viewer = new StudyViewer($('#panel-study'), {
  onLocalView: (view) => queueView(view),
  onPoint: (point) => sendPoint(point),
});

const monitor = new LinkMonitor({
  pcs: () => ({ pub: app.pub?.pc ?? null, sub: app.sub?.pc ?? null }),
  serverLink: () => app.link,
  onSample: (summary) => renderLink(summary),
});

/* ------------------------------------------------------------------ */
/* Page state                                                           */
/* ------------------------------------------------------------------ */

function setState(state) {
  app.state = state;
  document.body.dataset.state = state;
  setMsg($('#conn-state'), state === 'joining' ? 'consult.connecting' : null);
}

/** A toast with the message `key` (re-translated if the language is switched while it shows). */
function toast(key, args, kind = 'error') {
  const item = el('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status', i18n: key, i18nArgs: args });
  $('#toasts').append(item);
  setTimeout(() => item.remove(), 6000);
}

/**
 * The left-the-room screen: message keys for the title and the reason (or
 * null). `canRejoin` is false when the same link cannot work again.
 */
function showLeft(titleKey, reasonKey, canRejoin = true) {
  setMsg($('#left-title'), titleKey);
  setMsg($('#left-reason'), reasonKey);
  $('#rejoin').hidden = !canRejoin;
}

/* ------------------------------------------------------------------ */
/* Pre-join: preview and devices                                        */
/* ------------------------------------------------------------------ */

async function initPrejoin() {
  setState('prejoin');
  setupStaticUi();
  if (!opts.token) {
    setMsg($('#prejoin-msg'), 'consult.prejoin.no_token');
    $('#join').disabled = true;
  }
  await acquireMedia();
  navigator.mediaDevices?.addEventListener?.('devicechange', () => fillDeviceSelects());
  if (opts.autojoin && opts.token) join();
}

async function acquireMedia() {
  $('#join').disabled = true;
  await app.media.acquire();
  if (opts.token) $('#join').disabled = false;
  const err = app.media.lastError;
  if (err) {
    setMsg($('#prejoin-msg'), err.name === 'NotAllowedError' ? 'consult.prejoin.media_refused' : 'consult.prejoin.media_failed');
  }
  applyLocalEnabled();
  showLocalPreview();
  updateControls();
  await fillDeviceSelects();
}

function showLocalPreview() {
  const stream = app.media.stream;
  const preview = $('#preview');
  preview.srcObject = null; // re-set so a swapped track is picked up everywhere
  preview.srcObject = stream;
  $('#prejoin .preview').classList.toggle('no-video', !app.media.videoTrack || app.camOff);
  if (app.me) tiles.setLocal(stream, app.me.name);
}

async function fillDeviceSelects() {
  let devices;
  try {
    devices = await app.media.listDevices();
  } catch {
    return;
  }
  fillSelect($('#cam-select'), devices.video, app.media.videoDeviceId, 'consult.device.camera_n');
  fillSelect($('#mic-select'), devices.audio, app.media.audioDeviceId, 'consult.device.mic_n');
  $('#cam-field').hidden = opts.nocam;
  $('#mic-field').hidden = opts.nomic;
}

/** Device names are the browser's (data); without one, "Camera 2" (`fallback` key, {n}). */
function fillSelect(select, list, current, fallback) {
  select.replaceChildren(
    ...list.map((d, i) => {
      const o = d.label ? el('option', { translate: 'no' }, d.label) : el('option', { i18n: fallback, i18nArgs: { n: i + 1 } });
      o.value = d.deviceId;
      o.selected = d.deviceId === current;
      return o;
    }),
  );
  select.disabled = list.length < 2;
}

async function switchDevice(kind, deviceId) {
  const track = await app.media.switchDevice(kind, deviceId);
  if (!track) {
    toast(kind === 'audio' ? 'consult.device.mic_failed' : 'consult.device.camera_failed');
    return;
  }
  applyLocalEnabled();
  showLocalPreview();
  updateControls();
  if (app.pub) {
    const source = kind === 'audio' ? 'mic' : 'camera';
    // Same m-line, new track: no renegotiation unless this kind was missing.
    if (app.pub.hasSource(source)) await app.pub.replaceTrack(source, track);
    else if (await publishLocal()) app.pub.negotiate();
  }
}

/* ------------------------------------------------------------------ */
/* Joining and the signaling connection                                 */
/* ------------------------------------------------------------------ */

function join() {
  if (app.state === 'joining' || app.state === 'joined' || !opts.token) return;
  app.leaving = false;
  app.fatal = null;
  app.reconnects = 0;
  setState('joining');
  $('#settings').append($('#devices')); // device choice stays reachable in the room
  connect();
}

function connect() {
  app.signal = new Signal(`wss://${location.host}/ws/consult`, {
    onMessage: (msg) => onSignal(msg),
    onClose: (info) => onSignalClose(info),
  });
  app.signal.connect(opts.token);
}

function onSignal(msg) {
  switch (msg.type) {
    case 'joined':
      return onJoined(msg);
    case 'participant_joined':
      return onParticipantJoined(msg.participant);
    case 'participant_left':
      return onParticipantLeft(msg.id);
    case 'answer':
      if (msg.pc === 'pub' && typeof msg.sdp === 'string') app.pub?.onAnswer(msg.sdp);
      return;
    case 'offer':
      if (msg.pc === 'sub' && typeof msg.sdp === 'string') app.sub?.onOffer(msg);
      return;
    case 'candidate':
      return addRemoteCandidate(msg.pc === 'sub' ? app.sub?.pc : app.pub?.pc, msg.candidate);
    case 'mute':
      return onRemoteMute(msg);
    case 'link':
      return onLink(msg);
    case 'viewers':
      return onViewers(msg);
    case 'live':
      return onLive(!!msg.live);
    case 'queue':
      floor.onQueue(msg);
      return updateFloorBadge();
    case 'hand':
      return floor.onHand(!!msg.raised);
    case 'question_state':
      return floor.onQuestionState(msg);
    case 'floor':
      return onFloor(msg);
    case 'error':
      return onServerError(msg);
    case 'pong':
      return;
    default:
      log('unknown signaling message', msg.type);
  }
}

function onJoined(msg) {
  if (!msg.me || typeof msg.me.id !== 'string') return;
  app.me = msg.me;
  app.room = msg.room || null;
  app.limits = msg.limits && typeof msg.limits === 'object' ? msg.limits : null;
  app.reconnects = 0;
  $('#banner-reconnect').hidden = true;
  // A teaching broadcast is this page too: presenters publish as in a
  // consultation, viewers (joined receive-only, with #nocam&nomic) only watch
  // and hold no camera, microphone or screen controls.
  const broadcast = app.room?.kind === 'broadcast';
  document.body.dataset.kind = broadcast ? 'broadcast' : 'consultation';
  document.body.dataset.viewer = broadcast && app.me.role !== 'expert' ? '1' : '';
  setData($('#room-title'), app.room?.title, broadcast ? 'consult.broadcast_title' : 'consult.title');
  document.title = t(broadcast ? 'consult.doc_title_broadcast' : 'consult.doc_title');
  $('#tab-floor').hidden = !broadcast;
  $('#panel-floor').hidden = !broadcast;
  setMsgAttr($('#chat-input'), 'placeholder', broadcast && app.me.role !== 'expert' ? 'consult.chat.to_presenter' : 'consult.chat.message');
  floor.reset(app.room?.live !== false);
  onLive(app.room?.live !== false);
  app.participants.clear();
  for (const p of Array.isArray(msg.participants) ? msg.participants : []) addParticipant(p);
  setState('joined');
  // A broadcast viewer has no self view until it is given the floor.
  if (document.body.dataset.viewer === '1') tiles.removeLocal();
  else tiles.setLocal(app.media.stream, app.me.name);
  tiles.setLocalMuted('mic', app.micMuted || !app.media.audioTrack);
  tiles.setLocalMuted('camera', app.camOff || !app.media.videoTrack);
  startPeerConnections();
  watchFirstFrame(app.sub);
  monitor.start();
  updateControls();
  if (opts.study && !viewer.study) viewer.loadStudy(opts.study, { origin: 'initial' });
}

/**
 * Join-to-first-frame: how long after `joined` the first remote video frame
 * was decoded (a late viewer of a broadcast should see the cached picture
 * within about a second). Polled from the sub connection's stats for at most
 * two minutes; the figure is for tests and the browser console.
 */
function watchFirstFrame(sub) {
  const started = performance.now();
  app.firstFrameMs = null;
  const poll = async () => {
    if (app.sub !== sub || performance.now() - started > 120_000) return;
    const st = await sub.pc.getStats().catch(() => null);
    let decoded = false;
    st?.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video' && (r.framesDecoded ?? 0) > 0) decoded = true;
    });
    if (decoded) {
      app.firstFrameMs = Math.round(performance.now() - started);
      log('first video frame after', app.firstFrameMs, 'ms');
      return;
    }
    setTimeout(poll, 50);
  };
  setTimeout(poll, 50);
}

function onSignalClose({ code, reason }) {
  if (app.leaving || app.state === 'left' || app.state === 'error') return;
  // 4000-4999 are the server's deliberate closes (PROTOCOL.md), 1000 a normal
  // end; except 4008 (too_slow): this page fell behind its messages, and a
  // reconnect sends it the room afresh.
  const deliberate = code === 1000 || (code >= 4000 && code < 5000 && code !== TOO_SLOW_CLOSE);
  if (app.fatal || deliberate) {
    log('closed by the server', code);
    fail(app.fatal ? sigKey(app.fatal.code) : 'consult.left.ended');
    return;
  }
  if (app.reconnects >= MAX_RECONNECTS) {
    log('gave up reconnecting', code);
    fail('consult.left.lost');
    return;
  }
  // A dropped 4G/satellite link: rejoin with the same token (the server
  // replaces our stale session) and keep the camera and microphone open.
  app.reconnects += 1;
  teardown({ stopMedia: false });
  setState('joining');
  const banner = $('#banner-reconnect');
  setMsg(banner, 'consult.reconnecting', { n: app.reconnects, max: MAX_RECONNECTS });
  banner.hidden = false;
  const delay = Math.min(8000, 1000 * 2 ** (app.reconnects - 1));
  log('reconnecting', app.reconnects);
  setTimeout(() => {
    if (app.state === 'joining' && !app.leaving) connect();
  }, delay);
}

function onServerError(msg) {
  const code = typeof msg.code === 'string' ? msg.code : 'unknown';
  const message = typeof msg.message === 'string' ? msg.message : '';
  pushBounded(app.errors, { code, message, ts: Date.now() }, 200);
  log('server error', code);
  // The close (4008) follows; the page reconnects (onSignalClose).
  if (code === 'too_slow') return;
  if (FATAL_CODES.has(code)) {
    app.fatal = { code, message };
    fail(sigKey(code));
    return;
  }
  // The protocol does not say which request an error refers to; an offer
  // refusal can only concern the pub offer in flight.
  if ((code === 'bad_sdp' || code === 'too_many_tracks') && app.pub) {
    app.pub.onRefused(code).then((wasPub) => {
      if (!wasPub) toast(sigKey(code));
    });
    return;
  }
  toast(sigKey(code));
}

/** Fatal end: state "error", the left-the-room screen with the reason (a message key). */
function fail(reasonKey) {
  app.signal?.shutdown();
  teardown({ stopMedia: true });
  const hopeless = ['bad_token', 'expired_token', 'session_ended', 'room_closed'].includes(app.fatal?.code);
  showLeft('consult.left.title', reasonKey, !hopeless);
  setState('error');
}

function leave() {
  if (app.state === 'left' || app.state === 'error') return;
  app.leaving = true;
  app.signal?.leave();
  teardown({ stopMedia: true });
  showLeft(app.room?.kind === 'broadcast' ? 'consult.left.self_broadcast' : 'consult.left.self', null);
  setState('left');
}

/** Drop both connections and everything remote; optionally release camera and mic. */
function teardown({ stopMedia }) {
  monitor.stop();
  sendViewThrottled.cancel();
  if (app.screen) stopScreen({ renegotiate: false });
  stopSpeaking({ renegotiate: false });
  app.pub?.close();
  app.sub?.close();
  app.pub = null;
  app.sub = null;
  app.dcOpen = false;
  app.viewReceived = false;
  app.viewSent = false;
  for (const { item } of app.outbox) item.classList.add('failed');
  app.outbox.length = 0;
  tiles.clearRemote();
  app.participants.clear();
  setVideoBanner(null);
  if (stopMedia) {
    app.media.stop();
    $('#preview').srcObject = null;
  }
  updateControls();
}

/* ------------------------------------------------------------------ */
/* Participants                                                         */
/* ------------------------------------------------------------------ */

function validParticipant(p) {
  return p && typeof p.id === 'string' && p.id !== '';
}

function addParticipant(p) {
  if (!validParticipant(p) || p.id === app.me?.id) return false;
  const copy = { id: p.id, name: String(p.name ?? ''), role: p.role, sources: Array.isArray(p.sources) ? p.sources.map((s) => ({ ...s })) : [] };
  app.participants.set(p.id, copy);
  if (wantsTile(copy)) tiles.upsert(copy);
  else tiles.remove(copy.id);
  return true;
}

/**
 * In a broadcast a presenter hears of every viewer, but only those on stage
 * (presenters, a viewer given the floor) get a tile: hundreds of empty
 * viewer tiles would bury the lecture.
 */
function wantsTile(p) {
  return app.room?.kind !== 'broadcast' || p.role === 'expert' || p.sources.length > 0;
}

/** Join/leave notes in the chat: in a broadcast, for presenters only. */
function noteWorthy(p) {
  return app.room?.kind !== 'broadcast' || p?.role === 'expert';
}

function onParticipantJoined(p) {
  // The server repeats `participant_joined` when someone's published
  // sources change (camera on, screen share); announce only the first.
  const known = validParticipant(p) && app.participants.has(p.id);
  if (addParticipant(p) && !known && noteWorthy(p)) chatPanel.note('consult.chat.joined', nameOf(p.id));
}

function onParticipantLeft(id) {
  if (typeof id !== 'string' || !app.participants.has(id)) return;
  const name = nameOf(id);
  const worthy = noteWorthy(app.participants.get(id));
  app.participants.delete(id);
  tiles.remove(id);
  if (worthy) chatPanel.note('consult.chat.left', name);
}

/** A participant's display name (data; without one, the word in the language in use). */
function nameOf(id) {
  if (app.me && id === app.me.id) return app.me.name || t('consult.you');
  return app.participants.get(id)?.name || t('consult.participant');
}

function onRemoteMute(msg) {
  const { participant, source, muted } = msg;
  if (typeof participant !== 'string' || typeof source !== 'string' || typeof muted !== 'boolean') return;
  const p = app.participants.get(participant);
  if (p) {
    const s = p.sources.find((x) => x.source === source);
    if (s) s.muted = muted;
    else p.sources.push({ source, kind: source === 'mic' ? 'audio' : 'video', muted });
  }
  tiles.setMuted(participant, source, muted);
}

/* ------------------------------------------------------------------ */
/* Peer connections                                                     */
/* ------------------------------------------------------------------ */

function startPeerConnections() {
  const send = (m) => app.signal?.send(m) ?? false;
  const pub = new PubConnection({
    send,
    onNegotiated: () => onPubNegotiated(pub),
    onRefused: (code) => onPubRefused(code),
    onError: (key) => toast(key),
  });
  const sub = new SubConnection({
    send,
    onTrack: (info) => {
      const p = app.participants.get(info.participant);
      if (p) tiles.upsert(p);
      tiles.attach(info);
    },
    onTracksSettled: (list) => tiles.settle(list),
    onError: (key) => toast(key),
  });
  app.pub = pub;
  app.sub = sub;
  wireDataChannel(pub, pub.dc);
  for (const pc of [pub.pc, sub.pc]) {
    pc.onconnectionstatechange = () => onPcState(pc);
  }
  publishLocal()
    .catch(() => log('could not add local tracks'))
    .then(() => {
      if (app.pub === pub) pub.negotiate();
    });
}

/** Add mic and camera to pub if present and not yet published; true if anything was added. */
async function publishLocal() {
  const pub = app.pub;
  const m = app.media;
  let added = false;
  if (!pub) return false;
  if (m.audioTrack && !pub.hasSource('mic')) {
    await pub.addSource('mic', m.audioTrack, m.stream, MIC_ENCODING);
    added = true;
  }
  if (m.videoTrack && !pub.hasSource('camera')) {
    // Broadcast presenters send simulcast; in a consultation every receiver
    // gets the one stream, so a clinic's thin uplink sends it once.
    const simulcast = app.room?.kind === 'broadcast';
    await pub.addSource('camera', m.videoTrack, m.stream, simulcast ? CAMERA_SIMULCAST : CAMERA_ENCODING);
    added = true;
  }
  return added;
}

function onPubNegotiated(pub) {
  // The first time our sources exist server-side, tell the others what is muted.
  if (pub.negotiations === 1) {
    if (app.micMuted && app.media.audioTrack) app.signal?.send({ type: 'mute', source: 'mic', muted: true });
    if (app.camOff && app.media.videoTrack) app.signal?.send({ type: 'mute', source: 'camera', muted: true });
  }
}

function onPubRefused(code) {
  log('pub offer refused', code);
  toast(sigKey(code));
  // The refused offer most likely added the screen share: give it up.
  if (app.screen) stopScreen({ renegotiate: true });
}

// How long a connection may stay in 'connecting' before we start over. A
// DTLS handshake stranded by loss (one side gave up retransmitting) never
// reaches 'failed' in Chromium; on a 800 ms satellite round trip a healthy
// handshake with a few losses still finishes well inside this.
const CONNECTING_LIMIT_MS = 30000;

function onPcState(pc) {
  if (pc !== app.pub?.pc && pc !== app.sub?.pc) return;
  const state = pc.connectionState;
  clearTimeout(pc.mrConnectingTimer);
  if (state === 'connecting') {
    pc.mrConnectingTimer = setTimeout(() => {
      if (pc.connectionState !== 'connecting' || app.state !== 'joined') return;
      if (pc !== app.pub?.pc && pc !== app.sub?.pc) return;
      log('peer connection stuck connecting');
      pushBounded(app.errors, { code: 'connect_timeout', message: 'media connection did not complete', ts: Date.now() }, 200);
      app.signal?.shutdown();
      onSignalClose({ code: 0, reason: 'media connection did not complete' });
    }, CONNECTING_LIMIT_MS);
  }
  setMsg($('#media-state'), state === 'disconnected' ? 'consult.media_interrupted' : null);
  $('#media-state').hidden = state !== 'disconnected';
  if (state === 'failed' && app.state === 'joined') {
    // ICE has given up; a fresh session is the reliable way back.
    log('peer connection failed');
    app.signal?.shutdown();
    onSignalClose({ code: 0, reason: 'media connection failed' });
  }
}

/* ------------------------------------------------------------------ */
/* Controls                                                             */
/* ------------------------------------------------------------------ */

function applyLocalEnabled() {
  if (app.media.audioTrack) app.media.audioTrack.enabled = !app.micMuted;
  if (app.media.videoTrack) app.media.videoTrack.enabled = !app.camOff;
}

function setMicMuted(muted) {
  app.micMuted = muted;
  applyLocalEnabled();
  tiles.setLocalMuted('mic', muted);
  sendMute('mic', muted);
  updateControls();
}

function setCamOff(off) {
  app.camOff = off;
  applyLocalEnabled();
  tiles.setLocalMuted('camera', off);
  $('#prejoin .preview').classList.toggle('no-video', !app.media.videoTrack || off);
  sendMute('camera', off);
  updateControls();
}

function sendMute(source, muted) {
  // Before the first answer the server does not know our sources yet;
  // onPubNegotiated sends the state then.
  if (app.state === 'joined' && app.pub?.negotiations > 0) app.signal?.send({ type: 'mute', source, muted });
}

async function startScreen() {
  if (app.screen || !app.pub || !navigator.mediaDevices?.getDisplayMedia) return;
  const maxTracks = app.limits?.max_tracks;
  if (isFiniteNumber(maxTracks) && Object.keys(app.pub.tracksMap()).length >= maxTracks) {
    toast(sigKey('too_many_tracks'));
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({
      video: { frameRate: { ideal: 8, max: 15 }, width: { max: 1920 }, height: { max: 1080 } },
      audio: false,
    });
  } catch (err) {
    if (err?.name !== 'NotAllowedError') toast('consult.share_failed');
    return;
  }
  const track = stream.getVideoTracks()[0];
  if (!track || !app.pub || app.state !== 'joined' || app.screen) {
    stream.getTracks().forEach((t) => t.stop());
    return;
  }
  // "detail": keep resolution (text, fine structures in images) and drop frame rate under congestion.
  track.contentHint = 'detail';
  track.onended = () => stopScreen({ renegotiate: true }); // the browser's own "Stop sharing"
  app.screen = { stream, track };
  tiles.setLocalScreen(stream);
  updateControls();
  await app.pub.addSource('screen', track, stream, SCREEN_ENCODING);
  app.pub.negotiate();
}

function stopScreen({ renegotiate }) {
  const screen = app.screen;
  if (!screen) return;
  app.screen = null;
  screen.track.onended = null;
  screen.track.stop();
  if (app.pub) {
    app.pub.removeSource('screen');
    if (renegotiate) app.pub.negotiate();
  }
  tiles.setLocalScreen(null);
  updateControls();
}

function updateControls() {
  const hasMic = !!app.media.audioTrack;
  const hasCam = !!app.media.videoTrack;
  for (const b of document.querySelectorAll('[data-action="mic"]')) {
    setToggle(b, !app.micMuted && hasMic, hasMic ? (app.micMuted ? 'consult.ctl.unmute' : 'consult.ctl.mute') : 'consult.ctl.no_mic', app.micMuted || !hasMic ? ICONS.micOff : ICONS.mic);
    b.disabled = !hasMic;
  }
  for (const b of document.querySelectorAll('[data-action="camera"]')) {
    setToggle(b, !app.camOff && hasCam, hasCam ? (app.camOff ? 'consult.ctl.cam_on' : 'consult.ctl.cam_off') : 'consult.ctl.no_cam', app.camOff || !hasCam ? ICONS.camOff : ICONS.cam);
    b.disabled = !hasCam;
  }
  const share = $('[data-action="screen"]');
  setToggle(share, !!app.screen, app.screen ? 'consult.ctl.stop_share' : 'consult.ctl.share', ICONS.screen);
  share.disabled = app.state !== 'joined' || !navigator.mediaDevices?.getDisplayMedia;
}

/** A toggle button: icon + visible label (a message key); aria-pressed carries the state. */
function setToggle(button, pressed, label, icon) {
  button.setAttribute('aria-pressed', String(pressed));
  setMsgAttr(button, 'aria-label', label);
  setMsgAttr(button, 'title', label);
  button.querySelector('.icon').innerHTML = icon; // static markup from consult-icons.js
  setMsg(button.querySelector('.label'), label);
}

/* ------------------------------------------------------------------ */
/* Data channel: chat, view, point                                      */
/* ------------------------------------------------------------------ */

function wireDataChannel(pub, dc) {
  const current = () => app.pub === pub;
  dc.onopen = () => {
    if (!current()) return;
    app.dcOpen = true;
    log('room channel open');
    flushOutbox();
    if (app.pendingView) {
      sendViewThrottled(app.pendingView);
      app.pendingView = null;
    } else {
      setTimeout(() => offerInitialView(pub), INITIAL_VIEW_GRACE_MS);
    }
  };
  dc.onclose = () => {
    if (current()) app.dcOpen = false;
  };
  dc.onmessage = (ev) => {
    if (current()) onRoomMessage(ev.data);
  };
}

/** Send a JSON object on the room channel; false if it cannot go now. */
function sendRoom(obj, { droppable = false } = {}) {
  const dc = app.pub?.dc;
  if (!app.dcOpen || !dc || dc.readyState !== 'open') return false;
  if (droppable && dc.bufferedAmount > DC_HIGH_WATER) return false; // a stale view is worthless
  const text = JSON.stringify(obj);
  const max = isFiniteNumber(app.limits?.max_dc_bytes) ? app.limits.max_dc_bytes : ROOM_MSG_MAX_BYTES;
  if (utf8Length(text) > max) {
    log('room message too large, not sent', obj.t);
    return false;
  }
  try {
    dc.send(text);
    return true;
  } catch {
    return false;
  }
}

function flushOutbox() {
  while (app.outbox.length && app.dcOpen) {
    const { msg, item } = app.outbox[0];
    if (!sendRoom(msg)) break;
    item.classList.remove('pending');
    app.outbox.shift();
  }
}

function onRoomMessage(data) {
  if (typeof data !== 'string' || data.length > 2 * ROOM_MSG_MAX_BYTES) return;
  let m;
  try {
    m = JSON.parse(data);
  } catch {
    return;
  }
  if (!m || typeof m !== 'object' || typeof m.t !== 'string') return;
  if (app.me && m.from === app.me.id) return; // never our own echo
  if (m.t === 'chat') onRemoteChat(m);
  else if (m.t === 'view') onRemoteView(m);
  else if (m.t === 'point') onRemotePoint(m);
}

function sendChat(text) {
  if (typeof text !== 'string' || !text.trim() || app.state !== 'joined') return false;
  for (const chunk of chunkChatText(text)) {
    if (!chunk.trim()) continue; // the server drops blank messages
    const entry = { from: app.me?.id ?? null, name: app.me?.name ?? '', text: chunk, ts: Date.now(), mine: true };
    pushBounded(app.chat, entry);
    const msg = { t: 'chat', text: chunk };
    const sent = sendRoom(msg);
    const item = chatPanel.add({ ...entry, pending: !sent });
    if (!sent) {
      if (app.outbox.length < OUTBOX_MAX) app.outbox.push({ msg, item });
      else item.classList.add('failed');
    }
  }
  return true;
}

// The server replays recent chat to a reconnecting page; lines already shown
// are recognised by sender, server timestamp and text.
const seenChat = new Set();

function onRemoteChat(m) {
  if (typeof m.text !== 'string' || typeof m.from !== 'string') return;
  const ts = isFiniteNumber(m.ts) ? m.ts : Date.now();
  const key = `${m.from}|${ts}|${m.text}`;
  if (seenChat.has(key)) return;
  if (seenChat.size > 1000) seenChat.clear();
  seenChat.add(key);
  const entry = { from: m.from, name: nameOf(m.from), text: m.text, ts, mine: false };
  pushBounded(app.chat, entry);
  chatPanel.add(entry);
  if (!isVisible($('#panel-chat'))) {
    const badge = $('#chat-unread');
    badge.textContent = String(Number(badge.textContent || 0) + 1);
    badge.hidden = false;
  }
}

/** Normalise a view object to the protocol's fields (drops anything else). */
function normaliseView(obj) {
  if (!obj || !isValidUid(obj.study)) return null;
  const v = { t: 'view', study: obj.study };
  if (isValidUid(obj.series)) v.series = obj.series;
  if (isValidUid(obj.instance)) v.instance = obj.instance;
  v.frame = Number.isInteger(obj.frame) && obj.frame >= 0 ? obj.frame : 0;
  if (isFiniteNumber(obj.wc) && isFiniteNumber(obj.ww) && obj.ww > 0) {
    v.wc = obj.wc;
    v.ww = obj.ww;
  }
  return v;
}

// The one path every outgoing view takes (viewer UI and mrTest.sendView).
const sendViewThrottled = throttle((view) => {
  if (sendRoom(view, { droppable: true })) app.viewSent = true;
  else if (!app.dcOpen) app.pendingView = view;
}, VIEW_MIN_INTERVAL_MS);

function queueView(view) {
  const v = normaliseView(view);
  if (!v) return false;
  if (!app.dcOpen) {
    app.pendingView = v; // sent when the channel opens
    return true;
  }
  sendViewThrottled(v);
  return true;
}

/** A study opened from our own URL becomes the room's view only if the room has none. */
function offerInitialView(pub) {
  if (app.pub !== pub || !app.dcOpen || app.viewReceived || app.viewSent) return;
  const v = viewer.currentView();
  if (v) queueView(v);
}

function onRemoteView(m) {
  const v = normaliseView(m);
  if (!v) return;
  const entry = { ...v, from: typeof m.from === 'string' ? m.from : null, ts: isFiniteNumber(m.ts) ? m.ts : Date.now() };
  pushBounded(app.views, entry, 500);
  app.viewReceived = true;
  const follow = $('#panel-study [data-follow]');
  if (entry.from) setRich(follow, 'consult.viewer.following', { name: nameOf(entry.from) });
  else setMsg(follow, null);
  viewer.applyView(v, 'remote');
}

function sendPoint(obj) {
  if (!obj || !isValidUid(obj.instance) || !isFiniteNumber(obj.x) || !isFiniteNumber(obj.y)) return false;
  if (obj.x < 0 || obj.x > 1 || obj.y < 0 || obj.y > 1) return false;
  const msg = { t: 'point', instance: obj.instance, x: obj.x, y: obj.y };
  viewer.showPointer({ ...msg, name: '', from: null });
  return sendRoom(msg, { droppable: true });
}

function onRemotePoint(m) {
  if (!isValidUid(m.instance) || !isFiniteNumber(m.x) || !isFiniteNumber(m.y)) return;
  if (m.x < 0 || m.x > 1 || m.y < 0 || m.y > 1) return;
  const from = typeof m.from === 'string' ? m.from : null;
  pushBounded(app.points, { t: 'point', instance: m.instance, x: m.x, y: m.y, from, ts: isFiniteNumber(m.ts) ? m.ts : Date.now() }, 500);
  viewer.showPointer({ instance: m.instance, x: m.x, y: m.y, name: from ? nameOf(from) : '', from: from || 'remote' });
}

/* ------------------------------------------------------------------ */
/* Link quality                                                         */
/* ------------------------------------------------------------------ */

function onViewers(msg) {
  if (!Number.isInteger(msg.count) || msg.count < 0) return;
  app.viewers = msg.count;
  const el = $('#viewer-count');
  el.hidden = false;
  setMsg(el, 'consult.viewers', { n: msg.count, count: fmtNumber(msg.count) });
}

/* ------------------------------------------------------------------ */
/* Teaching broadcast: on air, and the floor                            */
/* ------------------------------------------------------------------ */

function onLive(live) {
  app.live = live;
  floor.onLive(live);
  const broadcast = app.room?.kind === 'broadcast';
  $('#live-badge').hidden = !broadcast || !live;
  const viewerSide = document.body.dataset.viewer === '1';
  const banner = $('#banner-offair');
  banner.hidden = !broadcast || live;
  setMsg(banner, viewerSide ? 'consult.offair.viewer' : 'consult.offair.presenter');
}

function updateFloorBadge() {
  const n = floor.waiting;
  const badge = $('#floor-unread');
  badge.hidden = n === 0 || $('#tab-floor').getAttribute('aria-selected') === 'true';
  badge.textContent = n ? String(n) : '';
}

/** A presenter let us speak (or ended our turn): open or close the microphone. */
async function onFloor(msg) {
  if (!msg.granted) {
    if (app.speaking) toast('consult.floor.ended');
    stopSpeaking({ renegotiate: true });
    return;
  }
  const video = !!msg.video;
  if (app.speaking && app.speaking.video === video) return;
  stopSpeaking({ renegotiate: false });
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: video ? CAMERA_CONSTRAINTS : false });
  } catch (err) {
    log('floor: could not open the microphone', err?.name);
    toast('consult.floor.mic_failed');
    app.signal?.send({ type: 'demote', participant: app.me?.id });
    return;
  }
  const pub = app.pub;
  if (!pub || app.state !== 'joined') {
    for (const t of stream.getTracks()) t.stop();
    return;
  }
  app.speaking = { stream, video };
  const audio = stream.getAudioTracks()[0];
  const cam = stream.getVideoTracks()[0];
  if (audio) await pub.addSource('mic', audio, stream, MIC_ENCODING);
  if (cam) await pub.addSource('camera', cam, stream, CAMERA_ENCODING);
  pub.negotiate();
  tiles.setLocal(stream, app.me?.name || '');
  $('#banner-speaking').hidden = false;
  floor.setSpeaking({ video });
  toast(video ? 'consult.floor.granted_video' : 'consult.floor.granted', undefined, 'info');
}

function stopSpeaking({ renegotiate }) {
  const s = app.speaking;
  if (!s) return;
  app.speaking = null;
  if (app.pub) {
    app.pub.removeSource('mic');
    app.pub.removeSource('camera');
    if (renegotiate) app.pub.negotiate();
  }
  for (const t of s.stream.getTracks()) t.stop();
  if (document.body.dataset.viewer === '1') tiles.removeLocal();
  $('#banner-speaking').hidden = true;
  floor.setSpeaking(null);
}

function onLink(msg) {
  if (!['good', 'weak', 'audio_only'].includes(msg.state)) return;
  app.link.state = msg.state;
  app.link.bwe_kbps = isFiniteNumber(msg.bwe_kbps) ? msg.bwe_kbps : null;
  app.link.layer = Number.isInteger(msg.layer) ? msg.layer : null;
  app.link.layers = Number.isInteger(msg.layers) ? msg.layers : null;
  setVideoBanner(msg.state);
  renderLink({ ...app.link, serverState: msg.state, bweKbps: app.link.bwe_kbps });
}

function setVideoBanner(state) {
  $('#banner-audio-only').hidden = state !== 'audio_only';
  $('#weak-dot').hidden = state !== 'weak';
}

function renderLink(s) {
  const level = levelOf({ rttMs: s.rttMs, lossPct: s.lossPct, serverState: app.link.state });
  Object.assign(app.link, {
    rttMs: s.rttMs ?? null,
    lossPct: s.lossPct ?? null,
    uplinkLossPct: s.uplinkLossPct ?? app.link.uplinkLossPct ?? null,
    inKbps: s.inKbps ?? null,
    outKbps: s.outKbps ?? null,
    level,
  });
  showLink();
}

/** The link indicator and its details from app.link, in the language in use (again on a switch). */
function showLink() {
  const l = app.link;
  const level = l.level;
  if (!level) return; // nothing measured yet: the page's static text stands
  const fmt = (v, unit) => (v === null || v === undefined ? '—' : `${fmtNumber(v)}${unit}`);
  const serverText = t(`consult.link.server.${l.state || 'unknown'}`);
  // Simulcast: which picture quality this link gets.
  const quality =
    l.layer === null || l.layers === null || l.state === 'audio_only'
      ? null
      : l.layer >= l.layers - 1
        ? t('consult.link.quality.full')
        : l.layer === 0
          ? t('consult.link.quality.low')
          : t('consult.link.quality.reduced');
  const details = [
    [t('consult.link.rtt'), fmt(l.rttMs, ' ms')],
    [t('consult.link.loss_in'), fmt(l.lossPct, ' %')],
    [t('consult.link.loss_out'), fmt(l.uplinkLossPct, ' %')],
    [t('consult.link.receiving'), fmt(l.inKbps, ' kbit/s')],
    [t('consult.link.sending'), fmt(l.outKbps, ' kbit/s')],
    [t('consult.link.estimate'), fmt(l.bwe_kbps, ' kbit/s')],
    [t('consult.link.server'), serverText],
    ...(quality ? [[t('consult.link.quality'), quality]] : []),
  ];
  const btn = $('#link');
  btn.dataset.level = level;
  $('#link-text').textContent =
    l.rttMs === null ? t(`consult.link.level.${level}`) : `${fmtNumber(l.rttMs)} ms · ${fmtNumber(l.lossPct ?? 0)}%`;
  btn.title = details.map(([k, v]) => t('consult.link.row', { k, v })).join('\n');
  delete btn.dataset.i18nAriaLabel; // the static "unknown" label is replaced by the measured one
  btn.setAttribute('aria-label', t('consult.link.details', { level: t(`consult.link.summary.${level}`) }));
  $('#link-details dl').replaceChildren(
    ...details.flatMap(([k, v]) => {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = v;
      return [dt, dd];
    }),
  );
}

/* ------------------------------------------------------------------ */
/* Static UI wiring                                                     */
/* ------------------------------------------------------------------ */

function isVisible(node) {
  return !!node && node.getClientRects().length > 0;
}

function setupStaticUi() {
  for (const b of document.querySelectorAll('[data-action="mic"]')) b.addEventListener('click', () => setMicMuted(!app.micMuted));
  for (const b of document.querySelectorAll('[data-action="camera"]')) b.addEventListener('click', () => setCamOff(!app.camOff));
  $('[data-action="screen"]').addEventListener('click', () => (app.screen ? stopScreen({ renegotiate: true }) : startScreen()));
  $('[data-action="leave"]').addEventListener('click', () => leave());
  $('#join').addEventListener('click', () => join());
  $('#rejoin').addEventListener('click', () => location.reload());
  $('#cam-select').addEventListener('change', (ev) => switchDevice('video', ev.target.value));
  $('#mic-select').addEventListener('change', (ev) => switchDevice('audio', ev.target.value));
  $('#enable-audio').addEventListener('click', () => {
    $('#enable-audio').hidden = true;
    tiles.resumeAudio();
  });
  popover($('[data-action="settings"]'), $('#settings'));
  popover($('#link'), $('#link-details'));
  setupTabs();
  updateControls();
  if (isValidUid(opts.study)) $('#panel-study [data-study-input]').value = opts.study;
  // Best effort: tell the server at once instead of waiting for a timeout.
  window.addEventListener('pagehide', () => {
    if (app.state === 'joined' || app.state === 'joining') app.signal?.leave();
  });
}

function popover(button, panel) {
  const close = () => {
    panel.hidden = true;
    button.setAttribute('aria-expanded', 'false');
  };
  button.addEventListener('click', (ev) => {
    ev.stopPropagation();
    const open = panel.hidden;
    panel.hidden = !open;
    button.setAttribute('aria-expanded', String(open));
  });
  panel.addEventListener('click', (ev) => ev.stopPropagation());
  document.addEventListener('click', close);
  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') close();
  });
}

/** Narrow screens show one panel at a time; wide screens show both and hide the tab bar. */
function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute('aria-selected', String(on));
      t.tabIndex = on ? 0 : -1;
      document.getElementById(t.getAttribute('aria-controls')).classList.toggle('active', on);
    }
    if (tab.id === 'tab-chat') {
      $('#chat-unread').hidden = true;
      $('#chat-unread').textContent = '';
    }
    if (tab.id === 'tab-floor') $('#floor-unread').hidden = true;
  };
  tabs.forEach((t, i) => {
    t.addEventListener('click', () => select(t));
    t.addEventListener('keydown', (ev) => {
      const d = ev.key === 'ArrowRight' ? 1 : ev.key === 'ArrowLeft' ? -1 : 0;
      if (!d) return;
      // Skip tabs hidden in this room (Questions outside a broadcast).
      let k = i;
      do k = (k + d + tabs.length) % tabs.length;
      while (tabs[k].hidden && k !== i);
      const next = tabs[k];
      next.focus();
      select(next);
    });
  });
  select(tabs[0]);
}

/* ------------------------------------------------------------------ */
/* Test hooks (stable: the integration tests read these)                */
/* ------------------------------------------------------------------ */

// Added to window.mrTest (web/i18n.js keeps its hook there too), getters kept.
window.mrTest = Object.defineProperties(window.mrTest || {}, Object.getOwnPropertyDescriptors({
  get state() {
    return app.state;
  },
  get me() {
    return app.me;
  },
  /** The other participants currently in the room (not including `me`). */
  get participants() {
    return [...app.participants.values()];
  },
  chat: app.chat,
  views: app.views,
  points: app.points,
  errors: app.errors,
  get link() {
    return app.link;
  },
  get dcOpen() {
    return app.dcOpen;
  },
  get room() {
    return app.room;
  },
  /** Milliseconds from `joined` to the first decoded remote video frame. */
  get firstFrameMs() {
    return app.firstFrameMs ?? null;
  },
  /** Broadcast presenters: viewers connected, from the server's `viewers`. */
  get viewers() {
    return app.viewers;
  },
  /** Broadcasts: on air; the presenters' queue; my hand, questions and floor. */
  get floor() {
    return {
      live: app.live,
      queue: floor.queue,
      hand: floor.hand,
      questions: [...floor.mine].map(([id, m]) => ({ id, ...m })),
      speaking: app.speaking ? { video: app.speaking.video } : null,
    };
  },
  async stats() {
    const sub = app.sub;
    const pub = app.pub;
    return collectStreamStats(
      pub?.pc ?? null,
      sub?.pc ?? null,
      (mid, trackId) => {
        if (!sub) return null;
        const m = mid ?? (trackId ? sub.midOfTrackId(trackId) : null);
        const info = m !== null && m !== undefined ? sub.tracks[m] : null;
        return info ? { participant: info.participant ?? null, source: info.source ?? null } : null;
      },
      (mid, trackId) => pub?.sourceOf(mid, trackId) ?? null,
    );
  },
  sendChat: (text) => sendChat(text),
  /** Same path as the viewer: throttled `view` message; the local viewer follows. */
  sendView: (obj) => {
    const v = normaliseView(obj);
    if (!v) return false;
    queueView(v);
    viewer.applyView(v, 'none');
    return true;
  },
  sendPoint: (obj) => sendPoint(obj),
}));

// What is not in the DOM's data-i18n attributes follows a language switch.
document.title = t(BROADCAST_PAGE ? 'consult.doc_title_broadcast' : 'consult.doc_title');
onLang(() => {
  document.title = t(app.room?.kind === 'broadcast' || BROADCAST_PAGE ? 'consult.doc_title_broadcast' : 'consult.doc_title');
  showLink();
});

initPrejoin().catch(() => {
  log('start-up failed');
  setState('error');
  showLeft('consult.left.start_failed', null);
});
