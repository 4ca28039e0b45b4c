// The DICOM viewer page (/viewer?study=UID): page wiring.
//
//   viewer-study.js   summary bar, series panel, series instance lists
//   viewer-display.js which image to draw, what to fetch, overlay, navigation
//   viewer-stack.js   image fetching, prefetch queue, bounded caches
//   viewer-canvas.js  drawing, zoom/pan, tools, measurements, client W/L
//   viewer-meta.js    per-instance windows/spacing, the tag panel
//   viewer-report.js  worklist claim and report editor / read-only report
//                     (imported once the first image is drawn: not on its path)
//
// Loading on a thin link: the selected slice's preview first, then its
// neighbours by distance (bounded concurrency, far work aborted); a
// full-fidelity render of the current slice only when the window, zoom or
// "full quality" asks for it, debounced, with the preview (re-windowed on
// the client) on screen meanwhile.
//
// Start-up: the server puts the study, the first series' instance list and
// the first image's choice into the page (#mr-initial) and preloads that
// preview, so the first image needs no API round trip once the modules run;
// without that block the study and the list are fetched. The session, clinic
// names and the report panel never hold up the first image.
//
// PHI rule: nothing is logged to the console.

import { api, el, session, header, testHook, toast, $, $$, t, onLang } from './app-common.js';
import { ImageStore, errorOf } from './viewer-stack.js';
import { failReporter, liveNodes, nodesText, withErrNodes } from './msg-nodes.js';
import { ImageView, TOOLS } from './viewer-canvas.js';
import { MetaStore, TagPanel } from './viewer-meta.js';
import { BITMAP_PIXELS, clamp, createDisplay, framesOf, round2 } from './viewer-display.js';
import { SeriesPanel, mainModality, renderSummary } from './viewer-study.js';

// Labels: viewer.preset.<id>.
const CT_PRESETS = [
  { id: 'brain', wc: 40, ww: 80 },
  { id: 'lung', wc: -600, ww: 1500 },
  { id: 'mediastinum', wc: 40, ww: 400 },
  { id: 'bone', wc: 400, ww: 1800 },
  { id: 'abdomen', wc: 60, ww: 400 },
];
const REFRESH_MS = 60000;
const REPORT_MODULE_WAIT_MS = 4000; // the report panel's code waits for the first image at most this long
const enc = encodeURIComponent;

const hook = testHook('viewer', {
  study: null,
  series: null,
  index: 0,
  count: 0,
  frame: 0,
  frames: 1,
  wc: null,
  ww: null,
  preset: 'default',
  zoom: 1,
  tool: 'scroll',
  previewsLoaded: 0,
  fullLoaded: 0,
  fullPending: false,
  showing: null, // 'preview' | 'approx' | 'full'
  firstImageMs: null,
  initial: false, // the page came with the study and first series (no API round trips before the first image)
  cinePlaying: false,
  claimedBy: null,
  state: null,
  reportSaved: null,
  signedVersion: null,
  errors: [],
  ready: false,
});

const S = {
  user: null,
  uid: '',
  study: null,
  worklist: null,
  seriesRows: [],
  seriesUid: null,
  modality: '',
  items: [],
  index: 0,
  frame: 0,
  dir: 1,
  win: null, // explicit window {wc, ww}; null = the dataset's own
  preset: 'default',
  fullQuality: false,
  shown: null, // {key, kind, sop, frame}
  lastFull: null, // {key, sop, frame, win}
  fullWanted: null,
  fullAc: null,
  fullTimer: 0,
  wlBase: null,
  wlDragging: false,
  framesActive: false,
  measures: new Map(), // "sop:frame" -> [{type, pts}]
  metaTimer: 0,
  cine: { playing: false, timer: 0, stalled: false },
  colourWarned: false,
};

/* ------------------------------------------------------------------ */
/* Errors                                                              */
/* ------------------------------------------------------------------ */

/** `fail(whatKey, err, whatArgs)`: a toast (re-translated on a switch) and the test hook. */
const fail = failReporter(hook, { errorOf, dedupeMs: 5000 });


/** Shows message `key` in `e` as data-i18n, so a language switch re-translates it. */
function say(e, key, args) {
  e.dataset.i18n = key;
  if (args) e.dataset.i18nArgs = JSON.stringify(args);
  else delete e.dataset.i18nArgs;
  e.textContent = t(key, args);
}

/* ------------------------------------------------------------------ */
/* Elements, modules                                                   */
/* ------------------------------------------------------------------ */

