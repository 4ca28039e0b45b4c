// Administration: users, report turnaround per clinic and priority, the
// structured-report delivery queue, instances refused at ingest (UIDs of
// another clinic's data), the audit trail (with CSV export) and
// the WAN relay link (hub: edges and arriving studies; edge: the hub link
// and the outbox). Each tab loads when it is first shown; "Refresh" reloads
// it; the relay tab refreshes itself every 3 s while it is shown.
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

const TABS = ['users', 'turnaround', 'deliveries', 'ingest', 'audit', 'relay'];
const RELAY_REFRESH_MS = 3_000;
const PRIO_RANK = { stat: 0, urgent: 1, routine: 2 };
const ROLE_LABEL = { clinic: 'Clinic doctor', expert: 'Expert', admin: 'Administrator' };

const hook = testHook('admin', {
  ready: false,
  tab: null,
  users: [],
  turnaround: { rows: 0, waiting: 0 },
  deliveries: [],
  ingest: [],
  audit: 0,
  relay: null,
  errors: [],
});
const fail = failer(hook);

const enc = encodeURIComponent;

let user = null;
const loaded = new Set();
const clinicNames = new Map();
const hospitalNames = new Map();
let directory = null;
let relayTimer = null;
let relayCtl = null;
let relayFailing = false;

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

/** Bytes as "840 KB" / "12.3 MB" / "1.25 GB" (decimal units, like Mbit/s). */
function fmtBytes(n) {
  if (n === null || n === undefined) return '';
  const b = Number(n) || 0;
  if (b < 1e3) return `${b} B`;
  if (b < 1e6) return `${Math.round(b / 1e3)} KB`;
  if (b < 1e9) return `${(b / 1e6).toFixed(1)} MB`;
  return `${(b / 1e9).toFixed(2)} GB`;
}

/** "12.3 of 45.6 MB": both in the unit of the total. */
function fmtBytesOf(part, total) {
  const t = Number(total) || 0;
  const [div, unit, dp] = t < 1e6 ? [1e3, 'KB', 0] : t < 1e9 ? [1e6, 'MB', 1] : [1e9, 'GB', 2];
  return `${((Number(part) || 0) / div).toFixed(dp)} of ${(t / div).toFixed(dp)} ${unit}`;
}

/** A short span: "0.8 s", "12 s", "3 min". */
function fmtSpan(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(Number(ms))) return '';
  const v = Math.max(0, Number(ms));
  return v < 10_000 ? `${(v / 1000).toFixed(1)} s` : fmtDuration(v);
}

