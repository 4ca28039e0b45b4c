// Image loading for the viewer, built for thin links (2 Mbit/s, 300 ms RTT).
//
// - Two bounded caches: compressed blobs (cheap, many) and decoded
//   ImageBitmaps (expensive, fewer). An evicted bitmap is re-decoded from its
//   blob without touching the network; an evicted blob costs a request.
// - `load(url)` is for what the reader is looking at: it starts at once,
//   whatever the prefetch concurrency, with high fetch priority.
// - `want([{url, prio}])` replaces the prefetch list: at most `concurrency`
//   requests run at a time, lowest `prio` (distance from the current slice)
//   first; in-flight prefetches that are no longer wanted, or now far
//   (prio > abortPrio), are aborted so the link serves what is near.
// - Fetching never logs anything (URLs carry UIDs).

import { ApiError, toLogin } from './app-common.js';
import { has } from './i18n.js';

/**
 * An image request that failed: `status` (0: the browser could not decode
 * it), the server's error `code` and `params` (shown to the reader in
 * their language: errorOf below), and `reason`, the server's
 * English text (for a missing preview: what is wrong with the data).
 */
export class ImageError extends Error {
  constructor(status, reason, body) {
    super(reason);
    this.status = status;
    this.noPreview = /^no preview/.test(String(reason || ''));
    this.reason = String(reason || '').replace(/^no preview:\s*/, '');
    this.code = (body && typeof body.code === 'string' && body.code) || '';
    this.params = (body && body.params) || {};
  }
}

async function errorBody(res) {
  try {
    const body = await res.json();
    if (body && typeof body === 'object') return body;
  } catch {
    /* not JSON */
  }
  return null;
}

/**
 * What to tell the reader about a failed request, as a message key and its
 * arguments (never the server's English text): an API error's code, an
 * image the server cannot preview, an image the browser cannot decode, the
 * network. The server's reason for a missing preview is technical detail
 * about the data, returned as `detail` (shown as data, untranslated).
 */
export function errorOf(err) {
  if (err instanceof ImageError) {
    if (err.noPreview) return { key: 'viewer.img.no_preview', args: {}, detail: err.reason };
    if (err.code && has(`error.${err.code}`)) return { key: `error.${err.code}`, args: err.params || {} };
    if (err.status === 0) return { key: 'viewer.img.decode', args: {} };
    if (err.status === 403) return { key: 'error.role', args: {} };
    return { key: 'error.generic', args: { status: err.status } };
  }
  if (err instanceof ApiError) {
    if (err.code && has(`error.${err.code}`)) return { key: `error.${err.code}`, args: err.params };
    if (err.status === 403) return { key: 'error.role', args: {} };
    return { key: 'error.generic', args: { status: err.status } };
  }
  return { key: 'error.network', args: {} };
}

/** Worth trying again later: the network or the server hiccuped (not "this image has no preview"). */
export function isTransient(err) {
  if (!err || err.name === 'AbortError') return false;
  if (!(err instanceof ImageError)) return true; // TypeError: the fetch itself failed
  return err.status >= 500 || err.status === 429 || err.status === 408;
}

const BACKOFF_MIN_MS = 2000;
const BACKOFF_MAX_MS = 30000;

/**
 * GET an image as a Blob. A placeholder served for an undecodable instance throws with the server's reason.
 * `preloaded`: the page has `<link rel="preload" as="fetch" crossorigin="use-credentials">` for `url`;
 * the request then matches that one exactly (same URL, CORS mode, credentials included, no extra
 * options) so the browser hands over the preloaded response instead of asking again.
 */
export async function fetchImageBlob(url, { signal, priority = 'auto', preloaded = false } = {}) {
  const init = preloaded ? { credentials: 'include', mode: 'cors', signal } : { credentials: 'same-origin', signal, priority };
  const res = await fetch(url, init);
  if (res.status === 401) {
    toLogin();
    throw new ImageError(401, 'session expired');
  }
  if (!res.ok) {
    const body = await errorBody(res);
    throw new ImageError(res.status, (body && typeof body.error === 'string' && body.error) || `HTTP ${res.status}`, body);
  }
  const status = res.headers.get('x-preview-status') || '';
  const blob = await res.blob();
  if (status.startsWith('no preview')) {
    const e = new ImageError(422, status);
    e.blob = blob; // the placeholder, shown with the reason
    throw e;
  }
  return blob;
}

