// Administration: users, report turnaround per clinic and priority, the
// structured-report delivery queue, and the audit trail (with CSV export).
// Each tab loads when it is first shown; "Refresh" reloads it.
// PHI rule: nothing is logged to the console.

import {
  api,
  ApiError,
  session,
  header,
  el,
  $,
  $$,
  toast,
  testHook,
  fmtTime,
  fmtDuration,
  fromLocalInput,
  toLocalInput,
  cap,
  errText,
  failer,
} from './app-common.js';

const TABS = ['users', 'turnaround', 'deliveries', 'audit'];
const PRIO_RANK = { stat: 0, urgent: 1, routine: 2 };
const ROLE_LABEL = { clinic: 'Clinic doctor', expert: 'Expert', admin: 'Administrator' };

const hook = testHook('admin', {
  ready: false,
  tab: null,
  users: [],
  turnaround: { rows: 0, waiting: 0 },
  deliveries: [],
  audit: 0,
  errors: [],
});
const fail = failer(hook);

const enc = encodeURIComponent;

let user = null;
const loaded = new Set();
const clinicNames = new Map();
const hospitalNames = new Map();
let directory = null;

// ------------------------------------------------------------------ helpers

/** The array in an answer that may be a bare array or wrapped in an object. */
function arrayOf(r, ...keys) {
  if (Array.isArray(r)) return r;
  for (const k of keys) if (r && Array.isArray(r[k])) return r[k];
  return [];
}

function prioBadge(p) {
  if (!p) return el('span', { class: 'muted' }, '—');
  return el('span', { class: `badge prio-${p}` }, p === 'stat' ? 'STAT' : cap(p));
}

function clinicName(id) {
  return clinicNames.get(id) || id || '—';
}

function dash(v) {
  return v === null || v === undefined || v === '' ? el('span', { class: 'muted' }, '—') : String(v);
}

function shortUid(uid) {
  if (!uid) return el('span', { class: 'muted' }, '—');
  const short = uid.length > 18 ? `…${uid.slice(-16)}` : uid;
  return el('a', { href: `/viewer?study=${enc(uid)}`, class: 'mono', title: uid }, short);
}

function show(wrapId, emptyId, n) {
  $(wrapId).hidden = n === 0;
  $(emptyId).hidden = n > 0;
}

function field(label, control) {
  return el('label', { class: 'field' }, label, control);
}

function confirmDialog({ title, text, submitLabel, submitTest, onConfirm }) {
  const err = el('p', { class: 'form-error', role: 'alert', hidden: true });
  const ok = el('button', { type: 'submit', class: 'primary danger', dataset: { test: submitTest } }, submitLabel);
  const close = el('button', { type: 'button' }, 'Close');
  const form = el(
    'form',
    { class: 'dialog-form' },
    el('h2', {}, title),
    el('p', { class: 'lead' }, text),
    err,
    el('div', { class: 'dialog-actions' }, close, ok),
  );
  const dlg = el('dialog', { class: 'dialog', 'aria-label': title }, form);
  close.addEventListener('click', () => dlg.close());
  dlg.addEventListener('close', () => dlg.remove());
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    ok.disabled = true;
    try {
      await onConfirm();
      dlg.close();
    } catch (e) {
      if (fail(title, e)) {
        err.textContent = errText(e);
        err.hidden = false;
      }
    } finally {
      ok.disabled = false;
    }
  });
  document.body.append(dlg);
  dlg.showModal();
  ok.focus();
}

async function loadDirectory() {
  if (directory) return directory;
  try {
    directory = await api('/api/clinics');
  } catch (e) {
    fail('Loading clinics', e);
    directory = { clinics: [], hospitals: [] };
  }
  for (const c of directory.clinics || []) clinicNames.set(c.id, c.name || c.id);
  for (const h of directory.hospitals || []) hospitalNames.set(h.id, h.name || h.id);
  return directory;
}

// ------------------------------------------------------------------ tabs

function selectTab(name, { focus = false } = {}) {
  if (!TABS.includes(name)) name = 'users';
  for (const t of TABS) {
    const tab = $(`#tab-${t}`);
    const on = t === name;
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`#panel-${t}`).hidden = !on;
    if (on && focus) tab.focus();
  }
  hook.tab = name;
  if (location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
  if (!loaded.has(name)) {
    loaded.add(name);
    return LOADERS[name]();
  }
  return Promise.resolve();
}

