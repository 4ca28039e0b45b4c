// Consultation requests, both sides. Clinic doctors ask for a live
// consultation about a patient (with studies attached); experts accept it
// with a time; either side reschedules, cancels and, once scheduled, joins
// the consultation room. `/requests?new=1&study=UID` opens the form
// pre-filled from that study.
//
// Slow links: the list is refreshed every 60 s only while open requests
// exist and the tab is visible; countdowns tick locally.
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
  personName,
  personNameEl,
  personNameFull,
  dicomDate,
  fmtTime,
  fmtDuration,
  fromLocalInput,
  toLocalInput,
  list,
  errMessage,
  failer,
  codeLabel,
  t,
  onLang,
} from './app-common.js';

const REFRESH_MS = 60_000;
const TICK_MS = 15_000;
const OPEN = new Set(['requested', 'scheduled']);
// The room opens this long before the scheduled time (the server refuses earlier joins).
const JOIN_EARLY_MS = 15 * 60_000;
const URGENCY_RANK = { stat: 0, urgent: 1, routine: 2 };

const hook = testHook('requests', { ready: false, ids: [], rows: [], errors: [] });
const fail = failer(hook);

const enc = encodeURIComponent;

let user = null;
let requests = [];
let loadedAt = 0;
let refreshTimer = null;
let tickTimer = null;
let failing = false;
let highlightId = null;
const clinicNames = new Map();

// ------------------------------------------------------------------ helpers

function countdown(ms) {
  const d = ms - Date.now();
  if (Math.abs(d) < 60_000) return [t('requests.now'), true];
  if (d > 0) return [t('requests.in', { d: fmtDuration(d) }), d < 15 * 60_000];
  return [t('requests.ago', { d: fmtDuration(-d) }), -d < 60 * 60_000];
}

/** `key`: the label's message; `hint`: nodes under the control. */
function field(key, control, hint) {
  return el('label', { class: 'field' }, el('span', { i18n: key }), control, hint ? el('span', { class: 'hint' }, hint) : null);
}

/** Shows a failure in `box` from its message key, so a switch re-translates it. */
function showError(box, key, args) {
  box.dataset.i18n = key;
  box.dataset.i18nArgs = JSON.stringify(args || {});
  box.textContent = t(key, args);
  box.hidden = false;
}

/**
 * A modal form; `onSubmit` throws to keep it open (message shown inline and
 * as a toast). `title`, `submitLabel`: message keys; `lead`: nodes.
 */
function formDialog({ title, lead, fields, submitLabel, submitTest, danger, onSubmit }) {
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
      const msg = e && e.local ? t(e.key) : fail(t(title), e);
      if (e && e.local) toast(msg, 'error');
      if (msg) {
        if (e && e.local) showError(err, e.key);
        else {
          const { key, args } = errMessage(e);
          showError(err, key, args);
        }
      }
    } finally {
      ok.disabled = false;
    }
  });
  document.body.append(dlg);
  dlg.showModal();
  return dlg;
}

/** A validation problem found in the page (not a failed request): its message key. */
function invalid(key) {
  const e = new Error(key);
  e.local = true;
  e.key = key;
  return e;
}

/** The patient's name and ID in one line (data). */
function reqLabel(r) {
  return [personNameFull(r.patient_name), r.patient_id].filter(Boolean).join(' · ');
}

// ------------------------------------------------------------------ actions

