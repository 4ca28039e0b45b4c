// The patient/study summary bar and the series panel (one thumbnail per
// series: its middle instance). Series instance lists are fetched here,
// the opened series first, the others a few at a time.

import { api, dicomDate, el, personNameFull, t } from './app-common.js';

const NON_IMAGE = new Set(['SR', 'KO', 'PR', 'DOC', 'REG', 'SEG', 'RTSTRUCT', 'RTPLAN', 'RWV']);

export function modalityList(m) {
  if (Array.isArray(m)) return m.map(String).filter(Boolean);
  return String(m || '')
    .split(/[\\,/ ]+/)
    .filter(Boolean);
}

/** The study's main imaging modality (for templates and presets). */
export function mainModality(study, series = []) {
  const mods = [...modalityList(study?.modalities), ...series.map((s) => s.modality)].filter(Boolean);
  return mods.find((m) => !NON_IMAGE.has(m)) || mods[0] || '';
}

const PRIORITIES = ['stat', 'urgent', 'routine'];
const STATES = ['new', 'claimed', 'returned', 'reported', 'delivered', 'cancelled'];
const SEXES = ['M', 'F', 'O'];

/** One summary entry: its label (message `key`) and value; `data`: the value is data (not translated). */
function item(key, value, test, cls, data = false) {
  if (value === undefined || value === null || value === '') return null;
  return el(
    'div',
    { class: `sum-item ${cls || ''}`, dataset: { test } },
    el('dt', { i18n: key }),
    el('dd', { translate: data ? 'no' : undefined }, value),
  );
}

/** A code shown as its message when known (`keys`), else as data. */
function coded(prefix, codes, v, attrs = {}) {
  return codes.includes(v) ? el('span', { ...attrs, i18n: `${prefix}.${v}` }) : el('span', { ...attrs, translate: 'no' }, v);
}

/** Fill the summary bar. */
export function renderSummary(root, { study, worklist, clinicName }) {
  const s = study || {};
  const wl = worklist || {};
  const prio = wl.priority || s.priority;
  const state = wl.state || s.worklist_state;
  const date = [dicomDate(s.study_date), s.study_time ? String(s.study_time).slice(0, 4).replace(/(\d\d)(\d\d)/, '$1:$2') : '']
    .filter(Boolean)
    .join(' ');
  root.replaceChildren(
    el(
      'dl',
      { class: 'sum-list' },
      item('viewer.sum.patient', personNameFull(s.patient_name) || '—', 'sum-patient', 'strong', true),
      item('viewer.sum.id', s.patient_id, 'sum-id', '', true),
      item('viewer.sum.sex', s.sex ? coded('viewer.sex', SEXES, s.sex) : null, 'sum-sex'),
      item('viewer.sum.born', dicomDate(s.birth_date), 'sum-birth'),
      item('viewer.sum.date', date, 'sum-date'),
      item('viewer.sum.description', s.description, 'sum-desc', '', true),
      item('viewer.sum.modality', modalityList(s.modalities).join(', '), 'sum-modality', '', true),
      item('viewer.sum.clinic', clinicName || s.clinic_id, 'sum-clinic', '', true),
      item('viewer.sum.priority', prio ? coded('viewer.prio', PRIORITIES, prio, { class: `badge prio-${prio}` }) : null, 'sum-priority'),
      item('viewer.sum.state', state ? coded('viewer.state', STATES, state, { class: `badge st-${state}` }) : null, 'sum-state'),
      s.status === 'receiving'
        ? item('viewer.sum.images', el('span', { class: 'badge st-receiving', i18n: 'viewer.sum.arriving' }), 'sum-receiving')
        : null,
      item('viewer.sum.question', wl.clinical_question, 'sum-question', 'wide', true),
    ),
  );
}

/** A series' image count, re-translated in place on a language switch. */
function setCount(e, n) {
  e.dataset.i18nArgs = JSON.stringify({ n });
  e.textContent = t('viewer.n_images', { n });
}

export class SeriesPanel {
  /**
   * @param {HTMLElement} list the <ul>
   * @param {(uid: string) => void} onOpen
   * @param {(whatKey: string, err: any) => void} fail
   */
  constructor(list, onOpen, fail) {
    this.list = list;
    this.onOpen = onOpen;
    this.fail = fail;
    this.rows = []; // series rows from the study
    this.items = new Map(); // series uid -> Promise<instances[]>
    this.loaded = new Map(); // series uid -> instances[]
    this.buttons = new Map();
    this.thumbsOn = false; // thumbnails wait until the first image is on screen
    this.thumbQueue = [];
  }

  enableThumbs() {
    this.thumbsOn = true;
    for (const [uid, list, sop] of this.thumbQueue.splice(0)) this.showThumb(uid, list, sop);
  }