function setupTabs() {
  const tabs = $$('[role="tab"]');
  for (const t of tabs) {
    t.addEventListener('click', () => selectTab(t.dataset.tab));
    t.addEventListener('keydown', (ev) => {
      const i = tabs.indexOf(t);
      let j = null;
      if (ev.key === 'ArrowRight') j = (i + 1) % tabs.length;
      else if (ev.key === 'ArrowLeft') j = (i - 1 + tabs.length) % tabs.length;
      else if (ev.key === 'Home') j = 0;
      else if (ev.key === 'End') j = tabs.length - 1;
      if (j === null) return;
      ev.preventDefault();
      selectTab(tabs[j].dataset.tab, { focus: true });
    });
  }
  window.addEventListener('hashchange', () => selectTab(location.hash.slice(1)));
}

// ------------------------------------------------------------------ users

function userRow(u) {
  const where = u.role === 'clinic' ? clinicName(u.clinic_id) : u.hospital_id ? hospitalNames.get(u.hospital_id) || u.hospital_id : '';
  const actions = [];
  if (!u.disabled && u.username !== user.username) {
    actions.push(
      el(
        'button',
        {
          type: 'button',
          class: 'small danger',
          dataset: { test: 'user-disable' },
          onclick: () =>
            confirmDialog({
              title: 'Disable user',
              text: `Disable ${u.username}? Their sessions end and they can no longer sign in. Their reports and audit trail stay.`,
              submitLabel: 'Disable',
              submitTest: 'user-disable-confirm',
              onConfirm: async () => {
                await api(`/api/admin/users/${enc(u.username)}/disable`, { method: 'POST' });
                toast(`${u.username} disabled`, 'ok');
                await loadUsers();
              },
            }),
        },
        'Disable',
      ),
    );
  }
  return el(
    'tr',
    { dataset: { test: 'user-row', username: u.username, disabled: u.disabled ? '1' : '0' } },
    el('td', { class: 'mono' }, u.username),
    el('td', {}, dash(u.display_name)),
    el('td', {}, ROLE_LABEL[u.role] || u.role),
    el('td', {}, dash(where)),
    el('td', {}, dash(u.department)),
    el(
      'td',
      {},
      u.disabled ? el('span', { class: 'badge st-disabled' }, 'Disabled') : el('span', { class: 'badge st-complete' }, 'Active'),
    ),
    el('td', {}, actions.length ? el('div', { class: 'actions' }, actions) : el('span', { class: 'muted' }, '—')),
  );
}

async function loadUsers() {
  await loadDirectory();
  try {
    const r = await api('/api/admin/users');
    const users = arrayOf(r, 'users').sort(
      (a, b) => Number(!!a.disabled) - Number(!!b.disabled) || String(a.username).localeCompare(String(b.username)),
    );
    hook.users = users.map((u) => u.username);
    $('#users-rows').replaceChildren(...users.map(userRow));
    show('#users-wrap', '#users-empty', users.length);
  } catch (e) {
    fail('Loading users', e);
  }
}

function setupUserForm() {
  const form = $('#user-form');
  const role = form.elements.role;
  const syncRole = () => {
    const r = role.value;
    $('#user-clinic-field').hidden = r !== 'clinic';
    $('#user-hospital-field').hidden = r !== 'expert';
    form.elements.clinic_id.required = r === 'clinic';
    form.elements.hospital_id.required = r === 'expert';
  };
  role.addEventListener('change', syncRole);
  syncRole();
  loadDirectory().then((d) => {
    const clinics = d.clinics || [];
    const hospitals = d.hospitals || [];
    form.elements.clinic_id.replaceChildren(
      el('option', { value: '' }, clinics.length ? 'Choose…' : 'No clinics configured'),
      ...clinics.map((c) => el('option', { value: c.id }, `${c.name || c.id} (${c.id})`)),
    );
    form.elements.hospital_id.replaceChildren(
      el('option', { value: '' }, hospitals.length ? 'Choose…' : 'No hospitals configured'),
      ...hospitals.map((h) => el('option', { value: h.id }, `${h.name || h.id} (${h.id})`)),
    );
    if (clinics.length === 1) form.elements.clinic_id.value = clinics[0].id;
    if (hospitals.length === 1) form.elements.hospital_id.value = hospitals[0].id;
  });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    const r = f.role.value;
    const body = {
      username: f.username.value.trim(),
      password: f.password.value,
      display_name: f.display_name.value.trim(),
      role: r,
      clinic_id: r === 'clinic' ? f.clinic_id.value || null : null,
      hospital_id: r === 'expert' ? f.hospital_id.value || null : null,
      department: f.department.value.trim() || null,
    };
    const btn = form.querySelector('[data-test="user-add"]');
    btn.disabled = true;
    try {
      await api('/api/admin/users', { method: 'POST', body });
      toast(`User ${body.username} added`, 'ok');
      form.reset();
      syncRole();
      await loadUsers();
    } catch (e) {
      fail('Adding the user', e);
    } finally {
      btn.disabled = false;
    }
  });
}

