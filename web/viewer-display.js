// The current image on the canvas and how it gets there: which image is
// best now (full render, preview re-windowed on the client, or the old
// slice dimmed), what to fetch next (the preview now, neighbours by
// distance, a debounced full-fidelity render), the overlay text and the
// test hook. Stack navigation (go/step) lives here too: it is "what to
// show next".
//
// A factory over the page's shared state (`ctx`), so the page module keeps
// the wiring and this one the display rules.

import { dicomDate, el, personNameFull, t } from './app-common.js';
import { errorOf, isTransient, neighbourOrder } from './viewer-stack.js';
import { liveNodes, withErrNodes } from './msg-nodes.js';
import { isColour } from './viewer-meta.js';

// Starting point for a W/L drag when the dataset has no window (the server then picks one from the pixels).
const GUESS = { CT: { wc: 40, ww: 400 }, MR: { wc: 300, ww: 600 }, PT: { wc: 5, ww: 10 }, CR: { wc: 2048, ww: 4096 }, DX: { wc: 2048, ww: 4096 }, MG: { wc: 2048, ww: 4096 } };
const GUESS_OTHER = { wc: 128, ww: 256 };

export const PREVIEW_SIDE = 1024;
const SIZE_BUCKETS = [512, 768, 1024, 1536, 2048, 3072];
const FULL_DEBOUNCE_MS = 350;
const META_DEBOUNCE_MS = 400;
const PREFETCH_RADIUS = 40;
export const BITMAP_PIXELS = 32e6; // decoded-image budget (~128 MB): fine on a tablet

export const round2 = (v) => Math.round(v * 100) / 100;
export const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
export const framesOf = (item) => (Number(item?.frames) > 1 ? Number(item.frames) : 1);
const enc = encodeURIComponent;

const SEXES = ['M', 'F', 'O'];

/**
 * @param {object} ctx
 *   S, hook, ui, store, view, meta, tagPanel: the page's state and parts;
 *   fail(whatKey, err, whatArgs); startBackground(); buildPresets(); presetName(id); report(): the ReportPanel or null
 */