/** Time since `ms`: "3 min ago". */
function ago(ms, now = Date.now()) {
  return ms ? `${fmtDuration(now - ms)} ago` : '';
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
  const before = hook.tab;
  hook.tab = name;
  if (location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
  let done = Promise.resolve();
  if (!loaded.has(name)) {
    loaded.add(name);
    done = LOADERS[name]();
  } else if (name === 'relay' && before !== 'relay') {
    done = loadRelay({ auto: true }); // live figures: never show stale ones
  }
  relaySchedule();
  return done;
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

// ------------------------------------------------------------------ refused at ingest

const LEVEL_LABEL = { study: 'Study', series: 'Series', instance: 'Instance' };

function collidesWith(r) {
  if (r.reason === 'other-clinic') return `${clinicName(r.owner_clinic)}'s data`;
  if (r.reason === 'other-study') return 'another study of the same clinic';
  if (r.reason === 'other-series') return 'another series of the same clinic';
  return r.reason || '—';
}

async function loadIngest() {
  await loadDirectory();
  try {
    const r = await api('/api/admin/ingest-refusals');
    const all = arrayOf(r, 'refusals');
    hook.ingest = all.map((x) => ({ calling_ae: x.calling_ae, level: x.level, reason: x.reason }));
    $('#ir-summary').textContent = all.length ? `${all.length} refused (newest first)` : '';
    $('#ir-rows').replaceChildren(
      ...all.map((x) =>
        el(
          'tr',
          { dataset: { test: 'ingest-row', level: x.level } },
          el('td', { class: 'nowrap' }, dash(fmtTime(x.at_ms))),
          el('td', { class: 'mono', title: x.via === 'relay' ? 'edge (relay link)' : 'calling AE title' }, dash(x.calling_ae)),
          el('td', {}, clinicName(x.clinic_id)),
          el('td', {}, LEVEL_LABEL[x.level] || dash(x.level)),
          el('td', {}, collidesWith(x)),
          el('td', { class: 'mono', title: x.study_uid || '' }, dash(x.study_uid)),
          el('td', { class: 'mono', title: x.sop_instance_uid || '' }, dash(x.sop_instance_uid)),
          el('td', { class: 'mono' }, dash(x.remote)),
        ),
      ),
    );
    show('#ir-wrap', '#ir-empty', all.length);
  } catch (e) {
    fail('Loading refused instances', e);
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

// ------------------------------------------------------------------ relay link

function statusBadge(state, label, title) {
  return el('span', { class: `badge st-${state}`, dataset: { state }, title }, label);
}

function linkBadge(link) {
  if (!link) return statusBadge('disconnected', 'Not connected yet');
  return link.connected ? statusBadge('connected', 'Connected') : statusBadge('disconnected', 'Disconnected');
}

function pct(loss) {
  const v = Number(loss);
  return Number.isFinite(v) ? `${(v * 100).toFixed(v > 0 && v < 0.001 ? 3 : 2)} %` : '';
}

function mbit(bps) {
  const v = Number(bps);
  return v > 0 ? `${(v / 1e6).toFixed(v < 1e7 ? 2 : 1)} Mbit/s` : '';
}

function fmtMs(v) {
  const n = Number(v);
  return v === null || v === undefined || !Number.isFinite(n) ? '' : `${n < 10 ? n.toFixed(1) : Math.round(n)} ms`;
}

/** The link's figures as <dl> entries: [label, value, {error}]. */
function kv(entries) {
  return entries
    .filter(Boolean)
    .map(([label, value, opts = {}]) =>
      el('div', {}, el('dt', {}, label), el('dd', { class: opts.error ? 'error' : undefined, title: opts.title }, dash(value))),
    );
}

/** A registered edge merged with its live link figures (if it connected since the start). */
function edgeRow({ edge: e, link: f }, now) {
  const revoked = !!e.revoked_ms;
  const connected = !revoked && !!(f && f.connected);
  const status = revoked
    ? statusBadge('revoked', 'Revoked', `since ${fmtTime(e.revoked_ms)}`)
    : connected
      ? statusBadge('connected', 'Connected')
      : statusBadge('disconnected', 'Disconnected');
  // Last seen: now while connected, else the later of the last (re)connect
  // and the last figures taken while the connection was up.
  const last = Math.max(Number(e.last_seen_ms) || 0, (f && Number(f.updated_ms)) || 0);
  const remote = (connected && f.remote) || e.last_addr || (f && f.remote) || '';
  const live = connected ? f : null;
  return el(
    'tr',
    { dataset: { test: 'relay-edge-row', edge: e.name, status: revoked ? 'revoked' : connected ? 'connected' : 'disconnected' } },
    el(
      'td',
      {},
      el('span', { class: 'mono', title: e.issued_ms ? `certificate issued ${fmtTime(e.issued_ms)}` : undefined }, e.name),
      e.fingerprint
        ? el('span', { class: 'sub mono', title: `certificate SHA-256 ${e.fingerprint}` }, `${String(e.fingerprint).slice(0, 16)}…`)
        : null,
    ),
    el('td', {}, e.clinic_id ? clinicName(e.clinic_id) : dash('')),
    el('td', {}, status, f && f.last_error ? el('span', { class: 'sub' }, f.last_error) : null),
    el('td', { class: 'mono' }, dash(remote)),
    el('td', { class: 'num' }, dash(live ? fmtMs(live.rtt_ms) : '')),
    el(
      'td',
      { class: 'num', title: live ? `${live.lost_packets ?? 0} of ${live.sent_packets ?? 0} packets lost` : undefined },
      dash(live ? pct(live.loss) : ''),
    ),
    el('td', { class: 'num', title: 'Over the last study relayed' }, dash(f ? mbit(f.goodput_bps) : '')),
    el('td', { class: 'num' }, dash(f ? String(f.studies_total ?? 0) : '')),
    el('td', { class: 'num' }, dash(f ? fmtBytes(f.bytes_total ?? 0) : '')),
    el(
      'td',
      { class: 'nowrap' },
      connected ? 'now' : dash(fmtTime(last)),
      !connected && last ? el('span', { class: 'sub' }, ago(last, now)) : null,
    ),
  );
}

function arrivingRow(a) {
  const done = a.state === 'committed';
  const total = Number(a.total) || 0;
  // Once committed the staged parts are gone (the server counts 0 arrived).
  const arrived = done ? total : Number(a.arrived) || 0;
  const totalBytes = Number(a.total_bytes) || 0;
  const arrivedBytes = done ? totalBytes : Number(a.arrived_bytes) || 0;
  const uid = a.study_uid || '';
  const study = done
    ? shortUid(uid)
    : el('span', { class: 'mono', title: uid }, uid.length > 18 ? `…${uid.slice(-16)}` : uid || '—');
  const after = (t) => (t && a.began_ms ? fmtSpan(t - a.began_ms) : '');
  return el(
    'tr',
    { dataset: { test: 'relay-arriving-row', uid, edge: a.edge, state: a.state } },
    el('td', {}, study),
    el('td', { class: 'mono' }, dash(a.edge)),
    el('td', {}, clinicName(a.clinic_id)),
    el('td', {}, prioBadge(a.priority)),
    el('td', {}, statusBadge(a.state, done ? 'Committed' : 'Arriving')),
    el(
      'td',
      { class: 'num nowrap' },
      `${arrived} of ${total}`,
      !done ? el('span', { class: 'sub' }, `previews: ${Number(a.previews) || 0}`) : null,
    ),
    el('td', { class: 'num nowrap' }, totalBytes ? (done ? fmtBytes(totalBytes) : fmtBytesOf(arrivedBytes, totalBytes)) : dash('')),
    el('td', { class: 'nowrap' }, dash(fmtTime(a.began_ms))),
    el('td', { class: 'num' }, dash(after(a.first_preview_ms))),
    el('td', { class: 'num' }, dash(after(a.committed_ms))),
  );
}

function renderHub(r, now) {
  const links = (r.links && typeof r.links === 'object' && r.links) || {};
  const merged = new Map();
  for (const e of arrayOf(r, 'edges')) merged.set(e.name, { edge: e, link: links[e.name] || null });
  // A link without a registered edge (deleted since it connected).
  for (const [name, link] of Object.entries(links)) if (!merged.has(name)) merged.set(name, { edge: { name }, link });
  const rows = [...merged.values()].sort(
    (a, b) => Number(!!a.edge.revoked_ms) - Number(!!b.edge.revoked_ms) || String(a.edge.name).localeCompare(String(b.edge.name)),
  );
  const arriving = arrayOf(r, 'arriving');
  const connected = rows.filter((x) => !x.edge.revoked_ms && x.link && x.link.connected).length;
  const active = rows.filter((x) => !x.edge.revoked_ms).length;
  const moving = arriving.filter((a) => a.state !== 'committed').length;

  $('#relay-edges-rows').replaceChildren(...rows.map((x) => edgeRow(x, now)));
  show('#relay-edges-wrap', '#relay-edges-empty', rows.length);
  $('#relay-arriving-rows').replaceChildren(...arriving.map(arrivingRow));
  show('#relay-arriving-wrap', '#relay-arriving-empty', arriving.length);

  const parts = [
    r.listen ? `Hub — listening for edges on UDP ${r.listen}` : 'Hub — the relay listener is off ([relay] listen is not set): edges cannot connect',
    `${connected} of ${active} edge${active === 1 ? '' : 's'} connected`,
    `${moving} ${moving === 1 ? 'study' : 'studies'} arriving`,
  ];
  $('#relay-summary').textContent = parts.join(' · ');
  hook.relay = {
    role: 'hub',
    listen: r.listen || null,
    edges: rows.map((x) => ({
      name: x.edge.name,
      status: x.edge.revoked_ms ? 'revoked' : x.link && x.link.connected ? 'connected' : 'disconnected',
    })),
    arriving: arriving.map((a) => ({ uid: a.study_uid, edge: a.edge, state: a.state })),
  };
}

function renderEdge(r, now) {
  const links = (r.links && typeof r.links === 'object' && r.links) || {};
  const f = links.hub || Object.values(links)[0] || null;
  const st = r.outbox_stats || {};
  const outbox = arrayOf(r, 'outbox');
  const rate = Number(r.rate_mbit);

  $('#relay-link-state').replaceChildren(linkBadge(f));
  $('#relay-link-kv').replaceChildren(
    ...kv([
      ['Hub', r.hub],
      ['Remote address', f && f.remote],
      ['Round-trip time', f && f.connected ? fmtMs(f.rtt_ms) : ''],
      [
        'Packet loss',
        f && f.connected ? pct(f.loss) : '',
        { title: f ? `${f.lost_packets ?? 0} of ${f.sent_packets ?? 0} packets lost` : undefined },
      ],
      ['Congestion window', f && f.connected ? fmtBytes(f.congestion_window) : ''],
      ['Goodput (last study)', f ? mbit(f.goodput_bps) : ''],
      ['Rate cap', rate > 0 ? `${rate} Mbit/s` : 'none'],
      ['Studies relayed', f ? String(f.studies_total ?? 0) : '', { title: 'Since this server started' }],
      ['Bytes relayed', f ? fmtBytes(f.bytes_total ?? 0) : '', { title: 'Since this server started' }],
      ['Connections', f ? String(f.connections ?? 0) : ''],
      ['Figures taken', f && f.updated_ms ? ago(f.updated_ms, now) : '', { title: f && f.updated_ms ? fmtTime(f.updated_ms) : undefined }],
      f && f.last_error ? ['Last error', f.last_error, { error: true }] : null,
    ]),
  );
  $('#relay-outbox-kv').replaceChildren(
    ...kv([
      ['Waiting', String(st.depth ?? 0)],
      ['Oldest waiting', st.oldest_ms ? fmtDuration(now - st.oldest_ms) : '', { title: st.oldest_ms ? `since ${fmtTime(st.oldest_ms)}` : undefined }],
      ['Pending', fmtBytes(st.bytes_pending ?? 0)],
    ]),
  );
  $('#relay-outbox-rows').replaceChildren(
    ...outbox.map((o) => {
      const state = o.pending ? (o.attempts > 0 || o.last_error ? 'retrying' : 'pending') : 'sent';
      const label = { pending: 'Waiting', retrying: 'Retrying', sent: 'Sent' }[state];
      return el(
        'tr',
        { dataset: { test: 'relay-outbox-row', uid: o.study_uid, state } },
        el('td', {}, shortUid(o.study_uid)),
        el('td', { class: 'nowrap' }, dash(fmtTime(o.completed_ms))),
        el('td', { class: 'nowrap' }, dash(fmtTime(o.enqueued_ms)), o.pending && o.enqueued_ms ? el('span', { class: 'sub' }, ago(o.enqueued_ms, now)) : null),
        el('td', {}, statusBadge(state, label)),
        el('td', { class: 'num' }, String(o.attempts ?? 0)),
        el('td', { class: 'nowrap' }, dash(fmtTime(o.sent_ms))),
        el('td', { class: 'num' }, o.sent_ms || o.bytes_sent ? fmtBytes(o.bytes_sent ?? 0) : dash('')),
        el('td', { class: 'clip' }, dash(o.last_error)),
      );
    }),
  );
  show('#relay-outbox-wrap', '#relay-outbox-empty', outbox.length);

  const parts = [
    `Edge — relaying to ${r.hub || 'the hub'}`,
    f && f.connected ? 'link up' : 'link down',
    `${st.depth ?? 0} ${st.depth === 1 ? 'study' : 'studies'} waiting`,
  ];
  $('#relay-summary').textContent = parts.join(' · ');
  hook.relay = {
    role: 'edge',
    connected: !!(f && f.connected),
    depth: st.depth ?? 0,
    outbox: outbox.map((o) => ({ uid: o.study_uid, pending: !!o.pending })),
  };
}

/** `auto`: a background refresh (errors are reported once per outage). */
async function loadRelay({ auto = false } = {}) {
  await loadDirectory();
  if (relayCtl) relayCtl.abort();
  const ctl = (relayCtl = new AbortController());
  try {
    const r = await api('/api/admin/relay', { signal: ctl.signal });
    if (ctl !== relayCtl) return;
    const now = Date.now();
    const edge = r && r.role === 'edge';
    $('#relay-hub').hidden = edge;
    $('#relay-edge').hidden = !edge;
    if (edge) renderEdge(r, now);
    else renderHub(r || {}, now);
    $('#relay-updated').textContent = `Updated ${fmtTime(now).slice(11)}`;
    relayFailing = false;
  } catch (e) {
    if (ctl !== relayCtl) return;
    if (!auto || !relayFailing) {
      const msg = fail('Loading the relay link', e);
      if (msg) $('#relay-summary').textContent = msg;
    }
    if (!(e && e.name === 'AbortError')) relayFailing = true;
  } finally {
    if (ctl === relayCtl) relayCtl = null;
  }
}

/** Every 3 s while the relay tab is shown and the page visible. */
function relaySchedule() {
  clearTimeout(relayTimer);
  relayTimer = null;
  if (hook.tab !== 'relay' || document.hidden) {
    if (relayCtl) relayCtl.abort();
    return;
  }
  relayTimer = setTimeout(async () => {
    relayTimer = null;
    await loadRelay({ auto: true });
    relaySchedule();
  }, RELAY_REFRESH_MS);
}

function setupRelay() {
  $('#relay-refresh').addEventListener('click', async () => {
    await loadRelay();
    relaySchedule();
  });
  document.addEventListener('visibilitychange', async () => {
    if (!document.hidden && hook.tab === 'relay') await loadRelay({ auto: true });
    relaySchedule();
  });
}

// ------------------------------------------------------------------ start

const LOADERS = {
  users: loadUsers,
  turnaround: loadTurnaround,
  deliveries: loadDeliveries,
  ingest: loadIngest,
  audit: loadAudit,
  relay: loadRelay,
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
  setupRelay();
  $('#ta-days').addEventListener('change', loadTurnaround);
  $('#ta-refresh').addEventListener('click', loadTurnaround);
  $('#dl-show').addEventListener('change', loadDeliveries);
  $('#dl-refresh').addEventListener('click', loadDeliveries);
  $('#ir-refresh').addEventListener('click', loadIngest);
  await selectTab(location.hash.slice(1) || 'users');
}

hook.select = (name) => selectTab(name);

main().finally(() => {
  hook.ready = true;
});
