// Studies page: the clinic doctor's home (experts and admins use it as a
// study browser). Notifications (polled every 30 s while the tab is
// visible), filters, a paged table of studies with a key-image thumbnail,
// reading state, priority and the signed report, and the clinic actions:
// raise priority with a clinical question, cancel reading, request a
// consultation.
//
// Slow links: one list request per page of 50, thumbnails only for rows
// that scroll into view, nothing polled but notifications.
// PHI rule: nothing is logged to the console.

import {
  api,
  ApiError,
  session,
  header,
  el,
  $,
  toast,
  testHook,
  personNameEl,
  personNameFull,
  dicomDate,
  fmtTime,
  fmtNumber,
  age,
  list,
  errMessage,
  failer,
  codeLabel,
  t,
  onLang,
} from './app-common.js';

const PAGE = 50;
const NOTIF_EVERY_MS = 30_000;
const FILTERS = ['patient_name', 'patient_id', 'date_from', 'date_to', 'modality', 'clinic'];
const ACTIVE = new Set(['new', 'claimed', 'returned']);
const PRIO = ['routine', 'urgent', 'stat'];
const NOTIF_KINDS = new Set(['report', 'request', 'returned']);
// The server writes notification texts in English (src/reading/reports.rs,
// src/http/reading.rs): the known ones are shown from the catalogue; any
// other is shown as the server wrote it, as data.
const NOTIF_TEXTS = [
  [/^The report is available$/, 'studies.notif.text.report'],
  [/^An amended report \(version (?<v>\d+)\) is available$/, 'studies.notif.text.amended'],
  [/^Consultation scheduled$/, 'studies.notif.text.scheduled'],
  [/^Consultation rescheduled$/, 'studies.notif.text.rescheduled'],
  [/^Consultation cancelled$/, 'studies.notif.text.cancelled'],
  [/^Consultation finished$/, 'studies.notif.text.finished'],
];
const RETURNED_PREFIX = 'More images requested: ';

const hook = testHook('studies', {
  ready: false,
  uids: [],
  total: 0,
  offset: 0,
  unread: 0,
  notifications: [],
  report: null,
  errors: [],
});
const fail = failer(hook);

const enc = encodeURIComponent;
const viewerUrl = (uid) => `/viewer?study=${enc(uid)}`;

let user = null;
let offset = 0;
let filters = {};
let rows = new Map(); // study_uid -> StudyRow of the page shown
let lastList = null; // the last /api/studies answer, re-rendered on a language switch
let listCtl = null;
const clinicNames = new Map();

// ------------------------------------------------------------------ errors

// ------------------------------------------------------------------ formatting

function prioBadge(p) {
  if (!p) return null;
  return codeLabel('studies.prio', p, { class: `badge prio-${p}`, dataset: { priority: p } });
}

function stateBadge(state) {
  if (!state) return el('span', { class: 'muted' }, '—');
  return codeLabel('studies.state', state, { class: `badge st-${state}`, dataset: { state } });
}

function dicomTime(tm) {
  if (!tm || tm.length < 4) return '';
  return `${tm.slice(0, 2)}:${tm.slice(2, 4)}`;
}

/** "ID 123 · 男 · 54 岁": the ID is data, sex and age are in the interface language. */
function patientLine(s) {
  const parts = [];
  if (s.patient_id) parts.push([el('span', { i18n: 'studies.id' }), ' ', el('span', { translate: 'no' }, s.patient_id)]);
  if (s.sex) parts.push(codeLabel('studies.sex', s.sex));
  const a = age(s.birth_date, s.study_date);
  if (a) parts.push(a);
  return parts.flatMap((p, i) => (i ? [' · ', p] : [p])).flat();
}

// ------------------------------------------------------------------ dialogs

function field(key, control) {
  return el('label', { class: 'field' }, el('span', { i18n: key }), control);
}

/**
 * A modal form. `onSubmit` throws to keep the dialog open (the error is
 * shown in the dialog and as a toast); it closes on success.
 */
