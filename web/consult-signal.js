// Signaling WebSocket (see web/PROTOCOL.md): join, keep-alive, and a clean
// distinction between "the server ended this" (fatal, do not reconnect) and
// "the link dropped" (worth a reconnect on a flaky 4G/satellite link).

import { log } from './consult-util.js';

const PING_EVERY_MS = 15000;
// A dead TCP connection over satellite can take minutes to be noticed by the
// OS; if the server has been silent (no pong) this long, give up on it.
const SILENCE_LIMIT_MS = 45000;
const MAX_FRAME = 64 * 1024;

/** Error codes after which the server closes the socket for good. */
export const FATAL_CODES = new Set([
  'bad_token',
  'expired_token',
  'session_ended',
  'room_full',
  'room_closed',
  'replaced',
]);
/** The server's close when this page fell behind its messages (`too_slow`): worth a reconnect. */
export const TOO_SLOW_CLOSE = 4008;

export class Signal {
  /**
   * @param {string} url
   * @param {{onMessage(msg), onClose(info: {code, reason, serverClosed: boolean})}} handlers
   */
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.ws = null;
    this.keepalive = null;
    this.lastRx = 0;
  }

  /** Open the socket and send `join` as the first message. */
  connect(token) {
    this.shutdown();
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.lastRx = Date.now();
      this.send({ type: 'join', token });
      this.startKeepalive();
    };
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onerror = () => log('websocket error'); // a close event always follows
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.finish({ code: ev.code, reason: ev.reason || '', serverClosed: true });
    };
  }

  receive(data) {
    this.lastRx = Date.now();
    if (typeof data !== 'string') return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      log('unparseable signaling message');
      return;
    }
    if (msg && typeof msg.type === 'string') this.handlers.onMessage(msg);
  }

  /** Send one JSON message; false when the socket is not open or it is too big. */
  send(obj) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    const text = JSON.stringify(obj);
    if (text.length > MAX_FRAME) {
      log('signaling message too large, not sent', obj.type);
      return false;
    }
    ws.send(text);
    return true;
  }

  get open() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  startKeepalive() {
    clearInterval(this.keepalive);
    this.keepalive = setInterval(() => {
      if (Date.now() - this.lastRx > SILENCE_LIMIT_MS) {
        log('signaling silent, dropping socket');
        const ws = this.ws;
        this.ws = null;
        this.detach(ws);
        this.finish({ code: 0, reason: 'no response from the server', serverClosed: false });
        return;
      }
      this.send({ type: 'ping' });
    }, PING_EVERY_MS);
  }

  finish(info) {
    clearInterval(this.keepalive);
    this.keepalive = null;
    this.ws = null;
    this.handlers.onClose(info);
  }

  detach(ws) {
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      ws.close(1000);
    } catch {
      /* already closing */
    }
  }

  /** Send `leave` and close; no onClose callback follows (the caller is leaving). */
  leave() {
    this.send({ type: 'leave' });
    this.shutdown();
  }

  /** Close without telling the server anything and without callbacks. */
  shutdown() {
    clearInterval(this.keepalive);
    this.keepalive = null;
    const ws = this.ws;
    this.ws = null;
    this.detach(ws);
  }
}