export function createDisplay(ctx) {
  const { S, hook, ui, store, view, meta, tagPanel, fail, startBackground, buildPresets, presetName } = ctx;
  const cur = () => S.items[S.index] || null;

  /* ---------------- URLs and per-image facts ---------------- */

  function previewUrl(item, frame = 0) {
    const u = enc(item.sop_instance_uid);
    if (!frame) return `/api/instances/${u}/preview`;
    return `/api/instances/${u}/rendered?frame=${frame}&size=${PREVIEW_SIDE}&format=jpeg&quality=80`;
  }

  function nativeSide(item) {
    return Math.max(Number(item.columns) || 0, Number(item.rows) || 0);
  }

  function fullUrl(item, frame) {
    const q = new URLSearchParams();
    q.set('frame', String(frame));
    if (S.win) {
      q.set('window_center', String(round2(S.win.wc)));
      q.set('window_width', String(round2(S.win.ww)));
    }
    const native = nativeSide(item);
    if (!S.fullQuality && view.zoom <= 1.01 && native) {
      // At "fit" the screen cannot show more than this; a 3000 px radiograph costs 4x less.
      const need = view.devicePixelsNeeded();
      const size = SIZE_BUCKETS.find((b) => b >= need) || 0;
      if (size && size < native) q.set('size', String(size));
    }
    if (S.fullQuality) q.set('format', 'png');
    else {
      q.set('format', 'jpeg');
      q.set('quality', '90');
    }
    return `/api/instances/${enc(item.sop_instance_uid)}/rendered?${q}`;
  }

  function facts(item) {
    return (item && meta.known(item.sop_instance_uid)) || null;
  }

  /** The dataset's default window for the series (first known instance), if any. */
  function datasetWindow(item) {
    const f = facts(item);
    if (f?.windows?.length) return f.windows[0];
    for (const it of S.items) {
      const g = meta.known(it.sop_instance_uid);
      if (g?.windows?.length) return g.windows[0];
    }
    return null;
  }

  function seriesModality() {
    return S.seriesRows.find((r) => r.series_uid === S.seriesUid)?.modality || S.modality || '';
  }

  /** The window the preview was rendered with (known or guessed). */
  function baseWindow(item) {
    return datasetWindow(item) || GUESS[seriesModality()] || GUESS_OTHER;
  }

  function colour(item) {
    return isColour(facts(item)?.photometric);
  }

  function inverted(item) {
    return String(facts(item)?.photometric || '').toUpperCase() === 'MONOCHROME1';
  }

  function spaceOf(item, bm) {
    const c = Number(item.columns);
    const r = Number(item.rows);
    if (c > 0 && r > 0 && Math.abs(c / r - bm.width / bm.height) < 0.02 * (c / r)) return { w: c, h: r };
    return { w: bm.width, h: bm.height };
  }

  function measureList(item, frame) {
    const k = `${item.sop_instance_uid}:${frame}`;
    let l = S.measures.get(k);
    if (!l) {
      l = [];
      S.measures.set(k, l);
    }
    return l;
  }

  function needFull() {
    if (S.cine.playing || S.wlDragging) return false;
    if (S.win || S.fullQuality || view.zoom > 1.01) return true;
    // A preview smaller than what the screen shows (a large monitor, a big radiograph).
    const item = cur();
    const pv = item && store.peek(previewUrl(item, S.frame));
    return !!(pv && item && nativeSide(item) > Math.max(pv.width, pv.height) && view.devicePixelsNeeded() > Math.max(pv.width, pv.height) * 1.25);
  }

  /* ---------------- display ---------------- */

  /** Draw the best image we have for the current slice and ask for what is missing. */
  function present() {
    const item = cur();
    if (!item) return;
    const frame = S.frame;
    const sop = item.sop_instance_uid;
    const pKey = previewUrl(item, frame);
    const fKey = needFull() ? fullUrl(item, frame) : null;
    let pick = null;
    if (fKey) {
      const b = store.peek(fKey);
      if (b) pick = { bitmap: b, key: fKey, kind: 'full', srcWin: null };
    }
    if (!pick) {
      const b = store.peek(pKey);
      if (b) pick = { bitmap: b, key: pKey, kind: 'preview', srcWin: baseWindow(item) };
    }
    if (!pick && S.lastFull && S.lastFull.sop === sop && S.lastFull.frame === frame) {
      const b = store.peek(S.lastFull.key);
      if (b) pick = { bitmap: b, key: S.lastFull.key, kind: 'full', srcWin: S.lastFull.win || baseWindow(item) };
    }
    if (pick) {
      const dst = pick.kind === 'full' && pick.key === fKey ? null : S.win || pick.srcWin;
      const approx = !!(dst && pick.srcWin && (dst.wc !== pick.srcWin.wc || dst.ww !== pick.srcWin.ww));
      view.show({ bitmap: pick.bitmap, key: pick.key, space: spaceOf(item, pick.bitmap), srcWin: pick.srcWin, dstWin: dst, invert: inverted(item) });
      view.setMeasurements(measureList(item, frame), facts(item)?.spacing || null);
      store.pin([pick.key, pKey]);
      const isNewFull = pick.kind === 'full' && pick.key === fKey && S.shown?.key !== pick.key;
      if (isNewFull) hook.fullLoaded += 1;
      S.shown = { key: pick.key, kind: approx ? 'approx' : pick.kind, sop, frame };
      hook.showing = S.shown.kind;
      if (hook.firstImageMs === null) {
        requestAnimationFrame(() => {
          if (hook.firstImageMs !== null) return;
          hook.firstImageMs = performance.now();
          startBackground();
        });
      }
      setMsg('');
    }
    // Never let an old slice pass for the new one: dim it until the right image is here.
    ui.stage.classList.toggle('stale', !pick && !!S.shown);
    const err = store.failure(pKey);
    if (!store.peek(pKey)) {
      if (err) {
        if (!pick || S.shown?.sop !== sop) {
          setMsg(isTransient(err) ? 'viewer.no_image_retry' : 'viewer.no_image', {}, errorOf(err));
        }
      } else {
        if (!pick) setMsg('viewer.loading');
        if (waiting.has(pKey)) return finishPresent(fKey);
        waiting.add(pKey);
        store.load(pKey).finally(() => waiting.delete(pKey)).then(
          () => {
            if (cur() === item && S.frame === frame) present();
            scheduleProgress();
          },
          (e) => {
            startBackground();
            if (cur() !== item || S.frame !== frame) return;
            fail('viewer.fail.image', e, { n: S.index + 1 });
            present();
            // The link or server failed: try again when the back-off is over.
            if (isTransient(e)) setTimeout(() => cur() === item && S.frame === frame && present(), store.pausedUntil - Date.now() + 100);
          },
        );
      }
    }
    finishPresent(fKey);
  }

  const waiting = new Set(); // preview URLs present() already waits for

  function finishPresent(fKey) {
    if (fKey && S.shown?.key !== fKey) scheduleFull(fKey);
    else if (!fKey) cancelFull();
    overlay();
  }

  function scheduleFull(fKey) {
    if (S.fullWanted === fKey) return;
    cancelFull();
    S.fullWanted = fKey;
    S.fullTimer = setTimeout(() => {
      const ac = new AbortController();
      S.fullAc = ac;
      const item = cur();
      const frame = S.frame;
      const win = S.win ? { ...S.win } : null;
      setFullPending(true);
      store.hold(3); // leave the link to this image (one prefetch keeps going)
      store
        .load(fKey, { signal: ac.signal })
        .then(() => {
          if (S.fullWanted !== fKey) return;
          S.lastFull = { key: fKey, sop: item.sop_instance_uid, frame, win: win || datasetWindow(item) };
          present();
        })
        .catch((e) => {
          if (e?.name !== 'AbortError') fail('viewer.fail.full', e);
        })
        .finally(() => {
          if (S.fullAc === ac) {
            S.fullAc = null;
            setFullPending(false);
            store.hold(0);
          }
        });
    }, FULL_DEBOUNCE_MS);
  }

  function cancelFull() {
    clearTimeout(S.fullTimer);
    if (S.fullAc) {
      S.fullAc.abort();
      S.fullAc = null;
      store.hold(0);
    }
    S.fullWanted = null;
    setFullPending(false);
  }

  function setFullPending(on) {
    if (hook.fullPending === on) return;
    hook.fullPending = on;
    ui.spinner.hidden = !on;
    overlay();
  }

  /**
   * The stage's message: `key` ('' hides it) with `args`, its `{error}`
   * from `err` (errorOf's {key, args, detail}: the server's technical
   * detail shown beside it as data). Rebuilt on a language switch.
   */
  function setMsg(key, args, err) {
    const m = ui.msg;
    if (!key) {
      liveNodes(m, null);
      m.hidden = true;
      return;
    }
    liveNodes(m, () => [
      el('span', {}, err ? withErrNodes(key, args, err) : t(key, args)),
      err?.detail ? el('span', { class: 'detail', translate: 'no' }, ` (${err.detail})`) : '',
    ]);
    m.hidden = false;
  }

  function overlay() {
    const item = cur();
    const n = S.items.length;
    const row = S.seriesRows.find((r) => r.series_uid === S.seriesUid);
    const frames = framesOf(item);
    const tl = [];
    // Overlay text is built with t() and rebuilt on a language switch (the page calls overlay()).
    if (row) tl.push(el('div', { translate: 'no' }, `${row.modality || ''} ${row.series_number ?? ''} ${row.description || ''}`.trim()));
    if (n) tl.push(el('div', {}, t('viewer.ov.image', { i: S.index + 1, n })));
    if (frames > 1) tl.push(el('div', {}, t('viewer.ov.frame', { i: S.frame + 1, n: frames })));
    ui.ov.tl.replaceChildren(...tl);
    const st = S.study || {};
    const born = dicomDate(st.birth_date);
    const sex = st.sex ? (SEXES.includes(st.sex) ? t(`viewer.sex.${st.sex}`) : st.sex) : '';
    const tr = [
      st.patient_name && el('div', { translate: 'no' }, personNameFull(st.patient_name)),
      st.patient_id && el('div', { translate: 'no' }, st.patient_id),
      (sex || born) && el('div', {}, [sex, born && t('viewer.ov.born', { date: born })].filter(Boolean).join(' · ')),
      st.study_date && el('div', {}, t('viewer.ov.study', { date: dicomDate(st.study_date) })),
    ];
    ui.ov.tr.replaceChildren(...tr.filter(Boolean));
    const w = S.win || datasetWindow(item);
    const wl = colour(item)
      ? t('viewer.ov.colour')
      : w
        ? t('viewer.ov.window', { ww: fmtWin(w.ww), wc: fmtWin(w.wc) })
        : t('viewer.ov.auto');
    const presetLabel = S.preset === 'custom' || colour(item) ? '' : presetName(S.preset);
    ui.ov.bl.replaceChildren(el('div', {}, wl), presetLabel ? el('div', {}, ...presetLabel) : '');
    const quality =
      S.shown?.kind === 'full'
        ? t(S.fullQuality ? 'viewer.ov.full_png' : 'viewer.ov.full')
        : S.shown?.kind === 'approx'
          ? t('viewer.ov.approx')
          : S.shown
            ? t('viewer.ov.preview')
            : '';
    const sp = facts(item)?.spacing;
    ui.ov.br.replaceChildren(
      el('div', {}, t('viewer.ov.zoom', { pct: Math.round(view.zoom * 100) })),
      el('div', {}, [quality, hook.fullPending ? t('viewer.ov.loading_full') : ''].filter(Boolean).join(' · ')),
      sp ? el('div', {}, t('viewer.ov.spacing', { x: round2(sp.col), y: round2(sp.row) })) : '',
    );
    ui.slider.max = String(Math.max(0, n - 1));
    ui.slider.value = String(S.index);
    ui.pos.textContent = n ? `${S.index + 1} / ${n}` : '–';
    ui.frameSlider.hidden = frames <= 1;
    ui.frameSlider.max = String(frames - 1);
    ui.frameSlider.value = String(S.frame);
    ui.framePos.textContent = frames > 1 ? t('viewer.frame_pos', { i: S.frame + 1, n: frames }) : '';
    sync();
  }

  const fmtWin = (v) => (Math.abs(v) >= 10 ? String(Math.round(v)) : String(round2(v)));

  let progressQueued = false;
  function scheduleProgress() {
    if (progressQueued) return;
    progressQueued = true;
    requestAnimationFrame(() => {
      progressQueued = false;
      let loaded = 0;
      let failed = 0;
      for (const it of S.items) {
        const u = previewUrl(it, 0);
        if (store.hasBlob(u) || store.peek(u)) loaded += 1;
        else if (store.failure(u)) failed += 1;
      }
      hook.previewsLoaded = loaded;
      ui.progress.textContent = S.items.length
        ? t(failed ? 'viewer.progress_failed' : 'viewer.progress', { loaded, n: S.items.length, failed })
        : '';
      ui.progress.classList.toggle('done', loaded === S.items.length);
      // A slice that was waiting for its preview gets it here too.
      if (S.shown?.sop !== cur()?.sop_instance_uid && cur() && store.peek(previewUrl(cur(), S.frame))) present();
    });
  }

  function sync() {
    hook.study = S.uid;
    hook.series = S.seriesUid;
    hook.index = S.index;
    hook.count = S.items.length;
    hook.frame = S.frame;
    hook.frames = framesOf(cur());
    const w = S.win || datasetWindow(cur());
    hook.wc = w ? round2(w.wc) : null;
    hook.ww = w ? round2(w.ww) : null;
    hook.preset = S.preset;
    hook.zoom = round2(view.zoom);
    hook.tool = view.tool;
    hook.cinePlaying = S.cine.playing;
    const report = ctx.report();
    if (report) {
      hook.claimedBy = report.claimedBy;
      hook.state = report.state;
      hook.reportSaved = report.reportSaved;
      hook.signedVersion = report.signedVersion;
    } else {
      hook.state = S.worklist?.state || null;
      hook.claimedBy = S.worklist?.state === 'claimed' ? S.worklist.claimed_by || null : null;
    }
  }

  /* ---------------- navigation ---------------- */

  /** Move to image `index` (and `frame`) of the current series. */
  function go(index, frame = 0) {
    const n = S.items.length;
    if (!n) return;
    index = clamp(index, 0, n - 1);
    frame = clamp(frame, 0, framesOf(S.items[index]) - 1);
    if (index === S.index && frame === S.frame && S.shown) return;
    if (index !== S.index) S.dir = Math.sign(index - S.index) || S.dir;
    else if (frame !== S.frame) S.dir = Math.sign(frame - S.frame) || S.dir;
    S.index = index;
    S.frame = frame;
    present();
    prefetch();
    settleMeta();
  }

  /** Scroll by `n`: frames for a lone multi-frame instance, otherwise images. */
  function step(n) {
    if (!S.items.length || !n) return;
    if (S.items.length === 1 && framesOf(cur()) > 1) {
      S.framesActive = true;
      go(S.index, S.frame + n);
    } else go(S.index + n, 0);
  }

  function stepFrame(n) {
    const item = cur();
    if (framesOf(item) > 1) {
      S.framesActive = true;
      go(S.index, (S.frame + n + framesOf(item)) % framesOf(item));
    } else step(n);
  }

  function prefetch() {
    const list = [];
    const item = cur();
    const frames = framesOf(item);
    let offset = 0;
    if (frames > 1 && S.framesActive) {
      // Cine: the frames ahead of this one, in play order.
      for (let d = 1; d < frames; d += 1) list.push({ url: previewUrl(item, (S.frame + d) % frames), prio: d });
      offset = Math.min(frames, 30);
    }
    for (const { i, prio } of neighbourOrder(S.index, S.items.length, S.dir, PREFETCH_RADIUS, true)) {
      list.push({ url: previewUrl(S.items[i], 0), prio: prio + offset });
    }
    // Decode ahead only as many as the bitmap budget holds (1024 px previews are 4x a CT slice).
    const side = Math.min(PREVIEW_SIDE, nativeSide(item) || PREVIEW_SIDE);
    store.want(list, { decodeWithin: clamp(Math.floor(BITMAP_PIXELS / (side * side) / 2.5), 3, 20) });
  }

  /** Fetch the settled slice's info (windows) and, if needed, tags (spacing, photometric). */
  function settleMeta() {
    clearTimeout(S.metaTimer);
    S.metaTimer = setTimeout(() => {
      const item = cur();
      if (!item) return;
      const sop = item.sop_instance_uid;
      const had = JSON.stringify(facts(item)?.windows || null);
      meta
        .info(sop)
        .then(() => {
          if (JSON.stringify(facts(item)?.windows || null) !== had) buildPresets();
          if (cur() === item) present();
          const measuring = view.tool === 'length' || view.tool === 'angle' || measureList(item, S.frame).length > 0;
          if (measuring && !facts(item)?.spacing) ensureTags(sop); // older backends: spacing from the tags
        })
        .catch((e) => fail('viewer.fail.info', e));
      if (!ui.tagsPanel.hidden) tagPanel.show(sop);
    }, META_DEBOUNCE_MS);
  }

  function ensureTags(sop) {
    meta
      .tags(sop)
      .then(() => {
        if (cur()?.sop_instance_uid === sop) {
          present();
          buildPresets();
        }
      })
      .catch((e) => fail('viewer.fail.tags', e));
  }

  return {
    cur,
    previewUrl,
    facts,
    datasetWindow,
    seriesModality,
    baseWindow,
    colour,
    measureList,
    present,
    cancelFull,
    setMsg,
    overlay,
    scheduleProgress,
    sync,
    go,
    step,
    stepFrame,
    prefetch,
    settleMeta,
    ensureTags,
  };
}
