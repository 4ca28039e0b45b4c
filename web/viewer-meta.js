// Per-instance facts the viewer needs besides pixels: the dataset's
// windows (for presets and the client-side W/L approximation), pixel
// spacing (for measurements in mm), the photometric interpretation; and
// the tag panel. Each instance's info and tags are fetched once, on demand,
// and kept (small JSON).

import { api, el } from './app-common.js';
import { errorOf } from './viewer-stack.js';
import { liveNodes, withErrNodes } from './msg-nodes.js';

const num = (s) => {
  const m = String(s ?? '').match(/[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?/g);
  return m ? m.map(Number).filter(Number.isFinite) : [];
};

/** A number, an array of numbers or a DICOM multi-value string ("40\\400") -> numbers. */
function numbers(v) {
  if (v === null || v === undefined) return [];
  if (typeof v === 'number') return Number.isFinite(v) ? [v] : [];
  if (Array.isArray(v)) return v.flatMap(numbers);
  return num(v);
}

const strings = (v) => (v === null || v === undefined ? [] : Array.isArray(v) ? v.map(String) : String(v).split('\\'));

const normTag = (t) => String(t || '').replace(/[()\s]/g, '').toUpperCase();

function tagValue(tags, tag) {
  const t = tags.find((x) => normTag(x.tag) === tag);
  return t ? t.value : undefined;
}

function windowsFrom(centers, widths, names) {
  const c = numbers(centers);
  const w = numbers(widths);
  const n = strings(names);
  const out = [];
  for (let i = 0; i < Math.min(c.length, w.length); i += 1) {
    if (w[i] > 0) out.push({ wc: c[i], ww: w[i], name: (n[i] || '').trim() });
  }
  return out;
}

function spacingFrom(pixel, imager) {
  const p = numbers(pixel);
  if (p.length >= 2 && p[0] > 0 && p[1] > 0) return { row: p[0], col: p[1], unit: 'mm', note: '' };
  if (p.length === 1 && p[0] > 0) return { row: p[0], col: p[0], unit: 'mm', note: '' };
  const q = numbers(imager);
  if (q.length >= 2 && q[0] > 0 && q[1] > 0) return { row: q[0], col: q[1], unit: 'mm', note: 'detector' }; // viewer.measure.detector
  return null;
}

export class MetaStore {
  constructor(fail) {
    this.fail = fail;
    this.infos = new Map(); // uid -> Promise<facts>
    this.tagLists = new Map(); // uid -> Promise<tags[]>
    this.facts = new Map(); // uid -> merged facts, filled as answers arrive
  }

  /** What is known now (sync): {windows, spacing, photometric, frameTimeMs}. */
  known(uid) {
    return this.facts.get(uid) || null;
  }

  merge(uid, f) {
    const cur = this.facts.get(uid) || { windows: [], spacing: null, photometric: '', frameTimeMs: null };
    const next = { ...cur };
    if (f.windows?.length) next.windows = f.windows;
    if (f.spacing) next.spacing = f.spacing;
    if (f.photometric) next.photometric = f.photometric;
    if (f.frameTimeMs) next.frameTimeMs = f.frameTimeMs;
    this.facts.set(uid, next);
    return next;
  }

  /** GET /api/instances/{uid} (windows, and whatever else the backend adds). */
  info(uid) {
    let p = this.infos.get(uid);
    if (!p) {
      p = api(`/api/instances/${encodeURIComponent(uid)}`)
        .then((r) => {
          // {instance, versions, display: {window_center, window_width, window_explanation,
          // pixel_spacing, photometric, ...}}; flat fields are accepted too.
          const i = { ...(r?.instance || {}), ...(r || {}), ...(r?.display || {}) };
          const photo = i.photometric ?? i.photometric_interpretation;
          return this.merge(uid, {
            windows: windowsFrom(i.window_center, i.window_width, i.window_explanation),
            spacing: spacingFrom(i.pixel_spacing, i.imager_pixel_spacing),
            photometric: typeof photo === 'string' ? photo.trim() : '',
          });
        })
        .catch((e) => {
          this.infos.delete(uid);
          throw e;
        });
      this.infos.set(uid, p);
    }
    return p;
  }

  /** GET /api/instances/{uid}/tags; also fills windows, spacing and photometric from them. */
  tags(uid) {
    let p = this.tagLists.get(uid);
    if (!p) {
      p = api(`/api/instances/${encodeURIComponent(uid)}/tags`)
        .then((r) => {
          const tags = Array.isArray(r?.tags) ? r.tags : [];
          const cur = this.facts.get(uid);
          const frameTime = numbers(tagValue(tags, '0018,1063'))[0];
          const cineRate = numbers(tagValue(tags, '0018,0040'))[0];
          this.merge(uid, {
            windows: cur?.windows?.length ? null : windowsFrom(tagValue(tags, '0028,1050'), tagValue(tags, '0028,1051'), tagValue(tags, '0028,1055')),
            spacing: spacingFrom(tagValue(tags, '0028,0030'), tagValue(tags, '0018,1164')),
            photometric: String(tagValue(tags, '0028,0004') || '').trim(),
            frameTimeMs: frameTime > 0 ? frameTime : cineRate > 0 ? 1000 / cineRate : null,
          });
          return tags;
        })
        .catch((e) => {
          this.tagLists.delete(uid);
          throw e;
        });
      this.tagLists.set(uid, p);
    }
    return p;
  }
}

export function isColour(photometric) {
  const p = String(photometric || '').toUpperCase();
  return p.startsWith('RGB') || p.startsWith('YBR') || p === 'PALETTE COLOR';
}

/** The tag panel: a filterable table. */
export class TagPanel {
  constructor(root, filter, meta, fail) {
    this.root = root;
    this.filter = filter;
    this.meta = meta;
    this.fail = fail;
    this.uid = null;
    this.tags = [];
    filter.addEventListener('input', () => this.render());
  }

  get open() {
    return !this.root.closest('[hidden]');
  }

  async show(uid) {
    if (!uid || uid === this.uid) return;
    this.uid = uid;
    this.body().replaceChildren(el('p', { class: 'muted', i18n: 'viewer.tags_loading' }));
    try {
      const tags = await this.meta.tags(uid);
      if (this.uid !== uid) return;
      this.tags = tags;
      this.render();
    } catch (e) {
      if (this.uid !== uid) return;
      this.uid = null;
      const p = el('p', { class: 'error' });
      this.body().replaceChildren(p);
      liveNodes(p, () => withErrNodes('viewer.tags_failed', {}, errorOf(e)));
      this.fail('viewer.fail.tags', e);
    }
  }

  body() {
    return this.root.querySelector('[data-tags-body]');
  }

  render() {
    const q = this.filter.value.trim().toLowerCase();
    const rows = this.tags.filter(
      (t) => !q || `${t.tag} ${t.name || ''} ${t.value ?? ''} ${t.vr || ''}`.toLowerCase().includes(q),
    );
    const table = el(
      'table',
      { class: 'tags', dataset: { test: 'tags-list' } },
      el(
        'thead',
        {},
        el(
          'tr',
          {},
          el('th', { scope: 'col', i18n: 'viewer.tag.tag' }),
          el('th', { scope: 'col', i18n: 'viewer.tag.vr' }),
          el('th', { scope: 'col', i18n: 'viewer.tag.name' }),
          el('th', { scope: 'col', i18n: 'viewer.tag.value' }),
        ),
      ),
      el(
        'tbody',
        {},
        rows.map((t) => {
          const v = String(t.value ?? '');
          // DICOM's own tag names and the values are data (the dictionary's English).
          return el(
            'tr',
            { translate: 'no' },
            el('td', { class: 'mono' }, t.tag),
            el('td', { class: 'mono' }, t.vr || ''),
            el('td', {}, t.name || ''),
            el('td', { class: 'value', title: v.length > 200 ? v : undefined }, v.length > 200 ? v.slice(0, 200) + '…' : v),
          );
        }),
      ),
    );
    this.body().replaceChildren(
      el('p', { class: 'muted', i18n: 'viewer.tags_count', i18nArgs: { shown: rows.length, n: this.tags.length } }),
      table,
    );
  }
}
