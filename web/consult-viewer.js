// Shared study viewer. Loads a study's instance list from the gateway API,
// shows server-rendered images (`/api/instances/{uid}/rendered`), and lets
// the user scroll, window and point. Every local change is reported through
// `onLocalView` (the page throttles and sends it as a `view` message); remote
// views are applied with `applyView` and never echoed back.
//
// Bandwidth rules for 800 ms RTT links: a render is only requested once a
// drag or scroll has settled, in-flight requests for images no longer wanted
// are aborted, rendered images are kept in a small in-memory cache, and a
// window drag is previewed instantly on the image already shown (an SVG
// linear transfer function) while the exact render is fetched.

import { ApiError, errMessage } from './app-common.js';
import { el, isFiniteNumber, isValidUid, setMsg } from './consult-util.js';
import { onLang, t } from './i18n.js';

const WL_SETTLE_MS = 150; // fetch after a W/L drag has been still this long
const SCROLL_SETTLE_MS = 60; // coalesce fast wheel scrolling
const CACHE_MAX = 60;
const PREFETCH_AHEAD = 2;
const MARKER_MS = 3000;
const RELOAD_MIN_INTERVAL_MS = 10000;
const SIZE_BUCKETS = [256, 512, 768, 1024]; // capped: a phone or laptop never needs more on a thin link

// SOP classes, to guess a starting window for a drag (the API does not say
// which window the dataset's default render used).
const P = '1.2.840.10008.5.1.4.1.1.';
const CT_CLASSES = new Set([P + '2', P + '2.1', P + '2.2']);
const MR_CLASSES = new Set([P + '4', P + '4.1', P + '4.2', P + '4.3', P + '4.4']);
const XRAY_CLASSES = new Set([P + '1', P + '1.1', P + '1.1.1', P + '1.2', P + '1.2.1', P + '1.3', P + '1.3.1']);

// [id, centre, width]; the option shows the message consult.wl.preset.<id>.
const CT_PRESETS = [
  ['soft_tissue', 40, 400],
  ['lung', -600, 1500],
  ['bone', 400, 1800],
  ['brain', 40, 80],
  ['liver', 60, 160],
  ['mediastinum', 50, 350],
];

function familyOf(item, modality) {
  const m = (modality || '').toUpperCase();
  if (m === 'CT' || CT_CLASSES.has(item.sop_class_uid)) return 'ct';
  if (m === 'MR' || MR_CLASSES.has(item.sop_class_uid)) return 'mr';
  if (['CR', 'DX', 'MG', 'RF'].includes(m) || XRAY_CLASSES.has(item.sop_class_uid)) return 'xray';
  return 'other';
}

const FAMILY = {
  ct: { guess: { wc: 40, ww: 400 }, wc: [-1100, 3000], ww: [1, 4000] },
  mr: { guess: { wc: 300, ww: 600 }, wc: [0, 4000], ww: [1, 8000] },
  xray: { guess: { wc: 2048, ww: 4096 }, wc: [0, 16384], ww: [1, 32768] },
  other: { guess: { wc: 128, ww: 256 }, wc: [-128, 512], ww: [1, 1024] },
};

const round2 = (v) => Math.round(v * 100) / 100;
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

/** An ApiError for a failed answer: its `code` and `params` say what to show (errMessage). */
async function responseError(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON */
  }
  const text = body && typeof body.error === 'string' ? body.error : `HTTP ${res.status}`;
  return new ApiError(res.status, text, body);
}

async function getJson(url) {
  const res = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  if (!res.ok) throw await responseError(res);
  return res.json();
}