class Lru {
  constructor(budget, sizeOf, onEvict) {
    this.map = new Map();
    this.used = 0;
    this.budget = budget;
    this.sizeOf = sizeOf;
    this.onEvict = onEvict;
  }
  get(k) {
    const v = this.map.get(k);
    if (v === undefined) return undefined;
    this.map.delete(k);
    this.map.set(k, v);
    return v;
  }
  peek(k) {
    return this.map.get(k);
  }
  has(k) {
    return this.map.has(k);
  }
  set(k, v, pinned = () => false) {
    const old = this.map.get(k);
    if (old !== undefined) {
      this.used -= this.sizeOf(old);
      this.map.delete(k);
      if (old !== v) this.onEvict?.(old);
    }
    this.map.set(k, v);
    this.used += this.sizeOf(v);
    for (const [key, val] of this.map) {
      if (this.used <= this.budget) break;
      if (key === k || pinned(key)) continue;
      this.map.delete(key);
      this.used -= this.sizeOf(val);
      this.onEvict?.(val);
    }
  }
  delete(k) {
    const v = this.map.get(k);
    if (v === undefined) return;
    this.map.delete(k);
    this.used -= this.sizeOf(v);
    this.onEvict?.(v);
  }
  clear() {
    for (const v of this.map.values()) this.onEvict?.(v);
    this.map.clear();
    this.used = 0;
  }
}

export class ImageStore {
  /**
   * @param {object} o
   * @param {number} o.concurrency prefetch requests at a time
   * @param {number} o.maxPixels decoded-bitmap budget (pixels)
   * @param {number} o.maxBytes compressed-blob budget (bytes)
   * @param {number} o.abortPrio in-flight prefetches beyond this priority are aborted when the list changes
   * @param {(url: string) => void} o.onLoaded a blob arrived (or was decoded) for `url`
   * @param {(url: string, err: Error) => void} o.onFailed
   */
  constructor({ concurrency = 4, maxPixels = 32e6, maxBytes = 96 << 20, abortPrio = 30, onLoaded, onFailed } = {}) {
    this.concurrency = concurrency;
    this.abortPrio = abortPrio;
    this.onLoaded = onLoaded || (() => {});
    this.onFailed = onFailed || (() => {});
    this.bitmaps = new Lru(maxPixels, (b) => b.width * b.height, (b) => b.close?.());
    this.blobs = new Lru(maxBytes, (b) => b.size);
    this.failed = new Map(); // url -> {err, until}: permanent (until = Infinity) or a transient back-off
    this.backoff = 0; // ms; grows while the link or server keeps failing
    this.pausedUntil = 0;
    this.pumpTimer = 0;
    this.inflight = new Map(); // url -> {ac, promise, prio, foreground}
    this.decoding = new Map(); // url -> Promise<ImageBitmap>
    this.queue = []; // [{url, prio}] sorted by prio
    this.decodeWithin = 20;
    this.pinned = new Set(); // bitmaps on screen: never evicted
    this.paused = 0; // prefetch slots taken away (a full-fidelity render in flight)
    this.blocked = false;
    this.preloads = new Set(); // URLs the page preloads: fetched once with the matching request
  }

  /** `url` is preloaded by the page (`<link rel="preload" as="fetch" crossorigin="use-credentials">`). */
  expectPreload(url) {
    if (url) this.preloads.add(url);
  }

  /** The decoded image if it is in memory (no I/O). */
  peek(url) {
    return this.bitmaps.get(url) || null;
  }

  hasBlob(url) {
    return this.blobs.has(url);
  }

  /** The error of the last attempt if it is still in force (a transient one expires). */
  failure(url) {
    const f = this.failed.get(url);
    if (!f) return null;
    if (f.until <= Date.now()) {
      this.failed.delete(url);
      return null;
    }
    return f.err;
  }

  /** Keep `urls` in memory while they are displayed. */
  pin(urls) {
    this.pinned = new Set(urls.filter(Boolean));
  }

  /** Decode (from the blob cache) or fetch now, at high priority. */
  load(url, { signal } = {}) {
    const bm = this.bitmaps.get(url);
    if (bm) return Promise.resolve(bm);
    if (this.blobs.has(url)) return this.decode(url);
    const cur = this.inflight.get(url);
    if (cur) {
      cur.foreground = true; // never aborted as a far prefetch now
      return cur.promise.then(() => this.decode(url));
    }
    return this.fetch(url, { prio: -1, foreground: true, signal }).then(() => this.decode(url));
  }

  /** Replace the prefetch list. Entries already cached are skipped; near ones are decoded too. */
  want(list, { decodeWithin = 20 } = {}) {
    const wanted = new Map();
    for (const { url, prio } of list) if (!wanted.has(url)) wanted.set(url, prio);
    this.queue = [];
    for (const [url, prio] of wanted) {
      if (this.failure(url) || this.inflight.has(url) || this.decoding.has(url)) continue;
      if (this.bitmaps.has(url)) continue;
      if (this.blobs.has(url)) {
        // Near and already downloaded: decode now (off the main thread), ready to draw.
        if (prio <= decodeWithin) this.decode(url).then(() => this.onLoaded(url), () => {});
        continue;
      }
      this.queue.push({ url, prio });
    }
    this.queue.sort((a, b) => a.prio - b.prio);
    // Abort in-flight prefetches that are no longer wanted, or far while
    // something clearly nearer waits for a slot; a far download with
    // nothing better to do is left to finish (its bytes are not wasted).
    this.decodeWithin = decodeWithin;
    const nearestWaiting = this.queue[0]?.prio ?? Infinity;
    for (const [url, job] of this.inflight) {
      if (job.foreground) continue;
      const p = wanted.get(url);
      if (p === undefined || (p > this.abortPrio && p > nearestWaiting + 8)) {
        job.ac.abort();
        this.inflight.delete(url);
      } else job.prio = p;
    }
    this.pump();
  }