function formDialog({ title, lead, fields, submitLabel, submitTest, danger, onSubmit }) {
  // title, submitLabel: message keys; lead: nodes (data marked translate="no").
  const err = el('p', { class: 'form-error', role: 'alert', hidden: true });
  const ok = el(
    'button',
    { type: 'submit', class: danger ? 'primary danger' : 'primary', dataset: submitTest ? { test: submitTest } : undefined },
    el('span', { i18n: submitLabel }),
  );
  const close = el('button', { type: 'button', i18n: 'common.close' });
  const form = el(
    'form',
    { class: 'dialog-form' },
    el('h2', { i18n: title }),
    lead ? el('p', { class: 'lead' }, lead) : null,
    fields,
    err,
    el('div', { class: 'dialog-actions' }, close, ok),
  );
  const dlg = el('dialog', { class: 'dialog', i18nAriaLabel: title }, form);
  close.addEventListener('click', () => dlg.close());
  dlg.addEventListener('close', () => dlg.remove());
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    ok.disabled = true;
    err.hidden = true;
    try {
      await onSubmit();
      dlg.close();
    } catch (e) {
      const msg = fail(t(title), e);
      if (msg) {
        const { key, args } = errMessage(e);
        err.dataset.i18nArgs = JSON.stringify(args);
        err.dataset.i18n = key;
        err.textContent = t(key, args);
        err.hidden = false;
      }
    } finally {
      ok.disabled = false;
    }
  });
  document.body.append(dlg);
  dlg.showModal();
  return dlg;
}

/** The study in one line; all of it data (name, date, modalities, description). */
function studyLabel(s) {
  if (!s) return '';
  return el(
    'span',
    { translate: 'no' },
    [personNameFull(s.patient_name), dicomDate(s.study_date), list(s.modalities), s.description].filter(Boolean).join(' · '),
  );
}

function priorityDialog(s) {
  const uid = s.study_uid;
  const current = s.priority || 'routine';
  const isAdmin = user.role === 'admin';
  // Clinic doctors may only raise (or keep) the priority.
  const options = PRIO.filter((p) => isAdmin || PRIO.indexOf(p) >= PRIO.indexOf(current));
  const preselect = isAdmin ? current : options[Math.min(1, options.length - 1)];
  const sel = el(
    'select',
    { name: 'priority', required: true, dataset: { test: 'priority-select' } },
    options.map((p) => el('option', { value: p, selected: p === preselect, i18n: `studies.prio.${p}` })),
  );
  const question = el('textarea', {
    name: 'clinical_question',
    rows: 4,
    maxlength: 2000,
    required: true,
    dataset: { test: 'clinical-question' },
    i18nPlaceholder: 'studies.prio.question_ph',
  });
  formDialog({
    title: isAdmin ? 'studies.prio.set_title' : 'studies.raise',
    lead: studyLabel(s),
    fields: [field('studies.priority', sel), field('studies.prio.question', question)],
    submitLabel: 'common.save',
    submitTest: 'priority-submit',
    onSubmit: async () => {
      try {
        await api(`/api/worklist/${enc(uid)}/priority`, {
          method: 'POST',
          body: { priority: sel.value, clinical_question: question.value.trim() },
        });
      } catch (e) {
        if (e instanceof ApiError && e.status === 409) loadStudies();
        throw e;
      }
      toast(t('studies.prio.done', { p: t(`studies.prio.${sel.value}`) }), 'ok');
      loadStudies();
    },
  });
  // Pre-fill the current clinical question: in the row, or (older servers)
  // from the study (small request, not waited for).
  if ('clinical_question' in s) {
    question.value = s.clinical_question || '';
  } else {
    api(`/api/studies/${enc(uid)}`)
      .then((r) => {
        const q = r && r.worklist && r.worklist.clinical_question;
        if (q && !question.value) question.value = q;
      })
      .catch(() => {});
  }
}