export class StudyViewer {
  /**
   * @param {HTMLElement} root the viewer panel
   * @param {{onLocalView(view): void, onPoint(point): void}} hooks
   */
  constructor(root, hooks) {
    this.hooks = hooks;
    const q = (sel) => root.querySelector(sel);
    this.ui = {
      form: q('[data-study-form]'),
      input: q('[data-study-input]'),
      series: q('[data-series]'),
      stage: q('[data-stage]'),
      img: q('[data-image]'),
      markers: q('[data-markers]'),
      loading: q('[data-loading]'),
      info: q('[data-info]'),
      status: q('[data-status]'),
      wc: q('[data-wc]'),
      ww: q('[data-ww]'),
      wlText: q('[data-wl-text]'),
      preset: q('[data-preset]'),
      reset: q('[data-wl-reset]'),
      prev: q('[data-prev]'),
      next: q('[data-next]'),
    };
    this.funcs = [...document.querySelectorAll('#wl-preview feFuncR, #wl-preview feFuncG, #wl-preview feFuncB')];

    this.study = null;
    this.items = []; // instance rows, in the API's order (series, instance number)
    this.seriesList = []; // [{uid, label, n, modality, start, count}]
    this.pos = 0;
    this.frame = 0;
    this.win = null; // {wc, ww}, or null for the dataset's own window
    this.shown = null; // {key, win} of the image on screen
    this.wanted = null;
    this.cache = new Map(); // render URL -> blob URL (LRU by insertion order)
    this.inflight = null;
    this.prefetching = null;
    this.renderTimer = null;
    this.lastDir = 1;
    this.loading = null; // {uid, promise, select}
    this.loadSeq = 0;
    this.lastReload = 0;
    this.drag = null;
    this.wheelAcc = 0;
    this.lastSize = 1024;
    this.navigated = false; // last change was a scroll (prefetch worth it)
    // The image's alt text is not a data-i18n attribute: redo it on a language switch.
    onLang(() => {
      if (this.shown) this.ui.img.alt = t('consult.viewer.image_alt', { n: this.shown.pos + 1, total: this.items.length });
    });

    this.bindControls();
    this.bindStage();
  }

  /* ------------------------------------------------------------ */
  /* Public API                                                    */
  /* ------------------------------------------------------------ */

  get current() {
    return this.items[this.pos] || null;
  }

  /** The view message for what is on screen, or null. */
  currentView() {
    const item = this.current;
    if (!item || !this.study) return null;
    const view = { t: 'view', study: this.study, series: item.series_uid, instance: item.sop_instance_uid, frame: this.frame };
    // Without an explicit window the image uses the dataset's own: wc/ww are left out.
    if (this.win) Object.assign(view, { wc: round2(this.win.wc), ww: round2(this.win.ww) });
    return view;
  }

  /** Load a study. `origin` "local" reports the new view; `select` is a view to show once loaded. */
  loadStudy(uid, { origin = 'local', select = null } = {}) {
    uid = String(uid || '').trim();
    if (!isValidUid(uid)) {
      this.setStatus('consult.viewer.bad_uid', { error: true });
      return Promise.resolve(false);
    }
    // Views arrive up to 5/s while someone drags: never restart a load of the same study.
    if (this.loading && this.loading.uid === uid) {
      if (select) this.loading.select = select;
      if (origin === 'local') this.loading.origin = 'local';
      return this.loading.promise;
    }
    const job = { uid, select, origin, promise: null };
    job.promise = this.fetchStudy(job).finally(() => {
      if (this.loading === job) this.loading = null;
    });
    this.loading = job;
    return job.promise;
  }

  async fetchStudy(job) {
    const seq = ++this.loadSeq;
    this.setStatus('consult.viewer.loading');
    const enc = encodeURIComponent(job.uid);
    try {
      const [inst, series] = await Promise.all([
        getJson(`/api/studies/${enc}/instances`),
        getJson(`/api/studies/${enc}/series`).catch(() => null), // labels only
      ]);
      if (seq !== this.loadSeq) return false;
      const items = (Array.isArray(inst?.instances) ? inst.instances : []).filter(
        (r) => r && isValidUid(r.sop_instance_uid) && typeof r.series_uid === 'string',
      );
      if (!items.length) {
        this.setStatus('consult.viewer.no_images', { error: true });
        return false;
      }
      this.adoptStudy(job.uid, items, Array.isArray(series?.series) ? series.series : []);
      this.setStatus(null);
      if (job.select) this.select(job.select, job.origin);
      else this.moveTo(0, 0, job.origin);
      return true;
    } catch (err) {
      if (seq === this.loadSeq) this.setStatus('consult.viewer.load_failed', { error: true, cause: err });
      return false;
    }
  }