  setSeries(rows) {
    const known = new Set(this.rows.map((r) => r.series_uid));
    const sorted = [...rows].sort((a, b) => (a.series_number ?? 1e9) - (b.series_number ?? 1e9));
    const fresh = sorted.filter((r) => !known.has(r.series_uid));
    this.rows = sorted;
    for (const r of fresh) {
      const thumb = el('div', { class: 'thumb' }, el('span', { class: 'thumb-ph', translate: 'no' }, r.modality || ''));
      const count = el('span', { class: 'count', i18n: 'viewer.n_images', i18nArgs: { n: r.num_instances ?? '?' } });
      // The tooltip is the series description (data: on the translate="no" label) or "Series 3".
      const b = el(
        'button',
        {
          type: 'button',
          class: 'series-thumb',
          dataset: { test: 'series-thumb', series: r.series_uid },
          i18nTitle: r.description ? undefined : 'viewer.series_n',
          i18nArgs: r.description ? undefined : { n: r.series_number ?? '' },
        },
        thumb,
        el(
          'span',
          { class: 'series-label', translate: 'no', title: r.description || undefined },
          el('span', { class: 'series-no' }, `${r.modality || ''} ${r.series_number ?? ''}`.trim()),
          ' ',
          r.description || '',
        ),
        count,
      );
      b.addEventListener('click', () => this.onOpen(r.series_uid));
      this.buttons.set(r.series_uid, { b, thumb, count });
      this.list.append(el('li', {}, b));
      // A backend that names each series' thumbnail instance saves fetching every list up front.
      if (r.thumbnail_uid) this.showThumb(r.series_uid, null, r.thumbnail_uid);
    }
    // Keep the DOM in series-number order after additions.
    for (const r of sorted) this.list.append(this.buttons.get(r.series_uid).b.parentElement);
    for (const r of rows) {
      const entry = this.buttons.get(r.series_uid);
      if (entry && r.num_instances != null && !this.loaded.has(r.series_uid)) setCount(entry.count, r.num_instances);
    }
  }

  setActive(uid) {
    for (const [s, { b }] of this.buttons) {
      b.classList.toggle('active', s === uid);
      b.setAttribute('aria-pressed', String(s === uid));
    }
  }

  /** Instances of a series, in instance-number order (fetched once). */
  instances(uid, { fresh = false } = {}) {
    let p = fresh ? null : this.items.get(uid);
    if (!p) {
      p = api(`/api/series/${encodeURIComponent(uid)}/instances`)
        .then((r) => this.accept(uid, r))
        .catch((e) => {
          this.items.delete(uid);
          throw e;
        });
      this.items.set(uid, p);
    }
    return p;
  }

  /**
   * A series list the page already has (the body of GET /api/series/{uid}/instances,
   * injected into the HTML): used as if fetched. Returns the list in viewer order.
   */
  seed(uid, body) {
    if (!uid || !body || typeof body !== 'object') return null;
    const list = this.accept(uid, body);
    this.items.set(uid, Promise.resolve(list));
    return list;
  }

  accept(uid, r) {
    const list = (Array.isArray(r?.instances) ? r.instances : []).filter((i) => i && i.sop_instance_uid);
    // The API sorts already; a stable sort keeps its order for ties and missing numbers.
    list.sort((a, b) => (a.instance_number ?? Infinity) - (b.instance_number ?? Infinity));
    this.loaded.set(uid, list);
    this.showThumb(uid, list);
    return list;
  }

  /** The series' thumbnail: its middle instance (from `list`), or the instance `sop` the API named. */
  showThumb(uid, list, sop) {
    const entry = this.buttons.get(uid);
    if (!entry) return;
    if (list) setCount(entry.count, list.length);
    if (!this.thumbsOn) {
      this.thumbQueue.push([uid, list, sop]);
      return;
    }
    const pick = sop || list?.[Math.floor(list.length / 2)]?.sop_instance_uid;
    if (!pick || entry.thumb.dataset.sop) return; // the first choice stays: no flicker
    entry.thumb.dataset.sop = pick;
    const img = el('img', {
      src: `/api/instances/${encodeURIComponent(pick)}/thumbnail`,
      alt: '',
      loading: 'lazy',
      decoding: 'async',
      fetchpriority: 'low',
      draggable: 'false',
    });
    img.addEventListener('error', () => entry.thumb.classList.add('broken'));
    entry.thumb.replaceChildren(img);
  }

  /** Fetch the other series' lists (thumbnails), `n` at a time, after the opened one. */
  async loadAll(n = 3) {
    const todo = this.rows.filter((r) => !r.thumbnail_uid && !this.loaded.has(r.series_uid)).map((r) => r.series_uid);
    const worker = async () => {
      while (todo.length) {
        const uid = todo.shift();
        try {
          await this.instances(uid);
        } catch (e) {
          this.fail('viewer.fail.series', e);
        }
      }
    };
    await Promise.all(Array.from({ length: n }, worker));
  }
}