function cancelDialog(s) {
  const uid = s.study_uid;
  const reason = el('textarea', {
    name: 'reason',
    rows: 3,
    maxlength: 1000,
    required: true,
    dataset: { test: 'cancel-reason' },
    i18nPlaceholder: 'studies.cancel.reason_ph',
  });
  formDialog({
    title: 'studies.cancel_reading',
    lead: [studyLabel(s), ' — ', el('span', { i18n: 'studies.cancel.lead' })],
    fields: [field('studies.cancel.reason', reason)],
    submitLabel: 'studies.cancel_reading',
    submitTest: 'cancel-submit',
    danger: true,
    onSubmit: async () => {
      try {
        await api(`/api/worklist/${enc(uid)}/cancel`, { method: 'POST', body: { reason: reason.value.trim() } });
      } catch (e) {
        if (e instanceof ApiError && e.status === 409) loadStudies();
        throw e;
      }
      toast(t('studies.cancel.done'), 'ok');
      loadStudies();
    },
  });
}

// ------------------------------------------------------------------ report panel

async function openReport(uid) {
  const body = el('div', { class: 'report-body' }, el('p', { class: 'muted', i18n: 'studies.rep.loading' }));
  const title = el('h2', {}, el('span', { i18n: 'studies.report' }));
  const closeBtn = el('button', { type: 'button', class: 'small', i18nAriaLabel: 'common.close' }, '✕');
  const dlg = el(
    'dialog',
    { class: 'dialog wide', 'aria-labelledby': 'report-title', dataset: { test: 'report-panel', uid } },
    el('div', { class: 'dialog-body' }, el('div', { class: 'dialog-head' }, title, closeBtn), body),
  );
  title.id = 'report-title';
  closeBtn.addEventListener('click', () => dlg.close());
  dlg.addEventListener('close', () => {
    dlg.remove();
    document.body.classList.remove('printing');
    hook.report = null;
  });
  document.querySelectorAll('dialog[data-test="report-panel"]').forEach((d) => d.close());
  document.body.append(dlg);
  dlg.showModal();

  let rep;
  let study = rows.get(uid) || null;
  try {
    [rep, study] = await Promise.all([
      api(`/api/studies/${enc(uid)}/reports`),
      study ||
        api(`/api/studies/${enc(uid)}`)
          .then((r) => r.study)
          .catch(() => null),
    ]);
  } catch (e) {
    const msg = fail(t('studies.rep.load'), e);
    const { key, args } = errMessage(e);
    body.replaceChildren(el('p', { class: 'form-error', i18n: msg ? key : 'studies.rep.load_failed', i18nArgs: msg ? args : undefined }));
    return;
  }
  if (!dlg.isConnected) return;
  // Older signed versions are marked "amended" once a newer one is signed.
  const signed = (rep.versions || [])
    .filter((v) => v.status === 'signed' || v.status === 'amended')
    .sort((a, b) => b.version - a.version);
  if (study) {
    const name = personNameFull(study.patient_name);
    title.append(' — ', name ? el('span', { translate: 'no' }, name) : el('span', { i18n: 'studies.rep.patient' }));
  }
  if (!signed.length) {
    body.replaceChildren(el('p', { class: 'empty', i18n: 'studies.rep.none' }));
    hook.report = { uid, version: null };
    return;
  }
  const deliveries = rep.delivery || [];
  let shown = null;
  const show = (v) => {
    shown = v;
    body.replaceChildren(...reportView(uid, study, v, signed, deliveries, show));
  };
  show(signed[0]);
  // The patient's age and the like are text: drawn again in the new language.
  const relang = () => show(shown);
  window.addEventListener('mr-lang', relang);
  dlg.addEventListener('close', () => window.removeEventListener('mr-lang', relang));
}