  /** Show a view received from another participant (or a test hook). */
  async applyView(v, origin = 'remote') {
    if (!v || !isValidUid(v.study)) return;
    const known = v.study === this.study && (!v.instance || this.indexOf(v.instance) >= 0);
    if (known) {
      this.select(v, origin);
      return;
    }
    if (v.study === this.study) {
      // An instance that arrived after we loaded: refresh the list, but not on every message.
      if (Date.now() - this.lastReload < RELOAD_MIN_INTERVAL_MS) return;
      this.lastReload = Date.now();
      this.study = null; // force a reload
    }
    await this.loadStudy(v.study, { origin, select: v });
  }

  /** Show someone's pointer on the image (if it is the image on screen). */
  showPointer({ instance, x, y, name, from }) {
    const item = this.current;
    if (!item || item.sop_instance_uid !== instance) return false;
    const box = this.contentBox();
    if (!box) return false;
    const stageBox = this.ui.stage.getBoundingClientRect();
    const key = from || 'me';
    this.ui.markers.querySelector(`[data-from="${CSS.escape(key)}"]`)?.remove();
    const marker = el(
      'div',
      { class: from ? 'marker' : 'marker mine', 'data-from': key, role: 'status' },
      el('span', { class: 'dot', 'aria-hidden': 'true' }),
      // Someone's name (data); our own pointer says "You".
      from ? el('span', { class: 'label', translate: 'no', text: name || '' }) : el('span', { class: 'label', i18n: 'consult.you' }),
    );
    marker.style.left = `${box.left - stageBox.left + x * box.width}px`;
    marker.style.top = `${box.top - stageBox.top + y * box.height}px`;
    this.ui.markers.append(marker);
    setTimeout(() => marker.remove(), MARKER_MS);
    return true;
  }

  /* ------------------------------------------------------------ */
  /* Navigation and windowing                                      */
  /* ------------------------------------------------------------ */

  adoptStudy(uid, items, seriesRows) {
    this.study = uid;
    this.items = items;
    this.ui.input.value = uid;
    const bySeries = new Map(seriesRows.map((s) => [s.series_uid, s]));
    this.seriesList = [];
    items.forEach((item, i) => {
      const last = this.seriesList[this.seriesList.length - 1];
      if (last && last.uid === item.series_uid) {
        last.count += 1;
        return;
      }
      const row = bySeries.get(item.series_uid) || {};
      const n = this.seriesList.length + 1;
      const label = [row.modality, row.series_number ?? n, row.description].filter((x) => x !== undefined && x !== '').join(' · ');
      this.seriesList.push({ uid: item.series_uid, label, n, modality: row.modality || '', start: i, count: 1 });
    });
    const sel = this.ui.series;
    sel.replaceChildren(
      // The label is the study's (modality, number, description): data.
      ...this.seriesList.map((s, i) =>
        s.label
          ? el('option', { value: String(i), translate: 'no', text: `${s.label} (${s.count})` })
          : el('option', { value: String(i), i18n: 'consult.viewer.series_n', i18nArgs: { n: s.n, count: s.count } }),
      ),
    );
    sel.disabled = this.seriesList.length < 2;
    this.clearMarkers();
    this.refreshPresets();
  }

  indexOf(instanceUid) {
    return this.items.findIndex((r) => r.sop_instance_uid === instanceUid);
  }

  framesOf(i) {
    const f = Number(this.items[i]?.frames);
    return Number.isInteger(f) && f > 1 ? f : 1;
  }

  seriesIndexOf(pos) {
    let idx = 0;
    this.seriesList.forEach((s, i) => {
      if (s.start <= pos) idx = i;
    });
    return idx;
  }

  family(pos = this.pos) {
    const item = this.items[pos];
    if (!item) return 'other';
    return familyOf(item, this.seriesList[this.seriesIndexOf(pos)]?.modality);
  }

  /**
   * Step through images: frames of a multi-frame instance first, then the
   * next instance, so the wheel works for a CT stack and an ultrasound cine alike.
   */
  step(delta) {
    if (!this.items.length || !delta) return;
    this.lastDir = Math.sign(delta);
    let i = this.pos;
    let f = this.frame + delta;
    while (f < 0 && i > 0) {
      i -= 1;
      f += this.framesOf(i);
    }
    while (f >= this.framesOf(i) && i < this.items.length - 1) {
      f -= this.framesOf(i);
      i += 1;
    }
    this.moveTo(i, clamp(f, 0, this.framesOf(i) - 1), 'local');
  }