const ui = {
  main: $('#viewer'),
  summary: $('#study-bar'),
  canvas: $('#canvas'),
  stage: $('#stage'),
  msg: $('#stage-msg'),
  spinner: $('#spinner'),
  ov: { tl: $('#ov-tl'), tr: $('#ov-tr'), bl: $('#ov-bl'), br: $('#ov-br') },
  slider: $('#slider'),
  pos: $('#pos'),
  progress: $('#progress'),
  presets: $('#presets'),
  full: $('#full-quality'),
  tagsToggle: $('#tags-toggle'),
  tagsPanel: $('#tags-panel'),
  cinePlay: $('#cine-play'),
  fps: $('#cine-fps'),
  frameSlider: $('#frame-slider'),
  framePos: $('#frame-pos'),
  cineState: $('#cine-state'),
  fatal: $('#fatal'),
};

const store = new ImageStore({
  concurrency: 4,
  maxPixels: BITMAP_PIXELS,
  abortPrio: 24,
  onLoaded: () => D.scheduleProgress(),
  onFailed: () => D.scheduleProgress(),
});
store.block(true); // until the first image is drawn (or could not be)

let firstDone;
const firstSettled = new Promise((resolve) => (firstDone = resolve));
/** The first image had the link to itself (drawn, failed, or none): now the neighbours, thumbnails, the report panel's code. */
function startBackground() {
  store.block(false);
  series.enableThumbs();
  firstDone();
}
const meta = new MetaStore(fail);
const tagPanel = new TagPanel(ui.tagsPanel, $('#tags-filter'), meta, fail);
const series = new SeriesPanel($('#series-list'), (uid) => openSeries(uid), fail);
const view = new ImageView(ui.canvas, {
  onScroll: (n) => step(n),
  onWindowDrag,
  onViewChange: () => {
    hook.zoom = round2(view.zoom);
    present();
  },
  onMeasure: () => {
    const sop = cur()?.sop_instance_uid;
    if (sop && !facts(cur())?.spacing) meta.info(sop).then(() => !facts(cur())?.spacing && ensureTags(sop), () => ensureTags(sop));
    overlay();
  },
});
let report = null;

const D = createDisplay({
  S, hook, ui, store, view, meta, tagPanel, fail, startBackground,
  buildPresets: () => buildPresets(),
  presetName: (id) => presetName(id),
  report: () => report,
});
const { cur, present, prefetch, cancelFull, overlay, scheduleProgress, sync, go, step, stepFrame, settleMeta, ensureTags } = D;
const { setMsg, facts, colour, datasetWindow, baseWindow, seriesModality, measureList, previewUrl } = D;

/* ------------------------------------------------------------------ */
/* Series                                                              */
/* ------------------------------------------------------------------ */

async function openSeries(uid, { index = 0 } = {}) {
  if (!uid) return;
  stopCine();
  cancelFull();
  S.seriesUid = uid;
  series.setActive(uid);
  S.items = [];
  S.shown = null;
  view.show(null); // a blank stage, not the other series' image
  view.setMeasurements([], null);
  S.framesActive = false;
  S.win = null;
  S.preset = 'default';
  view.fit();
  sync();
  setMsg('viewer.loading_series');
  let items;
  try {
    items = await series.instances(uid);
  } catch (e) {
    fail('viewer.fail.series', e);
    setMsg('viewer.series_failed', {}, errorOf(e));
    return;
  }
  if (S.seriesUid !== uid) return;
  S.items = items;
  if (!items.length) {
    setMsg('viewer.series_empty');
    overlay();
    return;
  }
  S.index = clamp(index, 0, items.length - 1);
  S.frame = 0;
  S.dir = 1;
  buildPresets();
  const item = cur();
  const f = framesOf(item);
  if (f > 1) setFps(item);
  present();
  prefetch();
  scheduleProgress();
  settleMeta();
  const url = new URL(location.href);
  url.searchParams.set('series', uid);
  history.replaceState(null, '', url);
}

/* ------------------------------------------------------------------ */
/* Window / level                                                      */
/* ------------------------------------------------------------------ */

function presetList() {
  const ws = facts(cur())?.windows || [];
  // A label is a message key (`key`, `args`) and/or the dataset's own window name (`name`, data).
  const list = [{ id: 'default', key: ws.length || seriesModality() === 'CT' ? 'viewer.preset.default' : 'viewer.preset.auto', name: ws[0]?.name || '', win: null }];
  ws.slice(1).forEach((w, i) =>
    list.push({ id: `dataset-${i + 1}`, key: w.name ? '' : 'viewer.preset.dataset', args: { n: i + 2 }, name: w.name || '', win: { wc: w.wc, ww: w.ww } }),
  );
  if (seriesModality() === 'CT') for (const p of CT_PRESETS) list.push({ id: p.id, key: `viewer.preset.${p.id}`, win: { wc: p.wc, ww: p.ww } });
  return list;
}