function timeDialog({ r, title, submitLabel, submitTest, initialMs, path }) {
  const input = el('input', {
    type: 'datetime-local',
    required: true,
    value: toLocalInput(initialMs),
    min: toLocalInput(Date.now()),
    dataset: { test: 'req-time' },
  });
  const pref =
    r.preferred_from_ms || r.preferred_to_ms
      ? el('span', {
          i18n: 'requests.preferred',
          i18nArgs: { from: fmtTime(r.preferred_from_ms) || '…', to: fmtTime(r.preferred_to_ms) || '…' },
        })
      : el('span', { i18n: 'requests.no_preferred' });
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  formDialog({
    title,
    lead: [el('span', { translate: 'no' }, reqLabel(r)), ' · ', pref],
    fields: [
      field(
        'requests.time',
        input,
        zone
          ? [el('span', { i18n: 'requests.time_hint' }), ' (', el('span', { translate: 'no' }, zone), ')']
          : el('span', { i18n: 'requests.time_hint' }),
      ),
    ],
    submitLabel,
    submitTest,
    onSubmit: async () => {
      const ms = fromLocalInput(input.value);
      if (!ms) throw invalid('requests.pick_time');
      if (ms < Date.now() - 60_000) throw invalid('requests.pick_future');
      try {
        await api(`/api/requests/${enc(r.id)}/${path}`, { method: 'POST', body: { scheduled_ms: ms } });
      } catch (e) {
        if (e instanceof ApiError && e.status === 409) load();
        throw e;
      }
      toast(t('requests.scheduled_for', { time: fmtTime(ms) }), 'ok');
      highlightId = r.id;
      load();
    },
  });
}

function suggestedTime(r) {
  const soon = Math.ceil((Date.now() + 15 * 60_000) / (5 * 60_000)) * 5 * 60_000;
  if (r.preferred_from_ms && r.preferred_from_ms > Date.now()) return r.preferred_from_ms;
  if (r.preferred_to_ms && r.preferred_to_ms > soon) return soon;
  return soon;
}

function acceptDialog(r) {
  timeDialog({
    r,
    title: 'requests.accept.title',
    submitLabel: 'requests.accept',
    submitTest: 'req-accept-submit',
    initialMs: suggestedTime(r),
    path: 'accept',
  });
}

function rescheduleDialog(r) {
  timeDialog({
    r,
    title: 'requests.reschedule.title',
    submitLabel: 'requests.reschedule',
    submitTest: 'req-reschedule-submit',
    initialMs: r.scheduled_ms && r.scheduled_ms > Date.now() ? r.scheduled_ms : suggestedTime(r),
    path: 'reschedule',
  });
}

function cancelDialog(r) {
  const reason = el('textarea', {
    rows: 3,
    maxlength: 1000,
    required: true,
    dataset: { test: 'req-cancel-reason' },
    i18nPlaceholder: user.role === 'expert' ? 'requests.cancel.ph_expert' : 'requests.cancel.ph_clinic',
  });
  formDialog({
    title: 'requests.cancel.title',
    lead: el('span', { translate: 'no' }, reqLabel(r)),
    fields: [field('requests.cancel.reason', reason)],
    submitLabel: 'requests.cancel.title',
    submitTest: 'req-cancel-submit',
    danger: true,
    onSubmit: async () => {
      try {
        await api(`/api/requests/${enc(r.id)}/cancel`, { method: 'POST', body: { reason: reason.value.trim() } });
      } catch (e) {
        if (e instanceof ApiError && e.status === 409) load();
        throw e;
      }
      toast(t('requests.cancel.done'), 'ok');
      load();
    },
  });
}

/** Ends a held consultation: the request is done and its room closes. */
async function finish(r, btn) {
  if (!confirm(t('requests.finish.confirm', { patient: reqLabel(r) }))) return;
  btn.disabled = true;
  try {
    await api(`/api/requests/${enc(r.id)}/finish`, { method: 'POST' });
    toast(t('requests.finish.done'), 'ok');
  } catch (e) {
    fail(t('requests.err.finish'), e);
    btn.disabled = false;
  }
  load();
}

async function join(r, btn) {
  btn.disabled = true;
  btn.dataset.joining = '1';
  btn.dataset.i18n = 'requests.joining';
  btn.textContent = t('requests.joining');
  try {
    const res = await api(`/api/requests/${enc(r.id)}/join`, { method: 'POST' });
    const url = res && res.url;
    if (typeof url !== 'string' || !url.startsWith('/') || url.startsWith('//')) throw new ApiError(500, 'no room address');
    location.assign(url);
    return;
  } catch (e) {
    fail(t('requests.err.join'), e);
    if (e instanceof ApiError && e.status === 409) load();
  }
  delete btn.dataset.joining;
  btn.dataset.i18n = 'requests.join';
  btn.textContent = t('requests.join');
  joinState(btn);
}