  jumpSeries(delta) {
    const s = clamp(this.seriesIndexOf(this.pos) + delta, 0, this.seriesList.length - 1);
    if (this.seriesList[s]) this.moveTo(this.seriesList[s].start, 0, 'local');
  }

  moveTo(pos, frame, origin) {
    const changed = pos !== this.pos || frame !== this.frame || this.shown === null;
    if (changed) this.navigated = true;
    const seriesChanged = this.family(pos) !== this.family(this.pos);
    this.pos = pos;
    this.frame = frame;
    if (seriesChanged) this.refreshPresets();
    this.clearMarkers();
    this.updateInfo();
    this.scheduleRender(SCROLL_SETTLE_MS);
    if (changed && origin === 'local') this.hooks.onLocalView(this.currentView());
  }

  /** Apply a view object (already known to refer to this study). */
  select(v, origin) {
    let pos = v.instance ? this.indexOf(v.instance) : this.pos;
    if (pos < 0) pos = this.pos;
    const frame = clamp(Number.isInteger(v.frame) ? v.frame : 0, 0, this.framesOf(pos) - 1);
    const win = isFiniteNumber(v.wc) && isFiniteNumber(v.ww) && v.ww > 0 ? { wc: v.wc, ww: v.ww } : null;
    const winChanged = !sameWindow(win, this.win);
    this.win = win;
    if (winChanged) this.navigated = false;
    this.refreshPresets();
    this.moveTo(pos, frame, 'none');
    if (winChanged) {
      this.previewWindow();
      this.scheduleRender(WL_SETTLE_MS);
    }
    if (origin === 'local') this.hooks.onLocalView(this.currentView());
  }

  setWindow(win, origin) {
    if (sameWindow(win, this.win)) return;
    this.win = win ? { wc: win.wc, ww: Math.max(1, win.ww) } : null;
    this.navigated = false;
    this.updateWindowControls();
    this.previewWindow();
    this.scheduleRender(WL_SETTLE_MS);
    if (origin === 'local') this.hooks.onLocalView(this.currentView());
  }

  /** Starting point for a drag when the image still shows the dataset's own window. */
  baseWindow() {
    return this.win || { ...FAMILY[this.family()].guess };
  }

  /* ------------------------------------------------------------ */
  /* Rendering                                                     */
  /* ------------------------------------------------------------ */

  renderSize() {
    const r = this.ui.stage.getBoundingClientRect();
    const px = Math.max(r.width, r.height) * (window.devicePixelRatio || 1);
    if (px > 0) this.lastSize = SIZE_BUCKETS.find((b) => px <= b) || SIZE_BUCKETS[SIZE_BUCKETS.length - 1];
    return this.lastSize; // a hidden tab (0 px) keeps the last size
  }

  urlFor(pos, frame, win) {
    const item = this.items[pos];
    const q = new URLSearchParams();
    if (win) {
      q.set('window_center', String(round2(win.wc)));
      q.set('window_width', String(round2(win.ww)));
    }
    q.set('frame', String(frame));
    q.set('size', String(this.renderSize()));
    q.set('format', 'jpeg');
    q.set('quality', '85');
    return `/api/instances/${encodeURIComponent(item.sop_instance_uid)}/rendered?${q}`;
  }

  scheduleRender(delay) {
    clearTimeout(this.renderTimer);
    this.renderTimer = setTimeout(() => this.render(), delay);
  }

  async render() {
    if (!this.current) return;
    const win = this.win;
    const key = this.urlFor(this.pos, this.frame, win);
    this.wanted = key;
    this.prefetching?.abort();
    const hit = this.cache.get(key);
    if (hit) {
      await this.display(key, hit, win);
      this.prefetch();
      return;
    }
    this.inflight?.abort();
    const ac = new AbortController();
    this.inflight = ac;
    this.ui.loading.hidden = false;
    try {
      const blobUrl = await this.fetchImage(key, ac.signal, 'high');
      if (this.wanted === key) {
        await this.display(key, blobUrl, win);
        this.prefetch();
      }
    } catch (err) {
      if (err.name !== 'AbortError' && this.wanted === key) this.setStatus('consult.viewer.image_failed', { error: true, cause: err });
    } finally {
      if (this.inflight === ac) {
        this.inflight = null;
        this.ui.loading.hidden = true;
      }
    }
  }