function reportView(uid, study, v, signed, deliveries, show) {
  hook.report = { uid, version: v.version };
  const out = [];
  if (study) {
    out.push(
      el(
        'p',
        { class: 'report-meta' },
        el('span', {}, patientLine(study)),
        el(
          'span',
          { translate: 'no' },
          [dicomDate(study.study_date), list(study.modalities), study.description].filter(Boolean).join(' · '),
        ),
      ),
    );
  }
  if (signed.length > 1) {
    const sel = el(
      'select',
      { i18nAriaLabel: 'studies.rep.version_label', class: 'no-print' },
      signed.map((r) =>
        el('option', {
          value: r.version,
          selected: r.version === v.version,
          i18n: 'studies.rep.version_option',
          i18nArgs: { v: r.version, time: fmtTime(r.signed_ms) },
        }),
      ),
    );
    sel.addEventListener('change', () => show(signed.find((r) => String(r.version) === sel.value)));
    out.push(field('studies.rep.version', sel));
  }
  out.push(
    el(
      'p',
      { class: 'report-meta' },
      el(
        'span',
        {},
        el('span', {
          class: v.status === 'amended' ? 'badge warn' : 'badge st-signed',
          i18n: v.status === 'amended' ? 'studies.rep.amended' : 'studies.rep.signed',
        }),
        ' ',
        el('span', { i18n: 'studies.rep.version_n', i18nArgs: { v: v.version } }),
      ),
      el('span', {}, el('span', { i18n: 'studies.rep.by' }), ' ', el('span', { translate: 'no' }, v.author_name || v.author || '—')),
      el('span', {}, fmtTime(v.signed_ms || v.updated_ms)),
    ),
  );
  const newer = signed.filter((r) => r.version > v.version).sort((a, b) => a.version - b.version)[0];
  if (newer) {
    out.push(
      el(
        'p',
        { class: 'report-amended', role: 'note' },
        el('span', { i18n: 'studies.rep.amended_by', i18nArgs: { v: newer.version, time: fmtTime(newer.signed_ms) } }),
        ' ',
        el('button', { type: 'button', class: 'link', onclick: () => show(signed[0]), i18n: 'studies.rep.latest' }),
      ),
    );
  }
  out.push(
    el(
      'section',
      { class: 'report-section' },
      el('h3', { i18n: 'studies.rep.findings' }),
      el('div', { class: 'report-text', translate: 'no', dataset: { test: 'report-findings' } }, v.findings || '—'),
    ),
    el(
      'section',
      { class: 'report-section' },
      el('h3', { i18n: 'studies.rep.impression' }),
      el('div', { class: 'report-text', translate: 'no', dataset: { test: 'report-impression' } }, v.impression || '—'),
    ),
  );
  const mine = deliveries.filter((d) => d.version === v.version);
  out.push(
    el(
      'section',
      { class: 'report-section', dataset: { test: 'report-delivery' } },
      el('h3', { i18n: 'studies.rep.delivery' }),
      mine.length
        ? el(
            'ul',
            { class: 'delivery-list' },
            mine.map((d) =>
              el(
                'li',
                {},
                codeLabel('studies.delivery', d.state, { class: `badge st-${d.state}` }),
                ' ',
                el('span', { translate: 'no' }, d.target || 'PACS'),
                d.state === 'sent' && d.sent_ms ? ` · ${fmtTime(d.sent_ms)}` : '',
                d.state !== 'sent' && d.attempts
                  ? [' · ', el('span', { i18n: 'studies.rep.attempts', i18nArgs: { n: d.attempts } })]
                  : '',
                // The PACS's or the network's own words (technical, as logged).
                d.state !== 'sent' && d.last_error ? el('span', { class: 'sub muted', translate: 'no' }, d.last_error) : null,
              ),
            ),
          )
        : el('p', { class: 'muted', i18n: 'studies.rep.no_pacs' }),
    ),
  );
  const printBtn = el('button', { type: 'button', i18n: 'studies.rep.print' });
  printBtn.addEventListener('click', () => {
    document.body.classList.add('printing');
    window.addEventListener('afterprint', () => document.body.classList.remove('printing'), { once: true });
    window.print();
  });
  out.push(
    el(
      'div',
      { class: 'dialog-actions' },
      el('a', { class: 'button', href: viewerUrl(uid), i18n: 'studies.rep.open_images' }),
      printBtn,
      el('button', { type: 'button', class: 'primary', onclick: (e) => e.target.closest('dialog').close(), i18n: 'common.close' }),
    ),
  );
  return out;
}

// ------------------------------------------------------------------ thumbnails

// Rows are rendered 50 at a time; a thumbnail is fetched only once its row
// is near the viewport (native lazy loading starts far too early on a slow
// connection, where Chrome widens its look-ahead).
const thumbObserver =
  'IntersectionObserver' in window
    ? new IntersectionObserver(
        (entries) => {
          for (const e of entries) {
            if (!e.isIntersecting) continue;
            thumbObserver.unobserve(e.target);
            e.target.src = e.target.dataset.src;
          }
        },
        { rootMargin: '200px 0px' },
      )
    : null;