/** A preset's label for the overlay, as nodes (or null). */
function presetName(id) {
  const p = presetList().find((x) => x.id === id);
  return p ? presetLabel(p) : null;
}

/** A preset's label as nodes: the message, and the dataset's window name as data. */
function presetLabel(p) {
  const parts = [];
  if (p.key) parts.push(el('span', { i18n: p.key, i18nArgs: p.args }));
  if (p.key && p.name) parts.push(' · ');
  if (p.name) parts.push(el('span', { translate: 'no' }, p.name));
  return parts;
}

function buildPresets() {
  const list = presetList();
  const key = list.map((p) => p.id).join(',');
  if (ui.presets.dataset.key !== key) {
    ui.presets.dataset.key = key;
    ui.presets.replaceChildren(
      ...list.map((p, i) =>
        el(
          'button',
          {
            type: 'button',
            class: 'preset',
            dataset: { test: 'preset', preset: p.id },
            i18nTitle: p.win ? 'viewer.preset.window_tip' : 'viewer.preset.own_tip',
            i18nArgs: p.win ? { ww: p.win.ww, wc: p.win.wc, i } : { i },
            onclick: () => applyPreset(p.id),
          },
          presetLabel(p),
        ),
      ),
    );
  }
  for (const b of $$('button', ui.presets)) b.setAttribute('aria-pressed', String(b.dataset.preset === S.preset));
  ui.presets.classList.toggle('disabled', colour(cur()));
}

function applyPreset(id) {
  const p = presetList().find((x) => x.id === id);
  if (!p) return;
  if (p.win && colour(cur())) return colourNotice();
  setWindow(p.win, id);
}

function setWindow(win, presetId = 'custom') {
  S.win = win ? { wc: win.wc, ww: Math.max(1, win.ww) } : null;
  S.preset = presetId;
  buildPresets();
  present();
}

function colourNotice() {
  if (!S.colourWarned) toast(el('span', { i18n: 'viewer.colour_no_wl' }), 'info');
  S.colourWarned = true;
}

function onWindowDrag(phase, dx, dy) {
  const item = cur();
  if (!item) return;
  if (colour(item)) {
    if (phase === 'start') colourNotice();
    return;
  }
  if (phase === 'start') {
    S.wlBase = S.win || baseWindow(item);
    S.wlDragging = true;
    cancelFull();
    return;
  }
  if (phase === 'end') {
    S.wlDragging = false;
    present();
    return;
  }
  const b = S.wlBase;
  // Width scales with the gesture so a brain window and a radiograph both feel right.
  const ww = clamp(b.ww * Math.exp(dx / 200), 1, 100000);
  const wc = b.wc + (dy * b.ww) / 300;
  const r = (v) => (ww >= 20 ? Math.round(v) : round2(v));
  setWindow({ wc: r(wc), ww: r(ww) }, 'custom');
}

/* ------------------------------------------------------------------ */
/* Cine                                                                */
/* ------------------------------------------------------------------ */

function setFps(item) {
  const ms = facts(item)?.frameTimeMs;
  if (!ms) return;
  const want = 1000 / ms;
  const opts = [...ui.fps.options].map((o) => Number(o.value));
  const best = opts.reduce((a, b) => (Math.abs(b - want) < Math.abs(a - want) ? b : a), opts[0]);
  ui.fps.value = String(best);
}

function cineNext() {
  const item = cur();
  const frames = framesOf(item);
  if (frames > 1) return { index: S.index, frame: (S.frame + 1) % frames };
  return { index: (S.index + 1) % S.items.length, frame: 0 };
}

function playCine() {
  if (!S.items.length || (S.items.length < 2 && framesOf(cur()) < 2)) return;
  S.cine.playing = true;
  S.framesActive = true;
  cancelFull();
  prefetch();
  say(ui.cinePlay, 'viewer.pause');
  ui.cinePlay.setAttribute('aria-pressed', 'true');
  const tick = () => {
    if (!S.cine.playing) return;
    const { index, frame } = cineNext();
    const url = previewUrl(S.items[index], frame);
    if (store.peek(url)) {
      S.cine.stalled = false;
      go(index, frame);
    } else {
      // Not here yet: wait for it rather than skip (and say so).
      S.cine.stalled = true;
      if (store.hasBlob(url)) store.decode(url).catch(() => {});
      else if (store.failure(url)) go(index, frame);
    }
    ui.cineState.textContent = S.cine.stalled ? t('viewer.buffering') : '';
    S.cine.timer = setTimeout(tick, 1000 / Number(ui.fps.value || 10));
  };
  tick();
  sync();
}