// ------------------------------------------------------------------ list

function actionsFor(r) {
  const out = [];
  const role = user.role;
  if (role === 'expert' && r.state === 'requested') {
    out.push(
      el(
        'button',
        {
          type: 'button',
          class: 'small primary',
          dataset: { test: 'req-accept' },
          onclick: () => acceptDialog(r),
          i18n: 'requests.accept',
        },
      ),
    );
  }
  // A scheduled consultation belongs to the clinic and the accepting expert.
  const party = role === 'clinic' || (role === 'expert' && r.expert === user.username);
  if (r.state === 'scheduled' && party) {
    const b = el('button', { type: 'button', class: 'small primary', dataset: { test: 'req-join' }, i18n: 'requests.join' });
    if (r.scheduled_ms) b.dataset.opensAt = String(r.scheduled_ms - JOIN_EARLY_MS);
    joinState(b);
    b.addEventListener('click', () => join(r, b));
    out.push(b);
    out.push(
      el(
        'button',
        {
          type: 'button',
          class: 'small',
          dataset: { test: 'req-reschedule' },
          onclick: () => rescheduleDialog(r),
          i18n: 'requests.reschedule',
        },
      ),
    );
    const done = el('button', { type: 'button', class: 'small', dataset: { test: 'req-finish' }, i18n: 'requests.finish' });
    done.addEventListener('click', () => finish(r, done));
    out.push(done);
  }
  if (r.state === 'requested' || (r.state === 'scheduled' && (party || role === 'admin'))) {
    out.push(
      el(
        'button',
        {
          type: 'button',
          class: 'small danger',
          dataset: { test: 'req-cancel' },
          onclick: () => cancelDialog(r),
          i18n: role === 'expert' && r.state === 'requested' ? 'requests.decline' : 'requests.cancel',
        },
      ),
    );
  }
  return out.length ? el('div', { class: 'actions' }, out) : el('span', { class: 'muted' }, '—');
}

/** Join is possible from JOIN_EARLY_MS before the start. */
function joinState(b) {
  const opensAt = Number(b.dataset.opensAt || 0);
  const early = opensAt > Date.now();
  if (b.dataset.joining) return;
  b.disabled = early;
  b.title = early ? t('requests.opens_at', { time: fmtTime(opensAt) }) : '';
}