function noThumb(key) {
  return el('span', { class: 'study-thumb study-thumb-none', i18nTitle: key, dataset: { test: 'study-thumb' } }, '—');
}

function thumbFor(s) {
  if (!s.num_instances) return noThumb('studies.thumb.none');
  // A single instance thumbnail when the server names one, else the
  // key-image strip (one middle image per series), cropped to its first image.
  const src = s.thumbnail_uid
    ? `/api/instances/${enc(s.thumbnail_uid)}/thumbnail`
    : `/api/studies/${enc(s.study_uid)}/key-images`;
  const img = el('img', {
    class: 'study-thumb',
    alt: '',
    loading: 'lazy',
    decoding: 'async',
    width: 64,
    height: 64,
    dataset: { test: 'study-thumb', src },
  });
  img.addEventListener('error', () => img.replaceWith(noThumb('studies.thumb.failed')), { once: true });
  if (thumbObserver) thumbObserver.observe(img);
  else img.src = src;
  return el('a', { href: viewerUrl(s.study_uid), tabindex: '-1', 'aria-hidden': 'true' }, img);
}

// ------------------------------------------------------------------ study list

function columns() {
  const cols = ['', 'patient'];
  if (user.role !== 'clinic') cols.push('clinic');
  cols.push('date', 'modality', 'description', 'images', 'status', 'reading', 'report', 'actions');
  return cols;
}

function studyRow(s) {
  const uid = s.study_uid;
  const cells = [
    el('td', {}, thumbFor(s)),
    el(
      'td',
      { class: 'patient' },
      personNameEl(s.patient_name, 'strong', 'studies.no_name'),
      el('span', { class: 'sub' }, patientLine(s)),
      s.accession_number
        ? el(
            'span',
            { class: 'sub' },
            el('span', { i18n: 'studies.accession' }),
            ' ',
            el('span', { translate: 'no' }, s.accession_number),
          )
        : null,
    ),
  ];
  if (user.role !== 'clinic') cells.push(el('td', { translate: 'no' }, clinicNames.get(s.clinic_id) || s.clinic_id || '—'));
  const acts = [
    el('a', { class: 'button small primary', href: viewerUrl(uid), dataset: { test: 'open-viewer' }, i18n: 'studies.open' }),
  ];
  const manages = user.role === 'clinic' || user.role === 'admin';
  if (manages && ACTIVE.has(s.worklist_state)) {
    acts.push(
      el(
        'button',
        {
          type: 'button',
          class: 'small',
          dataset: { test: 'raise-priority' },
          onclick: () => priorityDialog(s),
          i18n: user.role === 'admin' ? 'studies.priority' : 'studies.raise',
        },
      ),
      el(
        'button',
        {
          type: 'button',
          class: 'small danger',
          dataset: { test: 'cancel-reading' },
          onclick: () => cancelDialog(s),
          i18n: 'studies.cancel_reading',
        },
      ),
    );
  }
  if (user.role === 'clinic') {
    acts.push(
      el(
        'a',
        {
          class: 'button small',
          href: `/requests?new=1&study=${enc(uid)}`,
          dataset: { test: 'request-consult' },
          i18n: 'studies.request_consult',
        },
      ),
    );
  }
  cells.push(
    el('td', { class: 'nowrap' }, dicomDate(s.study_date) || '—', el('span', { class: 'sub' }, dicomTime(s.study_time))),
    el('td', { class: 'nowrap', translate: 'no' }, list(s.modalities) || '—', el('span', { class: 'sub' }, list(s.body_parts))),
    el('td', { class: 'clip', translate: 'no' }, s.description || el('span', { class: 'muted' }, '—')),
    el(
      'td',
      { class: 'num' },
      fmtNumber(s.num_instances ?? 0),
      el('span', { class: 'sub', i18n: 'studies.series', i18nArgs: { n: s.num_series ?? 0 } }),
    ),
    el('td', {}, codeLabel('studies.status', s.status || '', { class: `badge st-${s.status}`, dataset: { status: s.status } })),
    el('td', {}, el('div', { class: 'actions' }, stateBadge(s.worklist_state), prioBadge(s.priority))),
    el(
      'td',
      { class: 'nowrap' },
      s.report_version != null
        ? [
            el(
              'button',
              {
                type: 'button',
                class: 'small',
                dataset: { test: 'report-link' },
                i18nAriaLabel: 'studies.report.aria',
                i18nArgs: { v: s.report_version },
                onclick: () => openReport(uid),
              },
              el('span', { i18n: 'studies.report' }),
            ),
            el('span', { class: 'sub', i18n: 'studies.report.v', i18nArgs: { v: s.report_version } }),
          ]
        : el('span', { class: 'muted' }, '—'),
    ),
    el('td', { class: 'wide-actions' }, el('div', { class: 'actions' }, acts)),
  );
  return el('tr', { dataset: { test: 'study-row', uid } }, cells);
}