function stopCine() {
  if (!S.cine.playing) return;
  S.cine.playing = false;
  clearTimeout(S.cine.timer);
  say(ui.cinePlay, 'viewer.play');
  ui.cinePlay.setAttribute('aria-pressed', 'false');
  ui.cineState.textContent = '';
  present();
  sync();
}

const toggleCine = () => (S.cine.playing ? stopCine() : playCine());

/* ------------------------------------------------------------------ */
/* Controls                                                            */
/* ------------------------------------------------------------------ */

function setTool(t) {
  if (!TOOLS.includes(t)) return;
  view.setTool(t);
  for (const b of $$('.tool')) b.setAttribute('aria-pressed', String(b.dataset.tool === t));

  sync();
}

function resetView() {
  view.cancelPending();
  S.win = null;
  S.preset = 'default';
  buildPresets();
  view.fit();
}

function toggleTags(force) {
  const open = force ?? ui.tagsPanel.hidden;
  ui.tagsPanel.hidden = !open;
  ui.tagsToggle.setAttribute('aria-pressed', String(open));
  if (open && cur()) {
    tagPanel.show(cur().sop_instance_uid);
    $('#tags-filter').focus();
  }
}

function toggleHelp(force) {
  const p = $('#help-panel');
  const open = force ?? p.hidden;
  p.hidden = !open;
  $('#help-toggle').setAttribute('aria-pressed', String(open));
}

function togglePanel(btn, cls) {
  const hidden = ui.main.classList.toggle(cls);
  btn.setAttribute('aria-pressed', String(!hidden));
  view.resize();
}

function bindControls() {
  for (const b of $$('.tool')) b.addEventListener('click', () => setTool(b.dataset.tool));
  $('#fit').addEventListener('click', () => view.fit());
  $('#reset').addEventListener('click', resetView);
  $('#clear-measures').addEventListener('click', () => {
    const item = cur();
    if (!item) return;
    view.cancelPending();
    measureList(item, S.frame).length = 0;
    view.requestDraw();
  });
  ui.full.addEventListener('click', () => {
    S.fullQuality = !S.fullQuality;
    ui.full.setAttribute('aria-pressed', String(S.fullQuality));
    present();
  });
  ui.tagsToggle.addEventListener('click', () => toggleTags());
  $('#tags-close').addEventListener('click', () => toggleTags(false));
  $('#help-toggle').addEventListener('click', () => toggleHelp());
  $('#help-panel').addEventListener('click', () => toggleHelp(false));
  $('#toggle-series').addEventListener('click', (ev) => togglePanel(ev.currentTarget, 'no-series'));
  $('#toggle-side').addEventListener('click', (ev) => togglePanel(ev.currentTarget, 'no-side'));
  ui.slider.addEventListener('input', () => go(Number(ui.slider.value), 0));
  $('#prev').addEventListener('click', () => step(-1));
  $('#next').addEventListener('click', () => step(1));
  ui.cinePlay.addEventListener('click', toggleCine);
  ui.frameSlider.addEventListener('input', () => {
    S.framesActive = true;
    go(S.index, Number(ui.frameSlider.value));
  });
  ui.msg.addEventListener('click', () => {
    store.retryFailed();
    present();
    prefetch();
  });
  document.addEventListener('keydown', onKey);
}