function row(r) {
  const studies = r.study_uids || [];
  let sched = el('span', { class: 'muted' }, '—');
  if (r.scheduled_ms) {
    const [text, soon] = countdown(r.scheduled_ms);
    sched = [
      el('span', { class: 'nowrap' }, fmtTime(r.scheduled_ms)),
      r.state === 'scheduled'
        ? el(
            'span',
            { class: `sub countdown${soon ? ' now' : ''}`, dataset: { at: r.scheduled_ms, test: 'req-countdown' } },
            text,
          )
        : null,
      r.expert
        ? el(
            'span',
            { class: 'sub' },
            el('span', { i18n: 'requests.with' }),
            ' ',
            el('span', { translate: 'no' }, r.expert_name || r.expert),
          )
        : null,
    ];
  }
  const preferred =
    r.preferred_from_ms || r.preferred_to_ms
      ? [
          el('span', { class: 'nowrap' }, fmtTime(r.preferred_from_ms) || '…'),
          el('span', { class: 'sub nowrap', i18n: 'requests.to', i18nArgs: { time: fmtTime(r.preferred_to_ms) || '…' } }),
        ]
      : el('span', { class: 'muted', i18n: 'requests.any_time' });
  return el(
    'tr',
    {
      id: `request-${r.id}`,
      class: String(r.id) === String(highlightId) ? 'highlight' : undefined,
      dataset: { test: 'request-row', id: r.id, state: r.state },
    },
    el(
      'td',
      { class: 'nowrap' },
      fmtTime(r.created_ms),
      r.requested_by
        ? el(
            'span',
            { class: 'sub' },
            el('span', { i18n: 'requests.by' }),
            ' ',
            el('span', { translate: 'no' }, r.requested_by_name || r.requested_by),
          )
        : null,
    ),
    el(
      'td',
      {},
      personNameEl(r.patient_name, 'strong', 'requests.no_name'),
      r.patient_id
        ? el('span', { class: 'sub' }, el('span', { i18n: 'requests.id' }), ' ', el('span', { translate: 'no' }, r.patient_id))
        : null,
      user.role !== 'clinic' && r.clinic_id
        ? el('span', { class: 'sub', translate: 'no' }, clinicNames.get(r.clinic_id) || r.clinic_id)
        : null,
    ),
    el('td', { class: 'question', translate: 'no' }, r.question || '—'),
    el(
      'td',
      { class: 'nowrap' },
      studies.length
        ? studies.map((uid, i) =>
            el('a', {
              href: `/viewer?study=${enc(uid)}`,
              class: 'sub',
              i18n: studies.length === 1 ? 'requests.open_study' : 'requests.study_n',
              i18nArgs: studies.length === 1 ? undefined : { n: i + 1 },
            }),
          )
        : el('span', { class: 'muted', i18n: 'requests.none' }),
    ),
    el(
      'td',
      {},
      r.urgency
        ? codeLabel('studies.prio', r.urgency, { class: `badge prio-${r.urgency}` })
        : el('span', { class: 'muted' }, '—'),
    ),
    el('td', {}, preferred),
    el(
      'td',
      {},
      codeLabel('requests.state', r.state, { class: `badge st-${r.state}`, dataset: { state: r.state } }),
      r.state === 'cancelled' && r.cancel_reason ? el('span', { class: 'sub', translate: 'no' }, r.cancel_reason) : null,
    ),
    el('td', {}, sched),
    el('td', { class: 'sticky-end' }, actionsFor(r)),
  );
}

function sortKey(a, b) {
  const rank = (r) => (r.state === 'scheduled' ? 0 : r.state === 'requested' ? 1 : 2);
  if (rank(a) !== rank(b)) return rank(a) - rank(b);
  if (a.state === 'scheduled') return (a.scheduled_ms || 0) - (b.scheduled_ms || 0);
  if (a.state === 'requested') {
    const u = (URGENCY_RANK[a.urgency] ?? 3) - (URGENCY_RANK[b.urgency] ?? 3);
    return u || (a.created_ms || 0) - (b.created_ms || 0);
  }
  return (b.created_ms || 0) - (a.created_ms || 0);
}

function render() {
  const onlyOpen = $('#show').value === 'open';
  const shown = requests.filter((r) => !onlyOpen || OPEN.has(r.state)).sort(sortKey);
  hook.ids = shown.map((r) => r.id);
  hook.rows = shown.map((r) => ({ id: r.id, state: r.state, scheduled_ms: r.scheduled_ms ?? null }));
  $('#rows').replaceChildren(...shown.map(row));
  $('#table-wrap').hidden = shown.length === 0;
  const empty = $('#empty');
  empty.hidden = shown.length > 0;
  empty.dataset.i18n =
    requests.length && onlyOpen ? 'requests.empty.open' : user.role === 'clinic' ? 'requests.empty.clinic' : 'requests.empty';
  empty.textContent = t(empty.dataset.i18n);
  const open = requests.filter((r) => OPEN.has(r.state)).length;
  $('#summary').textContent = requests.length ? t('requests.summary', { open, n: requests.length }) : '';
  if (highlightId != null) {
    const tr = document.getElementById(`request-${highlightId}`);
    if (tr) tr.scrollIntoView({ block: 'nearest' });
  }
}