function renderStudies(r) {
  lastList = r;
  const studies = r.studies || [];
  const total = Number.isFinite(r.total) ? r.total : studies.length;
  rows = new Map(studies.map((s) => [s.study_uid, s]));
  hook.uids = studies.map((s) => s.study_uid);
  hook.total = total;
  hook.offset = offset;

  if (notifItems.length) renderNotifs(false);
  const nf = Object.keys(filters).length;
  $('#filter-count').textContent = nf ? t('studies.filters.active', { n: nf }) : '';
  $('#thead').replaceChildren(
    el(
      'tr',
      {},
      columns().map((c) => el('th', { scope: 'col', i18n: c ? `studies.col.${c}` : undefined })),
    ),
  );
  $('#rows').replaceChildren(...studies.map(studyRow));
  $('#table-wrap').hidden = studies.length === 0;
  const empty = $('#empty');
  empty.hidden = studies.length > 0;
  empty.dataset.i18n = Object.keys(filters).length
    ? 'studies.empty.filtered'
    : user.role === 'clinic'
      ? 'studies.empty.clinic'
      : 'studies.empty';
  empty.textContent = t(empty.dataset.i18n);
  // Past COUNT_CAP the server stops counting (total_exact false): say
  // "more than", and let Next follow full pages.
  const more = r.total_exact === false;
  $('#summary').textContent = studies.length
    ? t(more ? 'studies.summary_more' : 'studies.summary', { from: fmtNumber(offset + 1), to: fmtNumber(offset + studies.length), n: total })
    : '';
  const pager = $('#pager');
  pager.hidden = total <= PAGE && offset === 0;
  $('#prev').disabled = offset === 0;
  $('#next').disabled = more ? studies.length < PAGE : offset + studies.length >= total;
  $('#page-info').textContent = t(more ? 'studies.page_info_more' : 'studies.page_info', {
    page: Math.floor(offset / PAGE) + 1,
    pages: Math.max(1, Math.ceil(total / PAGE)),
  });
}

async function loadStudies() {
  if (listCtl) listCtl.abort();
  const ctl = (listCtl = new AbortController());
  const q = new URLSearchParams(filters);
  q.set('limit', String(PAGE));
  q.set('offset', String(offset));
  $('#main').setAttribute('aria-busy', 'true');
  try {
    const r = await api('/api/studies?' + q, { signal: ctl.signal });
    if (ctl !== listCtl) return;
    if (!(r.studies || []).length && offset > 0) {
      // The list shrank under us: back to the first page.
      offset = 0;
      listCtl = null;
      return loadStudies();
    }
    renderStudies(r);
  } catch (e) {
    if (ctl === listCtl) fail(t('studies.load'), e);
  } finally {
    if (ctl === listCtl) {
      $('#main').removeAttribute('aria-busy');
      listCtl = null;
    }
  }
}

// ------------------------------------------------------------------ filters

function readForm() {
  const fd = new FormData($('#filters'));
  const f = {};
  for (const k of FILTERS) {
    const v = String(fd.get(k) ?? '').trim();
    if (v) f[k] = v;
  }
  return f;
}

function syncUrl() {
  const q = new URLSearchParams(filters);
  if (offset) q.set('offset', String(offset));
  const s = q.toString();
  history.replaceState(null, '', location.pathname + (s ? '?' + s : ''));
}