// ------------------------------------------------------------------ turnaround

async function loadTurnaround() {
  await loadDirectory();
  const days = $('#ta-days').value;
  try {
    const r = await api(`/api/admin/turnaround?days=${enc(days)}`);
    const rows = (r.rows || []).slice().sort(
      (a, b) =>
        clinicName(a.clinic_id).localeCompare(clinicName(b.clinic_id)) ||
        (PRIO_RANK[a.priority] ?? 3) - (PRIO_RANK[b.priority] ?? 3),
    );
    const waiting = (r.waiting || []).slice().sort(
      (a, b) => (PRIO_RANK[a.priority] ?? 3) - (PRIO_RANK[b.priority] ?? 3) || waitAge(b) - waitAge(a),
    );
    hook.turnaround = { rows: rows.length, waiting: waiting.length, days: Number(days) };
    $('#ta-rows').replaceChildren(
      ...rows.map((x) =>
        el(
          'tr',
          { dataset: { test: 'turnaround-row', clinic: x.clinic_id, priority: x.priority } },
          el('td', {}, clinicName(x.clinic_id)),
          el('td', {}, prioBadge(x.priority)),
          el('td', { class: 'num' }, dash(x.studies)),
          el('td', { class: 'num' }, String(x.reported ?? 0)),
          el('td', { class: 'num' }, dash(fmtDuration(x.p50_report_ms))),
          el('td', { class: 'num' }, dash(fmtDuration(x.p90_report_ms))),
          el('td', { class: 'num' }, String(x.delivered ?? 0)),
          el('td', { class: 'num' }, dash(fmtDuration(x.p50_deliver_ms))),
        ),
      ),
    );
    show('#ta-wrap', '#ta-empty', rows.length);
    $('#wait-rows').replaceChildren(
      ...waiting.map((w) =>
        el(
          'tr',
          { dataset: { test: 'waiting-row', clinic: w.clinic_id, priority: w.priority } },
          el('td', {}, clinicName(w.clinic_id)),
          el('td', {}, prioBadge(w.priority)),
          el('td', { class: 'num' }, String(w.count ?? 0)),
          el(
            'td',
            { class: 'num', title: isTimestamp(w.oldest_ms) ? `since ${fmtTime(w.oldest_ms)}` : undefined },
            dash(w.oldest_ms != null ? fmtDuration(waitAge(w)) : ''),
          ),
        ),
      ),
    );
    show('#wait-wrap', '#wait-empty', waiting.length);
  } catch (e) {
    fail('Loading turnaround', e);
  }
}

// `oldest_ms` may be the oldest study's enqueue time (epoch ms) or its age.
function isTimestamp(v) {
  return Number(v) > 1e12;
}
function waitAge(w) {
  if (Number.isFinite(w.oldest_waiting_ms)) return w.oldest_waiting_ms;
  const v = Number(w.oldest_ms) || 0;
  return isTimestamp(v) ? Date.now() - v : v;
}

// ------------------------------------------------------------------ deliveries

async function loadDeliveries() {
  await loadDirectory();
  try {
    const r = await api('/api/admin/deliveries');
    const all = arrayOf(r, 'deliveries', 'items', 'queue');
    const problemsOnly = $('#dl-show').value === 'problems';
    const shown = all
      .filter((d) => !problemsOnly || d.state !== 'sent')
      .sort((a, b) => {
        const rank = (d) => (d.state === 'failing' ? 0 : d.state === 'pending' ? 1 : 2);
        return rank(a) - rank(b) || (b.created_ms || 0) - (a.created_ms || 0);
      });
    hook.deliveries = shown.map((d) => ({ id: d.id ?? null, study_uid: d.study_uid, version: d.version, state: d.state }));
    const failing = all.filter((d) => d.state === 'failing').length;
    const pending = all.filter((d) => d.state === 'pending').length;
    $('#dl-summary').textContent = `${failing} failing · ${pending} pending · ${all.length - failing - pending} sent`;
    $('#dl-rows').replaceChildren(
      ...shown.map((d) =>
        el(
          'tr',
          { dataset: { test: 'delivery-row', state: d.state } },
          el('td', { class: 'nowrap' }, dash(fmtTime(d.created_ms))),
          el('td', {}, clinicName(d.clinic_id)),
          el('td', {}, shortUid(d.study_uid)),
          el('td', { class: 'num' }, dash(d.version)),
          el('td', { class: 'mono' }, dash(d.target)),
          el('td', {}, el('span', { class: `badge st-${d.state}` }, cap(d.state || ''))),
          el('td', { class: 'num' }, String(d.attempts ?? 0)),
          el('td', { class: 'nowrap' }, d.state === 'sent' ? dash('') : dash(fmtTime(d.next_attempt_ms))),
          el('td', { class: 'clip' }, dash(d.last_error)),
          el('td', { class: 'nowrap' }, dash(fmtTime(d.sent_ms))),
        ),
      ),
    );
    show('#dl-wrap', '#dl-empty', shown.length);
    $('#dl-empty').textContent = all.length && problemsOnly ? 'Nothing pending or failing.' : 'No deliveries.';
  } catch (e) {
    fail('Loading deliveries', e);
  }
}