function tick() {
  for (const s of document.querySelectorAll('#rows .countdown[data-at]')) {
    const [text, soon] = countdown(Number(s.dataset.at));
    s.textContent = text;
    s.classList.toggle('now', soon);
  }
  for (const b of document.querySelectorAll('#rows [data-test="req-join"][data-opens-at]')) joinState(b);
}

let loadBusy = null;
async function load({ auto = false } = {}) {
  if (loadBusy) return loadBusy;
  loadBusy = (async () => {
    try {
      const r = await api('/api/requests');
      requests = r.requests || [];
      render();
      failing = false;
    } catch (e) {
      if (!auto || !failing) fail(t('requests.err.load'), e);
      failing = true;
    } finally {
      loadedAt = Date.now();
      loadBusy = null;
    }
  })();
  return loadBusy;
}

function schedule() {
  clearTimeout(refreshTimer);
  clearInterval(tickTimer);
  refreshTimer = null;
  tickTimer = null;
  if (document.hidden) return;
  tickTimer = setInterval(tick, TICK_MS);
  if (!requests.some((r) => OPEN.has(r.state))) return;
  refreshTimer = setTimeout(async () => {
    await load({ auto: true });
    schedule();
  }, REFRESH_MS);
}

// ------------------------------------------------------------------ new request (clinic doctors)

/** A study to pick: its date, modalities, description and patient, all data. */
function studyOption(s) {
  const study = [dicomDate(s.study_date), list(s.modalities), s.description].filter(Boolean).join(' · ');
  const text = `${study} — ${personNameFull(s.patient_name) || '—'}${s.patient_id ? ` (${s.patient_id})` : ''}`;
  return el(
    'option',
    {
      value: s.study_uid,
      translate: 'no',
      dataset: { patientId: s.patient_id || '', patientName: personName(s.patient_name) || '' },
    },
    text,
  );
}

let studyOptions = null;
/** The clinic's 50 most recent studies as options, fetched once. */
function loadStudyOptions() {
  if (studyOptions) return studyOptions;
  studyOptions = (async () => {
    const sel = $('#request-form').elements.study_uids;
    try {
      const r = await api('/api/studies?limit=50');
      const have = new Set([...sel.options].map((o) => o.value));
      for (const s of r.studies || []) if (!have.has(s.study_uid)) sel.append(studyOption(s));
      if (!sel.options.length) sel.append(el('option', { disabled: true, value: '', i18n: 'requests.f.no_studies' }));
    } catch (e) {
      studyOptions = null;
      fail(t('requests.err.studies'), e);
    }
  })();
  return studyOptions;
}

function showForm(show) {
  const form = $('#request-form');
  form.hidden = !show;
  $('#new-request').setAttribute('aria-expanded', String(show));
  $('#new-request').hidden = show;
  if (show) {
    loadStudyOptions();
    form.scrollIntoView({ block: 'start' });
  }
}

/** `?new=1&study=UID`: the study's patient and the study itself. */
async function prefill(uid) {
  const form = $('#request-form');
  try {
    const r = await api(`/api/studies/${enc(uid)}`);
    const s = r.study || r;
    if (!form.elements.patient_id.value) form.elements.patient_id.value = s.patient_id || '';
    if (!form.elements.patient_name.value) form.elements.patient_name.value = personName(s.patient_name) || '';
    const sel = form.elements.study_uids;
    let opt = [...sel.options].find((o) => o.value === uid);
    if (!opt) {
      opt = studyOption(s);
      sel.prepend(opt);
    }
    opt.selected = true;
    const w = r.worklist;
    if (w && w.priority && w.priority !== 'routine') form.elements.urgency.value = w.priority;
  } catch (e) {
    fail(t('requests.err.study'), e);
  }
}