function setupFilters() {
  const form = $('#filters');
  if (matchMedia('(max-width: 699px)').matches) $('#filter-box').open = false;
  const params = new URLSearchParams(location.search);
  for (const k of FILTERS) {
    const v = params.get(k);
    if (v && form.elements[k]) form.elements[k].value = v;
  }
  filters = readForm();
  offset = Math.max(0, Math.floor(Number(params.get('offset')) / PAGE) * PAGE || 0);
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = readForm();
    if (f.date_from && f.date_to && f.date_from > f.date_to) {
      toast(t('studies.f.dates_reversed'), 'error');
      return;
    }
    filters = f;
    offset = 0;
    syncUrl();
    loadStudies();
  });
  form.addEventListener('reset', () => {
    setTimeout(() => {
      filters = {};
      offset = 0;
      syncUrl();
      loadStudies();
    });
  });
  form.elements.modality.addEventListener('change', () => form.requestSubmit());
  if (form.elements.clinic) form.elements.clinic.addEventListener('change', () => form.requestSubmit());
  $('#prev').addEventListener('click', () => {
    offset = Math.max(0, offset - PAGE);
    syncUrl();
    loadStudies().then(() => $('#main').scrollIntoView({ block: 'start' }));
  });
  $('#next').addEventListener('click', () => {
    offset += PAGE;
    syncUrl();
    loadStudies().then(() => $('#main').scrollIntoView({ block: 'start' }));
  });
}

async function loadClinics() {
  try {
    const r = await api('/api/clinics');
    const sel = $('#filters').elements.clinic;
    for (const c of r.clinics || []) {
      clinicNames.set(c.id, c.name || c.id);
      sel.append(el('option', { value: c.id, translate: 'no' }, c.name || c.id));
    }
    $('#clinic-field').hidden = (r.clinics || []).length < 2;
  } catch (e) {
    fail(t('studies.load_clinics'), e);
  }
}

// ------------------------------------------------------------------ notifications

let notifItems = [];
let unread = 0;
let newestSeen = null;
let notifBusy = null;
let notifFailing = false;
let notifTimer = null;
let lastNotifAt = 0;
let notifOpenedByUser = false;

/** Which study a notification is about, when that study is on the page. */
function notifContext(n) {
  const st = n.study_uid && rows.get(n.study_uid);
  if (!st) return null;
  return el('span', { class: 'sub muted' }, studyLabel(st));
}

/** A notification's text: a known server text from the catalogue, else as written (data). */
function notifText(n) {
  const text = String(n.text || '');
  if (text.startsWith(RETURNED_PREFIX)) {
    // The rest is the expert's reason, as typed.
    return [
      el('span', { i18n: 'studies.notif.text.returned' }),
      el('span', { translate: 'no' }, text.slice(RETURNED_PREFIX.length)),
    ];
  }
  for (const [re, key] of NOTIF_TEXTS) {
    const m = re.exec(text);
    if (m) return el('span', { i18n: key, i18nArgs: m.groups ? { ...m.groups } : undefined });
  }
  return el('span', { translate: 'no' }, text);
}

function renderNotifs(fresh) {
  const box = $('#notifs');
  box.hidden = false;
  const badge = $('#notif-badge');
  badge.textContent = String(unread);
  badge.classList.toggle('has-unread', unread > 0);
  badge.dataset.i18nAriaLabel = 'studies.notifs.unread';
  badge.dataset.i18nArgs = JSON.stringify({ n: unread });
  badge.setAttribute('aria-label', t('studies.notifs.unread', { n: unread }));
  hook.unread = unread;
  hook.notifications = notifItems.map((n) => n.id);
  if ((fresh && unread > 0) || (!notifOpenedByUser && unread > 0)) box.open = true;
  $('#notif-empty').hidden = notifItems.length > 0;
  $('#notif-list').replaceChildren(
    ...notifItems.map((n) =>
      el(
        'li',
        {},
        el(
          'button',
          {
            type: 'button',
            class: `notif-item${n.read ? '' : ' unread'}`,
            dataset: { test: 'notif-item', id: n.id, kind: n.kind, read: n.read ? '1' : '0' },
            onclick: () => openNotif(n),
          },
          el('span', { class: 'badge', i18n: `studies.notif.${NOTIF_KINDS.has(n.kind) ? n.kind : 'other'}` }),
          el('span', { class: 'text' }, notifText(n), notifContext(n)),
          el('time', { datetime: new Date(n.created_ms || 0).toISOString() }, fmtTime(n.created_ms)),
        ),
      ),
    ),
  );
}