  async fetchImage(key, signal, priority) {
    const res = await fetch(key, { signal, credentials: 'same-origin', priority });
    if (!res.ok) throw await responseError(res);
    const blobUrl = URL.createObjectURL(await res.blob());
    this.remember(key, blobUrl);
    return blobUrl;
  }

  remember(key, blobUrl) {
    this.cache.delete(key);
    this.cache.set(key, blobUrl);
    for (const [k, v] of this.cache) {
      if (this.cache.size <= CACHE_MAX) break;
      if (this.shown && this.shown.key === k) continue;
      URL.revokeObjectURL(v);
      this.cache.delete(k);
    }
  }

  /** Swap the image only once decoded, so the preview filter and the new pixels change together. */
  async display(key, blobUrl, win) {
    const probe = new Image();
    probe.src = blobUrl;
    try {
      await probe.decode();
    } catch {
      /* show it anyway */
    }
    if (this.wanted !== key) return;
    this.ui.img.src = blobUrl;
    this.ui.img.alt = t('consult.viewer.image_alt', { n: this.pos + 1, total: this.items.length });
    this.shown = { key, win, pos: this.pos, frame: this.frame };
    this.ui.img.style.filter = '';
    this.ui.stage.classList.add('has-image');
    this.setStatus(null);
    // Touch the LRU order.
    this.cache.delete(key);
    this.cache.set(key, blobUrl);
  }

  /**
   * Fetch the next images in the scroll direction at low priority; only while
   * scrolling (after a window change the neighbours would be a guess that
   * costs three renders on a thin link).
   */
  async prefetch() {
    if (!this.navigated) return;
    const ac = new AbortController();
    this.prefetching = ac;
    let i = this.pos;
    let f = this.frame;
    for (let n = 0; n < PREFETCH_AHEAD; n += 1) {
      f += this.lastDir;
      if (f < 0 || f >= this.framesOf(i)) {
        i += this.lastDir;
        if (i < 0 || i >= this.items.length) return;
        f = this.lastDir > 0 ? 0 : this.framesOf(i) - 1;
      }
      const key = this.urlFor(i, f, this.win);
      if (this.cache.has(key)) continue;
      try {
        await this.fetchImage(key, ac.signal, 'low');
      } catch {
        return;
      }
      if (ac.signal.aborted) return;
    }
  }

  /**
   * Instant, approximate W/L while dragging: re-map the grey levels of the
   * image on screen (rendered with window `from`) to the new window with a
   * linear transfer function. Exact for the linear part of the window; the
   * exact render replaces it once the drag settles.
   */
  previewWindow() {
    const s = this.shown;
    const to = this.win;
    if (!s || !s.win || !to || s.pos !== this.pos || s.frame !== this.frame || !this.funcs.length) {
      return;
    }
    const slope = s.win.ww / to.ww;
    const intercept = (s.win.wc - to.wc) / to.ww + 0.5 - slope / 2;
    for (const f of this.funcs) {
      f.setAttribute('slope', String(slope));
      f.setAttribute('intercept', String(intercept));
    }
    this.ui.img.style.filter = 'url(#wl-preview)';
  }

  /* ------------------------------------------------------------ */
  /* UI                                                            */
  /* ------------------------------------------------------------ */