function onKey(ev) {
  if (ev.defaultPrevented || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  const t = ev.target;
  const onSlider = t === ui.slider || t === ui.frameSlider;
  if (!onSlider && t instanceof HTMLElement && (t.isContentEditable || t.closest('input, textarea, select, dialog'))) return;
  // A focused slider moves itself with the arrow/page keys (its input event does the rest).
  if (onSlider && /^(Arrow|Page|Home|End)/.test(ev.key)) return;
  if (document.querySelector('dialog[open]')) return;
  const n = S.items.length;
  const k = ev.key;
  const act = {
    ArrowUp: () => step(-1),
    ArrowDown: () => step(1),
    ArrowLeft: () => stepFrame(-1),
    ArrowRight: () => stepFrame(1),
    PageUp: () => step(-10),
    PageDown: () => step(10),
    Home: () => go(0, 0),
    End: () => go(n - 1, 0),
    ' ': toggleCine,
    Escape: () => view.cancelPending() || (toggleHelp(false), toggleTags(false)),
    '?': () => toggleHelp(),
    Delete: () => view.undoMeasure(),
    Backspace: () => view.undoMeasure(),
  }[k];
  const letter = {
    w: () => setTool('wl'),
    z: () => setTool('zoom'),
    p: () => setTool('pan'),
    l: () => setTool('length'),
    a: () => setTool('angle'),
    s: () => setTool('scroll'),
    r: resetView,
    f: () => view.fit(),
    t: () => toggleTags(),
  }[k.toLowerCase()];
  if (act) {
    ev.preventDefault();
    act();
    return;
  }
  if (letter && k.length === 1) {
    ev.preventDefault();
    letter();
    return;
  }
  if (/^[0-9]$/.test(k)) {
    const p = presetList()[Number(k)];
    if (p) {
      ev.preventDefault();
      applyPreset(p.id);
    }
  }
}

/* ------------------------------------------------------------------ */
/* Start                                                               */
/* ------------------------------------------------------------------ */

/** The page cannot show the study: message `key` (its `{error}` from `err`, rebuilt on a switch) and a way back. */
function fatal(key, err) {
  const build = () => (err ? withErrNodes(key, {}, errorOf(err)) : [t(key)]);
  const text = nodesText(build());
  liveNodes(ui.fatal, () => [
    el('span', {}, build()),
    el('br'),
    el('a', { href: '/', class: 'button', dataset: { test: 'home' }, i18n: 'viewer.back' }),
  ]);
  ui.fatal.hidden = false;
  ui.main.hidden = true;
  ui.main.setAttribute('aria-busy', 'false');
  hook.errors.push(text);
}

async function loadStudy(pending) {
  const r = await (pending || api(`/api/studies/${enc(S.uid)}`));
  S.study = r?.study || null;
  S.worklist = r?.worklist || null;
  return r;
}

let clinicName = '';
function showSummary() {
  renderSummary(ui.summary, { study: S.study, worklist: report?.worklist ?? S.worklist, clinicName });
}

async function refreshStudy() {
  const r = await loadStudy();
  const rows = Array.isArray(r?.series) ? r.series : [];
  if (rows.length !== S.seriesRows.length) {
    S.seriesRows = rows;
    series.setSeries(rows);
    series.loadAll(1);
  } else S.seriesRows = rows;
  // Images still arriving in the open series: take the longer list, stay on the same image.
  const row = rows.find((x) => x.series_uid === S.seriesUid);
  if (row && row.num_instances > S.items.length) {
    const uid = S.seriesUid;
    const sop = cur()?.sop_instance_uid;
    const items = await series.instances(uid, { fresh: true });
    if (S.seriesUid === uid && items.length >= S.items.length) {
      S.items = items;
      S.index = Math.max(0, items.findIndex((i) => i.sop_instance_uid === sop));
      present();
      prefetch();
      scheduleProgress();
    }
  }
  showSummary();
  return r;
}

/**
 * What the server put into the page (`<script type="application/json" id="mr-initial">`):
 * the study and the first series' list as the API would return them, and the
 * first image (which the page also preloads). Only for this study; else null.
 */
function readInitial(uid) {
  const node = document.getElementById('mr-initial');
  if (!node || !uid) return null;
  try {
    const d = JSON.parse(node.textContent || '');
    if (!d || d.study_uid !== uid || !d.study || typeof d.study !== 'object') return null;
    return d;
  } catch {
    return null; // unreadable: load as without it
  }
}

/** Take the injected series lists; the injected first image as {uid, index} in them, or null. */
function seedInitial(init) {
  const lists = init?.series_instances && typeof init.series_instances === 'object' ? init.series_instances : {};
  const seeded = Object.keys(lists).map((uid) => [uid, series.seed(uid, lists[uid]) || []]);
  const sop = init?.first_instance;
  if (!sop) return null;
  for (const [uid, list] of seeded) {
    const index = list.findIndex((i) => i.sop_instance_uid === sop);
    if (index >= 0) return { uid, index };
  }
  return null;
}

async function main() {
  const params = new URLSearchParams(location.search);
  S.uid = (params.get('study') || '').trim();
  hook.study = S.uid;
  bindControls();
  const init = readInitial(S.uid);
  hook.initial = !!init;
  // Everything starts now and in parallel. Only the study, the series list and
  // the first preview are on the way to the first image (and with the data the
  // server put into the page, only the preview, already preloaded); the session
  // (header, report panel), clinic names and the report panel's own requests
  // fill in as they arrive. A 401 from any of them goes to login (api() does it).
  const userP = session().then((user) => {
    S.user = user;
    header(user, '/viewer');
    return user;
  });
  userP.catch((e) => {
    if (e?.status !== 401) fatal('viewer.start_failed', e);
  });
  if (!S.uid) {
    if (await userP.catch(() => null)) fatal('viewer.no_study');
    return;
  }
  const studyP = init ? Promise.resolve(init.study) : api(`/api/studies/${enc(S.uid)}`);
  const clinics = api('/api/clinics').catch(() => null); // the clinic id is shown instead
  let r;
  try {
    r = await loadStudy(studyP);
  } catch (e) {
    if (e.status === 401) return;
    return e.status === 404 ? fatal('viewer.not_found') : fatal('viewer.study_failed', e);
  }
  clinics.then((c) => {
    clinicName = (c?.clinics || []).find((x) => x.id === S.study?.clinic_id)?.name || '';
    if (clinicName) showSummary();
  });
  S.seriesRows = Array.isArray(r?.series) ? r.series : [];
  S.modality = mainModality(S.study, S.seriesRows);
  showSummary();
  series.setSeries(S.seriesRows);
  // Where to start: the series in the URL (the viewer keeps it there, so a reload
  // stays put); else the image the server chose and preloaded (first series in
  // its order, lowest instance number); else the first series with images, first image.
  const asked = series.rows.find((x) => x.series_uid === params.get('series'));
  const pick = init ? seedInitial(init) : null;
  let opening;
  if (pick && (!asked || asked.series_uid === pick.uid)) {
    store.expectPreload(init.first_preview);
    opening = openSeries(pick.uid, { index: pick.index });
  } else {
    const first = asked || series.rows.find((x) => (x.num_instances ?? 1) > 0) || series.rows[0];
    opening = first ? openSeries(first.series_uid) : Promise.resolve(setMsg('viewer.study_empty'));
  }

  const noImage = () => S.items.length || startBackground(); // nothing to show first: thumbnails now
  opening.then(noImage, noImage);

  // The report panel's module is not needed for the first image: fetched after it
  // (or after a while, if that image is slow), so its bytes do not delay it.
  const later = Promise.race([firstSettled, new Promise((resolve) => setTimeout(resolve, REPORT_MODULE_WAIT_MS))]);
  const reportReady = Promise.all([userP, later.then(() => import('./viewer-report.js'))]).then(([user, { ReportPanel }]) => {
    report = new ReportPanel($('#report-root'), {
      user,
      uid: S.uid,
      modality: S.modality,
      fail,
      onChange: () => {
        sync();
        showSummary();
      },
      reloadStudy: () => refreshStudy(),
      dialogs: { sign: $('#sign-dialog'), ret: $('#return-dialog'), template: $('#template-dialog') },
    });
    const ready = report.init(S.worklist);
    sync();
    showSummary();
    return ready;
  });
  const [, rep] = await Promise.allSettled([opening, reportReady]);
  if (!S.user) return; // no session: login, or the page already says why
  if (rep.status === 'rejected') fail('viewer.fail.report_panel', rep.reason);
  ui.main.setAttribute('aria-busy', 'false');
  hook.ready = true;
  sync();
  series.loadAll(1); // thumbnails: one list at a time, the link is for the images

  setInterval(() => {
    if (document.visibilityState !== 'visible') return;
    refreshStudy()
      .then((x) => report?.setWorklist(x?.worklist || null))
      .catch((e) => fail('viewer.fail.refresh', e));
    if (S.study?.status === 'receiving') {
      store.retryFailed();
      prefetch();
    }
  }, REFRESH_MS);
}

// A language switch: data-i18n elements are re-translated in place; what is
// built with t() (summary, overlay, progress, tag list, measurement labels)
// is rebuilt. The study, series, slice, window and zoom stay.
onLang(() => {
  showSummary();
  overlay();
  scheduleProgress();
  if (tagPanel.tags.length && !ui.tagsPanel.hidden) tagPanel.render();
  if (S.cine.playing) ui.cineState.textContent = S.cine.stalled ? t('viewer.buffering') : '';
  view.requestDraw();
});

main().catch((e) => {
  if (e?.status !== 401) fatal('viewer.start_failed', e);
});