async function loadNotifications() {
  if (notifBusy) return notifBusy;
  notifBusy = (async () => {
    try {
      const r = await api('/api/notifications');
      notifItems = r.items || [];
      unread = Number.isFinite(r.unread) ? r.unread : notifItems.filter((n) => !n.read).length;
      const newest = notifItems.reduce((m, n) => Math.max(m, Number(n.id) || 0), 0);
      const fresh = newestSeen !== null && newest > newestSeen;
      newestSeen = Math.max(newestSeen ?? 0, newest);
      renderNotifs(fresh);
      // A report or a return arrived: the list's report links and states changed.
      if (fresh && hook.ready) loadStudies();
      notifFailing = false;
    } catch (e) {
      // On a flaky link say it once, not every 30 s.
      if (!notifFailing) fail(t('studies.load_notifs'), e);
      notifFailing = true;
    } finally {
      lastNotifAt = Date.now();
      notifBusy = null;
    }
  })();
  return notifBusy;
}

async function openNotif(n) {
  if (!n.read) {
    try {
      await api(`/api/notifications/${enc(n.id)}/read`, { method: 'POST' });
      n.read = true;
      unread = Math.max(0, unread - 1);
      renderNotifs(false);
    } catch (e) {
      fail(t('studies.mark_read'), e);
    }
  }
  if (n.kind === 'request' || (!n.study_uid && n.request_id != null)) {
    location.assign(n.request_id != null ? `/requests#request-${enc(n.request_id)}` : '/requests');
    return;
  }
  if (!n.study_uid) return;
  const row = document.querySelector(`tr[data-test="study-row"][data-uid="${CSS.escape(n.study_uid)}"]`);
  if (row) {
    document.querySelectorAll('tr.highlight').forEach((r) => r.classList.remove('highlight'));
    row.classList.add('highlight');
    row.scrollIntoView({ block: 'nearest' });
  }
  if (n.kind === 'report') openReport(n.study_uid);
  else location.assign(viewerUrl(n.study_uid));
}

function scheduleNotifs() {
  clearTimeout(notifTimer);
  notifTimer = null;
  if (document.hidden) return;
  notifTimer = setTimeout(async () => {
    await loadNotifications();
    scheduleNotifs();
  }, NOTIF_EVERY_MS);
}

function setupNotifs() {
  $('#notifs').addEventListener('toggle', () => {
    notifOpenedByUser = true;
  });
  document.addEventListener('visibilitychange', async () => {
    if (document.hidden) {
      clearTimeout(notifTimer);
      notifTimer = null;
      return;
    }
    if (Date.now() - lastNotifAt >= NOTIF_EVERY_MS) await loadNotifications();
    scheduleNotifs();
  });
}

// ------------------------------------------------------------------ start

async function main() {
  try {
    user = await session();
  } catch (e) {
    fail(t('studies.load_session'), e);
    return;
  }
  header(user, '/studies');
  // Texts built with formatted values are rebuilt in the new language; the
  // filters, the page and an open report stay as they are.
  onLang(() => {
    if (lastList) renderStudies(lastList);
  });
  setupFilters();
  const clinicUser = user.role === 'clinic';
  if (!clinicUser) await loadClinics();
  // The clinic value from the URL needs the options loaded.
  const c = new URLSearchParams(location.search).get('clinic');
  if (c && $('#filters').elements.clinic) {
    $('#filters').elements.clinic.value = c;
    filters = readForm();
  }
  if (clinicUser) setupNotifs();
  await Promise.all([loadStudies(), clinicUser ? loadNotifications() : null]);
  hook.ready = true;
  if (clinicUser) scheduleNotifs();
}

hook.reload = () => loadStudies();
hook.refreshNotifications = () => loadNotifications();
hook.openReport = (uid) => openReport(uid);

main().finally(() => {
  hook.ready = true;
});
