// The patient/study summary bar and the series panel (one thumbnail per
// series: its middle instance). Series instance lists are fetched here,
// the opened series first, the others a few at a time.

import { api, dicomDate, el, personNameFull } from './app-common.js';

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

const PRIORITY_TEXT = { stat: 'STAT', urgent: 'Urgent', routine: 'Routine' };

function item(label, value, test, cls) {
  if (value === undefined || value === null || value === '') return null;
  return el('div', { class: `sum-item ${cls || ''}`, dataset: { test } }, el('dt', {}, label), el('dd', {}, value));
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
      item('Patient', el('span', { translate: 'no' }, personNameFull(s.patient_name) || '—'), 'sum-patient', 'strong'),
      item('ID', s.patient_id, 'sum-id'),
      item('Sex', s.sex, 'sum-sex'),
      item('Born', dicomDate(s.birth_date), 'sum-birth'),
      item('Study date', date, 'sum-date'),
      item('Description', s.description, 'sum-desc'),
      item('Modality', modalityList(s.modalities).join(', '), 'sum-modality'),
      item('Clinic', clinicName || s.clinic_id, 'sum-clinic'),
      item('Priority', prio ? el('span', { class: `badge prio-${prio}` }, PRIORITY_TEXT[prio] || prio) : null, 'sum-priority'),
      item('Worklist', state ? el('span', { class: `badge st-${state}` }, state) : null, 'sum-state'),
      s.status === 'receiving' ? item('Images', el('span', { class: 'badge st-receiving' }, 'still arriving'), 'sum-receiving') : null,
      item('Clinical question', wl.clinical_question, 'sum-question', 'wide'),
    ),
  );
}

export class SeriesPanel {
  /**
   * @param {HTMLElement} list the <ul>
   * @param {(uid: string) => void} onOpen
   * @param {(ctx: string, err: any) => void} fail
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
      const thumb = el('div', { class: 'thumb' }, el('span', { class: 'thumb-ph' }, r.modality || ''));
      const count = el('span', { class: 'count' }, `${r.num_instances ?? '?'} img`);
      const b = el(
        'button',
        {
          type: 'button',
          class: 'series-thumb',
          dataset: { test: 'series-thumb', series: r.series_uid },
          title: r.description || `Series ${r.series_number ?? ''}`,
        },
        thumb,
        el('span', { class: 'series-label' }, el('span', { class: 'series-no' }, `${r.modality || ''} ${r.series_number ?? ''}`.trim()), ' ', r.description || ''),
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
      if (entry && r.num_instances != null && !this.loaded.has(r.series_uid)) entry.count.textContent = `${r.num_instances} img`;
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
    if (list) entry.count.textContent = `${list.length} img`;
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
          this.fail('Loading a series', e);
        }
      }
    };
    await Promise.all(Array.from({ length: n }, worker));
  }
}