// ------------------------------------------------------------------ audit

function auditQuery() {
  const f = $('#audit-form').elements;
  const q = new URLSearchParams();
  const from = fromLocalInput(f.from.value);
  const to = fromLocalInput(f.to.value);
  if (from) q.set('from_ms', String(from));
  if (to) q.set('to_ms', String(to));
  if (f.user.value.trim()) q.set('user', f.user.value.trim());
  if (f.action.value.trim()) q.set('action', f.action.value.trim());
  if (f.study_uid.value.trim()) q.set('study_uid', f.study_uid.value.trim());
  q.set('limit', f.limit.value);
  return q;
}

function syncExport() {
  const q = auditQuery();
  q.set('format', 'csv');
  $('#audit-export').href = `/api/admin/audit?${q}`;
}

async function loadAudit() {
  const q = auditQuery();
  q.set('format', 'json');
  try {
    const r = await api(`/api/admin/audit?${q}`);
    const events = arrayOf(r, 'events', 'items', 'audit', 'rows');
    hook.audit = events.length;
    $('#audit-rows').replaceChildren(
      ...events.map((a) =>
        el(
          'tr',
          { dataset: { test: 'audit-row', action: a.action } },
          el('td', { class: 'nowrap' }, fmtTime(a.at_ms)),
          el('td', { class: 'mono' }, dash(a.username)),
          el('td', {}, dash(a.role)),
          el('td', { class: 'nowrap' }, dash(a.action)),
          el('td', {}, shortUid(a.study_uid)),
          el('td', { class: 'clip' }, dash(a.detail)),
          el('td', { class: 'mono' }, dash(a.remote)),
        ),
      ),
    );
    show('#audit-wrap', '#audit-empty', events.length);
    const limit = Number(q.get('limit'));
    $('#audit-summary').textContent = events.length
      ? `${events.length} event${events.length === 1 ? '' : 's'}${events.length >= limit ? ` (first ${limit}; narrow the filters or export)` : ''}`
      : '';
  } catch (e) {
    fail('Loading the audit trail', e);
  }
}

function setupAudit() {
  const form = $('#audit-form');
  form.addEventListener('input', syncExport);
  form.addEventListener('change', syncExport);
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = auditQuery();
    if (q.get('from_ms') && q.get('to_ms') && Number(q.get('from_ms')) > Number(q.get('to_ms'))) {
      toast('“From” is after “To”', 'error');
      return;
    }
    syncExport();
    loadAudit();
  });
  // Default: the last 7 days.
  form.elements.from.value = toLocalInput(Date.now() - 7 * 86_400_000);
  syncExport();
}

// ------------------------------------------------------------------ start

const LOADERS = {
  users: loadUsers,
  turnaround: loadTurnaround,
  deliveries: loadDeliveries,
  audit: loadAudit,
};

async function main() {
  try {
    user = await session();
  } catch (e) {
    fail('Loading your session', e);
    return;
  }
  header(user, '/admin');
  if (user.role !== 'admin') {
    $('#main').replaceChildren(
      el('h1', {}, 'Administration'),
      el('p', { class: 'notice' }, 'This page is for administrators. ', el('a', { href: '/' }, 'Go to your home page'), '.'),
    );
    hook.errors.push('Not allowed for your role');
    return;
  }
  setupTabs();
  setupUserForm();
  setupAudit();
  $('#ta-days').addEventListener('change', loadTurnaround);
  $('#ta-refresh').addEventListener('click', loadTurnaround);
  $('#dl-show').addEventListener('change', loadDeliveries);
  $('#dl-refresh').addEventListener('click', loadDeliveries);
  await selectTab(location.hash.slice(1) || 'users');
}

hook.select = (name) => selectTab(name);

main().finally(() => {
  hook.ready = true;
});