  bindControls() {
    const u = this.ui;
    u.form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.loadStudy(u.input.value, { origin: 'local' });
    });
    u.series.addEventListener('change', () => {
      const s = this.seriesList[Number(u.series.value)];
      if (s) this.moveTo(s.start, 0, 'local');
    });
    const fromSliders = () => this.setWindow({ wc: Number(u.wc.value), ww: Number(u.ww.value) }, 'local');
    u.wc.addEventListener('input', fromSliders);
    u.ww.addEventListener('input', fromSliders);
    u.preset.addEventListener('change', () => {
      const p = CT_PRESETS.find(([name]) => name === u.preset.value);
      this.setWindow(p ? { wc: p[1], ww: p[2] } : null, 'local');
    });
    u.reset.addEventListener('click', () => this.setWindow(null, 'local'));
    u.prev.addEventListener('click', () => this.step(-1));
    u.next.addEventListener('click', () => this.step(1));
  }

  bindStage() {
    const stage = this.ui.stage;
    stage.addEventListener('contextmenu', (ev) => ev.preventDefault());
    stage.addEventListener('wheel', (ev) => this.onWheel(ev), { passive: false });
    stage.addEventListener('keydown', (ev) => this.onKey(ev));
    stage.addEventListener('pointerdown', (ev) => this.onPointerDown(ev));
    stage.addEventListener('pointermove', (ev) => this.onPointerMove(ev));
    stage.addEventListener('pointerup', (ev) => this.onPointerUp(ev));
    stage.addEventListener('pointercancel', () => {
      this.drag = null;
    });
  }

  onWheel(ev) {
    if (!this.items.length) return;
    ev.preventDefault();
    const dy = ev.deltaMode === 1 ? ev.deltaY * 16 : ev.deltaMode === 2 ? ev.deltaY * 400 : ev.deltaY;
    // A mouse notch (~100 px) is one image; a touchpad's small deltas accumulate.
    if (Math.abs(dy) >= 50) {
      this.wheelAcc = 0;
      this.step(Math.sign(dy));
      return;
    }
    this.wheelAcc += dy;
    if (Math.abs(this.wheelAcc) >= 50) {
      this.step(Math.sign(this.wheelAcc));
      this.wheelAcc = 0;
    }
  }

  onKey(ev) {
    const actions = {
      ArrowUp: () => this.step(-1),
      ArrowLeft: () => this.step(-1),
      ArrowDown: () => this.step(1),
      ArrowRight: () => this.step(1),
      PageUp: () => this.jumpSeries(-1),
      PageDown: () => this.jumpSeries(1),
      Home: () => this.moveTo(0, 0, 'local'),
      End: () => this.moveTo(this.items.length - 1, 0, 'local'),
    };
    const act = actions[ev.key];
    if (act && this.items.length) {
      ev.preventDefault();
      act();
    }
  }

  onPointerDown(ev) {
    if (!this.items.length) return;
    this.ui.stage.focus({ preventScroll: true });
    const mode = ev.button === 2 ? 'wl' : ev.button === 0 ? 'tap' : null;
    if (!mode) return;
    ev.preventDefault();
    this.ui.stage.setPointerCapture?.(ev.pointerId);
    this.drag = { mode, id: ev.pointerId, x0: ev.clientX, y0: ev.clientY, lastY: ev.clientY, moved: false, base: this.baseWindow() };
  }

  onPointerMove(ev) {
    const d = this.drag;
    if (!d || d.id !== ev.pointerId) return;
    const dx = ev.clientX - d.x0;
    const dy = ev.clientY - d.y0;
    if (!d.moved && Math.hypot(dx, dy) > 6) d.moved = true;
    if (!d.moved) return;
    if (d.mode === 'wl') {
      // Width scales multiplicatively so the same gesture works for an 8-bit
      // ultrasound and a 16-bit radiograph; centre moves in proportion to width.
      const ww = clamp(d.base.ww * Math.exp(dx / 200), 1, 65536);
      const wc = d.base.wc + (dy * d.base.ww) / 400;
      this.setWindow({ wc, ww }, 'local');
      return;
    }
    // A left-button or one-finger vertical drag scrolls the stack.
    d.mode = 'scroll';
    const steps = Math.trunc((ev.clientY - d.lastY) / 16);
    if (steps) {
      d.lastY += steps * 16;
      this.step(steps);
    }
  }

  onPointerUp(ev) {
    const d = this.drag;
    if (!d || d.id !== ev.pointerId) return;
    this.drag = null;
    if (d.mode === 'tap' && !d.moved) this.pointAt(ev.clientX, ev.clientY);
  }

  /** The on-screen rectangle of the image pixels (the <img> letterboxes with object-fit: contain). */
  contentBox() {
    const img = this.ui.img;
    if (!img.naturalWidth || !img.naturalHeight) return null;
    const r = img.getBoundingClientRect();
    const scale = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
    const width = img.naturalWidth * scale;
    const height = img.naturalHeight * scale;
    return { left: r.left + (r.width - width) / 2, top: r.top + (r.height - height) / 2, width, height };
  }

  pointAt(clientX, clientY) {
    const box = this.contentBox();
    const item = this.current;
    if (!box || !item) return;
    const x = (clientX - box.left) / box.width;
    const y = (clientY - box.top) / box.height;
    if (x < 0 || x > 1 || y < 0 || y > 1) return;
    this.hooks.onPoint({ instance: item.sop_instance_uid, x: round4(x), y: round4(y) });
  }

  clearMarkers() {
    this.ui.markers.replaceChildren();
  }

  refreshPresets() {
    const fam = this.family();
    const u = this.ui;
    const opts = [
      el('option', { value: '', i18n: 'consult.wl.image_default' }),
      el('option', { value: 'custom', i18n: 'consult.wl.custom', disabled: true }),
    ];
    if (fam === 'ct') {
      for (const [id, c, w] of CT_PRESETS) {
        opts.push(el('option', { value: id, i18n: `consult.wl.preset.${id}`, i18nArgs: { c, w } }));
      }
    }
    u.preset.replaceChildren(...opts);
    const r = FAMILY[fam];
    u.wc.min = String(r.wc[0]);
    u.wc.max = String(r.wc[1]);
    u.ww.min = String(r.ww[0]);
    u.ww.max = String(r.ww[1]);
    this.updateWindowControls();
  }

  updateWindowControls() {
    const u = this.ui;
    const w = this.baseWindow();
    // Widen a slider when a remote or dragged window goes past its range.
    if (w.wc < Number(u.wc.min)) u.wc.min = String(Math.floor(w.wc));
    if (w.wc > Number(u.wc.max)) u.wc.max = String(Math.ceil(w.wc));
    if (w.ww > Number(u.ww.max)) u.ww.max = String(Math.ceil(w.ww));
    u.wc.value = String(w.wc);
    u.ww.value = String(w.ww);
    if (this.win) setMsg(u.wlText, 'consult.wl.value', { c: Math.round(this.win.wc), w: Math.round(this.win.ww) });
    else setMsg(u.wlText, 'consult.wl.default');
    const preset = this.win && CT_PRESETS.find(([, c, ww]) => c === this.win.wc && ww === this.win.ww);
    u.preset.value = preset ? preset[0] : this.win ? 'custom' : '';
  }

  updateInfo() {
    const n = this.items.length;
    if (!n) {
      setMsg(this.ui.info, null);
      return;
    }
    const s = this.seriesIndexOf(this.pos);
    const frames = this.framesOf(this.pos);
    const args = { s: s + 1, ns: this.seriesList.length, i: this.pos + 1, ni: n, f: this.frame + 1, nf: frames };
    setMsg(this.ui.info, frames > 1 ? 'consult.viewer.info_frames' : 'consult.viewer.info', args);
    this.ui.series.value = String(s);
    this.updateWindowControls();
  }

  /**
   * The status line: the message `key` (null: empty), and for a failed
   * request its cause in the user's language (errMessage: the server's
   * code, never its English text). Both stay message keys, so a language
   * switch re-translates them.
   */
  setStatus(key, { error = false, cause = null } = {}) {
    const status = this.ui.status;
    delete status.dataset.i18n;
    status.replaceChildren();
    if (key) {
      const parts = [el('span', { i18n: key })];
      if (cause) {
        const { key: why, args } = errMessage(cause);
        parts.push(' ', el('span', { i18n: why, i18nArgs: args }));
      }
      status.append(...parts);
    }
    status.classList.toggle('error', !!error && !!key);
  }
}

const round4 = (v) => Math.round(v * 10000) / 10000;

function sameWindow(a, b) {
  if (!a || !b) return a === b;
  return round2(a.wc) === round2(b.wc) && round2(a.ww) === round2(b.ww);
}