  /** Take prefetch slots away while something more important downloads. */
  hold(n) {
    this.paused = Math.max(0, n);
    if (!n) this.pump();
  }

  busy() {
    let n = 0;
    for (const job of this.inflight.values()) if (!job.foreground) n += 1;
    return n;
  }

  /** Stop all prefetching (e.g. until the first image is on screen) or allow it again. */
  block(on) {
    this.blocked = !!on;
    if (!on) this.pump();
  }

  pump() {
    if (this.blocked) return;
    let limit = Math.max(1, this.concurrency - this.paused);
    // What the reader waits for gets the link: one prefetch at most beside it.
    for (const job of this.inflight.values()) {
      if (job.foreground) {
        limit = 1;
        break;
      }
    }
    const wait = this.pausedUntil - Date.now();
    if (wait > 0) {
      // Backing off after network/server errors: try again later, not in a tight loop.
      if (!this.pumpTimer) {
        this.pumpTimer = setTimeout(() => {
          this.pumpTimer = 0;
          this.pump();
        }, wait);
      }
      return;
    }
    while (this.queue.length) {
      if (this.busy() >= limit) break;
      const next = this.queue.shift();
      this.fetch(next.url, { prio: next.prio, foreground: false }).then(
        () => {
          if (next.prio <= this.decodeWithin) this.decode(next.url).catch(() => {});
        },
        () => {},
      );
    }
  }

  fetch(url, { prio, foreground, signal }) {
    const ac = new AbortController();
    const onAbort = () => ac.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    const job = { ac, prio, foreground, promise: null };
    const preloaded = this.preloads.delete(url); // only the first request can take the preloaded response
    job.promise = fetchImageBlob(url, { signal: ac.signal, priority: foreground ? 'high' : 'low', preloaded })
      .then((blob) => {
        this.blobs.set(url, blob);
        this.failed.delete(url);
        this.backoff = 0;
        this.onLoaded(url);
        return blob;
      })
      .catch((err) => {
        if (err.name !== 'AbortError') {
          if (isTransient(err)) {
            this.backoff = Math.min(BACKOFF_MAX_MS, this.backoff ? this.backoff * 2 : BACKOFF_MIN_MS);
            this.pausedUntil = Date.now() + this.backoff;
            this.failed.set(url, { err, until: this.pausedUntil });
            if (!foreground) {
              // Back in line: it is still wanted once the link recovers.
              this.queue.push({ url, prio });
              this.queue.sort((a, b) => a.prio - b.prio);
            }
          } else this.failed.set(url, { err, until: Infinity });
          this.onFailed(url, err);
        }
        throw err;
      })
      .finally(() => {
        signal?.removeEventListener('abort', onAbort);
        if (this.inflight.get(url) === job) this.inflight.delete(url);
        this.pump();
      });
    this.inflight.set(url, job);
    return job.promise;
  }

  decode(url) {
    const bm = this.bitmaps.get(url);
    if (bm) return Promise.resolve(bm);
    const cur = this.decoding.get(url);
    if (cur) return cur;
    const blob = this.blobs.get(url);
    if (!blob) return Promise.reject(new ImageError(0, 'not loaded'));
    const p = createImageBitmap(blob)
      .then((bitmap) => {
        this.bitmaps.set(url, bitmap, (k) => this.pinned.has(k));
        return bitmap;
      })
      .catch((err) => {
        // A broken blob is dropped so the next request fetches it again.
        this.blobs.delete(url);
        throw new ImageError(0, `cannot decode the image (${err.message || err})`);
      })
      .finally(() => this.decoding.delete(url));
    this.decoding.set(url, p);
    return p;
  }

  /** Forget failures (e.g. "preview pending" on a study still arriving) so they are tried again. */
  retryFailed() {
    this.failed.clear();
  }

  abortAll() {
    for (const job of this.inflight.values()) job.ac.abort();
    this.inflight.clear();
    this.queue = [];
  }
}

/**
 * The prefetch list around `index` in a stack of `count`: every position
 * ordered by distance, ahead of the scroll direction slightly preferred, up
 * to `radius` either side (`fillAll` adds the rest of the stack after).
 */
export function neighbourOrder(index, count, dir = 1, radius = 40, fillAll = true) {
  const out = [];
  const max = fillAll ? count : radius + 1;
  for (let d = 1; d < max; d += 1) {
    const ahead = index + d * (dir >= 0 ? 1 : -1);
    const behind = index - d * (dir >= 0 ? 1 : -1);
    // Behind counts as 1.5x as far: the reader is probably going on.
    if (ahead >= 0 && ahead < count) out.push({ i: ahead, prio: d });
    if (behind >= 0 && behind < count) out.push({ i: behind, prio: Math.ceil(d * 1.5) });
  }
  return out.sort((a, b) => a.prio - b.prio);
}