function setupForm() {
  const form = $('#request-form');
  const err = $('#request-error');
  $('#new-request').hidden = false;
  $('#new-request').addEventListener('click', () => {
    showForm(true);
    form.elements.question.focus();
  });
  $('#request-close').addEventListener('click', () => {
    showForm(false);
    err.hidden = true;
  });
  // Picking a study fills in its patient when the fields are still empty.
  form.elements.study_uids.addEventListener('change', () => {
    const o = form.elements.study_uids.selectedOptions[0];
    if (!o) return;
    if (!form.elements.patient_id.value && o.dataset.patientId) form.elements.patient_id.value = o.dataset.patientId;
    if (!form.elements.patient_name.value && o.dataset.patientName) form.elements.patient_name.value = o.dataset.patientName;
  });
  const from = form.elements.preferred_from;
  const to = form.elements.preferred_to;
  from.min = toLocalInput(Date.now());
  from.addEventListener('change', () => {
    to.min = from.value || toLocalInput(Date.now());
  });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    const problem = (key) => {
      showError(err, key);
      toast(t(key), 'error');
    };
    const fromMs = fromLocalInput(from.value);
    const toMs = fromLocalInput(to.value);
    if (fromMs && toMs && toMs <= fromMs) return problem('requests.f.window_reversed');
    const body = {
      patient_id: form.elements.patient_id.value.trim(),
      patient_name: form.elements.patient_name.value.trim(),
      question: form.elements.question.value.trim(),
      study_uids: [...form.elements.study_uids.selectedOptions].map((o) => o.value).filter(Boolean),
      urgency: form.elements.urgency.value,
      preferred_from_ms: fromMs,
      preferred_to_ms: toMs,
    };
    // Without an ID the server takes the patient of the first attached study.
    if (!body.patient_id && !body.study_uids.length) return problem('requests.f.need_patient');
    if (!body.question) return problem('requests.f.need_question');
    const submit = form.querySelector('[data-test="req-submit"]');
    submit.disabled = true;
    try {
      const r = await api('/api/requests', { method: 'POST', body });
      toast(t('requests.f.sent'), 'ok');
      form.reset();
      showForm(false);
      history.replaceState(null, '', location.pathname);
      highlightId = r && r.request ? r.request.id : null;
      await load();
      schedule();
    } catch (e) {
      const msg = fail(t('requests.err.send'), e);
      if (msg) {
        const { key, args } = errMessage(e);
        showError(err, key, args);
      }
    } finally {
      submit.disabled = false;
    }
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
  header(user, '/requests');
  // The list's countdowns, summary and tooltips are rebuilt in the new
  // language; the form and what is typed in it stay.
  onLang(() => render());
  const m = /^#request-(.+)$/.exec(location.hash);
  if (m) highlightId = decodeURIComponent(m[1]);
  $('#show').addEventListener('change', render);
  const params = new URLSearchParams(location.search);
  const pending = [];
  if (user.role !== 'clinic') {
    // Clinic names for the list (experts and admins see several clinics).
    pending.push(
      api('/api/clinics')
        .then((r) => (r.clinics || []).forEach((c) => clinicNames.set(c.id, c.name || c.id)))
        .catch((e) => fail(t('studies.load_clinics'), e))
        .then(() => load()),
    );
  } else {
    pending.push(load());
  }
  if (user.role === 'clinic') {
    setupForm();
    if (params.get('new') === '1') {
      showForm(true);
      $('#request-form').elements.question.focus({ preventScroll: true });
      const study = params.get('study');
      if (study) pending.push(loadStudyOptions().then(() => prefill(study)));
    }
  }
  await Promise.all(pending);
  document.addEventListener('visibilitychange', async () => {
    if (document.hidden) {
      clearTimeout(refreshTimer);
      clearInterval(tickTimer);
      refreshTimer = null;
      tickTimer = null;
      return;
    }
    tick();
    if (Date.now() - loadedAt >= REFRESH_MS) await load({ auto: true });
    schedule();
  });
  schedule();
}

hook.reload = () => load();

main().finally(() => {
  hook.ready = true;
});
