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
  fmtNumber,
  fmtBytes,
  fmtBytesOf,
  fromLocalInput,
  toLocalInput,
  errMessage,
  failer,
  codeLabel,
  t,
  onLang,
} from './app-common.js';

const TABS = ['users', 'turnaround', 'deliveries', 'ingest', 'audit', 'relay'];
const RELAY_REFRESH_MS = 3_000;
const PRIO_RANK = { stat: 0, urgent: 1, routine: 2 };

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
// Each tab's last answer, rendered again in the new language on a switch
// (nothing is fetched again; the forms keep what is typed).
const last = {};

// ------------------------------------------------------------------ helpers

/** The array in an answer that may be a bare array or wrapped in an object. */
function arrayOf(r, ...keys) {
  if (Array.isArray(r)) return r;
  for (const k of keys) if (r && Array.isArray(r[k])) return r[k];
  return [];
}

function prioBadge(p) {
  if (!p) return el('span', { class: 'muted' }, '—');
  return codeLabel('studies.prio', p, { class: `badge prio-${p}` });
}

function clinicName(id) {
  return clinicNames.get(id) || id || '—';
}

/**
 * The message `key` with its placeholder `name` filled by `value` in an
 * element marked as data (a username, a clinic, an address): the checker
 * and translators leave it alone, the words around it are translated.
 */
function withData(key, name, value) {
  const [before, after = ''] = t(key, { [name]: '\u0000' }).split('\u0000');
  return [before, el('span', { translate: 'no' }, value), after];
}

/** A clinic's name (data) in a cell. */
function clinicCell(id) {
  return el('td', { translate: 'no' }, clinicName(id));
}

function dash(v) {
  return v === null || v === undefined || v === '' ? el('span', { class: 'muted' }, '—') : String(v);
}

function shortUid(uid) {
  if (!uid) return el('span', { class: 'muted' }, '—');
  const short = uid.length > 18 ? `…${uid.slice(-16)}` : uid;
  return el('a', { href: `/viewer?study=${enc(uid)}`, class: 'mono', title: uid, translate: 'no' }, short);
}

/** A short span: "0.8 s", "12 s", "3 min". */
function fmtSpan(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(Number(ms))) return '';
  const v = Math.max(0, Number(ms));
  return v < 10_000 ? t('common.dur.s', { s: (v / 1000).toFixed(1) }) : fmtDuration(v);
}

/** Time since `ms`: "3 min ago". */
function ago(ms, now = Date.now()) {
  return ms ? t('admin.relay.ago', { d: fmtDuration(now - ms) }) : '';
}

function show(wrapId, emptyId, n) {
  $(wrapId).hidden = n === 0;
  $(emptyId).hidden = n > 0;
}

/** `title`, `submitLabel`: message keys; `text`: nodes. */
function confirmDialog({ title, text, submitLabel, submitTest, onConfirm }) {
  const err = el('p', { class: 'form-error', role: 'alert', hidden: true });
  const ok = el('button', { type: 'submit', class: 'primary danger', dataset: { test: submitTest }, i18n: submitLabel });
  const close = el('button', { type: 'button', i18n: 'common.close' });
  const form = el(
    'form',
    { class: 'dialog-form' },
    el('h2', { i18n: title }),
    el('p', { class: 'lead' }, text),
    err,
    el('div', { class: 'dialog-actions' }, close, ok),
  );
  const dlg = el('dialog', { class: 'dialog', i18nAriaLabel: title }, form);
  close.addEventListener('click', () => dlg.close());
  dlg.addEventListener('close', () => dlg.remove());
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    ok.disabled = true;
    try {
      await onConfirm();
      dlg.close();
    } catch (e) {
      if (fail(t(title), e)) {
        const { key, args } = errMessage(e);
        err.dataset.i18n = key;
        err.dataset.i18nArgs = JSON.stringify(args);
        err.textContent = t(key, args);
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
    fail(t('studies.load_clinics'), e);
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
              title: 'admin.user.disable_title',
              // The username is data: the message is split around it.
              text: withData('admin.user.disable_text', 'name', u.username),
              submitLabel: 'admin.user.disable',
              submitTest: 'user-disable-confirm',
              onConfirm: async () => {
                await api(`/api/admin/users/${enc(u.username)}/disable`, { method: 'POST' });
                toast(t('admin.user.disabled_done', { name: u.username }), 'ok');
                await loadUsers();
              },
            }),
          i18n: 'admin.user.disable',
        },
      ),
    );
  }
  return el(
    'tr',
    { dataset: { test: 'user-row', username: u.username, disabled: u.disabled ? '1' : '0' } },
    el('td', { class: 'mono', translate: 'no' }, u.username),
    el('td', { translate: 'no' }, dash(u.display_name)),
    el('td', {}, codeLabel('admin.role_short', u.role)),
    el('td', { translate: 'no' }, dash(where)),
    el('td', { translate: 'no' }, dash(u.department)),
    el(
      'td',
      {},
      u.disabled
        ? el('span', { class: 'badge st-disabled', i18n: 'admin.user.disabled' })
        : el('span', { class: 'badge st-complete', i18n: 'admin.user.active' }),
    ),
    el('td', {}, actions.length ? el('div', { class: 'actions' }, actions) : el('span', { class: 'muted' }, '—')),
  );
}

async function loadUsers() {
  await loadDirectory();
  try {
    renderUsers(await api('/api/admin/users'));
  } catch (e) {
    fail(t('admin.err.users'), e);
  }
}

function renderUsers(r) {
  last.users = r;
  const users = arrayOf(r, 'users').sort(
    (a, b) => Number(!!a.disabled) - Number(!!b.disabled) || String(a.username).localeCompare(String(b.username)),
  );
  hook.users = users.map((u) => u.username);
  $('#users-rows').replaceChildren(...users.map(userRow));
  show('#users-wrap', '#users-empty', users.length);
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
      el('option', { value: '', i18n: clinics.length ? 'admin.user.choose' : 'admin.user.no_clinics' }),
      ...clinics.map((c) => el('option', { value: c.id, translate: 'no' }, `${c.name || c.id} (${c.id})`)),
    );
    form.elements.hospital_id.replaceChildren(
      el('option', { value: '', i18n: hospitals.length ? 'admin.user.choose' : 'admin.user.no_hospitals' }),
      ...hospitals.map((h) => el('option', { value: h.id, translate: 'no' }, `${h.name || h.id} (${h.id})`)),
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
      toast(t('admin.user.added', { name: body.username }), 'ok');
      form.reset();
      syncRole();
      await loadUsers();
    } catch (e) {
      fail(t('admin.err.add'), e);
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
    renderTurnaround(await api(`/api/admin/turnaround?days=${enc(days)}`), days);
  } catch (e) {
    fail(t('admin.err.turnaround'), e);
  }
}

function renderTurnaround(r, days) {
  last.turnaround = [r, days];
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
        clinicCell(x.clinic_id),
        el('td', {}, prioBadge(x.priority)),
        el('td', { class: 'num' }, dash(x.studies == null ? '' : fmtNumber(x.studies))),
        el('td', { class: 'num' }, fmtNumber(x.reported ?? 0)),
        el('td', { class: 'num' }, dash(fmtDuration(x.p50_report_ms))),
        el('td', { class: 'num' }, dash(fmtDuration(x.p90_report_ms))),
        el('td', { class: 'num' }, fmtNumber(x.delivered ?? 0)),
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
        clinicCell(w.clinic_id),
        el('td', {}, prioBadge(w.priority)),
        el('td', { class: 'num' }, fmtNumber(w.count ?? 0)),
        el(
          'td',
          {
            class: 'num',
            i18nTitle: isTimestamp(w.oldest_ms) ? 'admin.wait.since' : undefined,
            i18nArgs: isTimestamp(w.oldest_ms) ? { time: fmtTime(w.oldest_ms) } : undefined,
          },
          dash(w.oldest_ms != null ? fmtDuration(waitAge(w)) : ''),
        ),
      ),
    ),
  );
  show('#wait-wrap', '#wait-empty', waiting.length);
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
    renderDeliveries(await api('/api/admin/deliveries'));
  } catch (e) {
    fail(t('admin.err.deliveries'), e);
  }
}

function renderDeliveries(r) {
  last.deliveries = r;
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
  $('#dl-summary').textContent = t('admin.dl.summary', { failing, pending, sent: all.length - failing - pending });
  $('#dl-rows').replaceChildren(
    ...shown.map((d) =>
      el(
        'tr',
        { dataset: { test: 'delivery-row', state: d.state } },
        el('td', { class: 'nowrap' }, dash(fmtTime(d.created_ms))),
        clinicCell(d.clinic_id),
        el('td', {}, shortUid(d.study_uid)),
        el('td', { class: 'num' }, dash(d.version)),
        el('td', { class: 'mono', translate: 'no' }, dash(d.target)),
        el('td', {}, codeLabel('studies.delivery', d.state || '', { class: `badge st-${d.state}` })),
        el('td', { class: 'num' }, fmtNumber(d.attempts ?? 0)),
        el('td', { class: 'nowrap' }, d.state === 'sent' ? dash('') : dash(fmtTime(d.next_attempt_ms))),
        // The PACS's or the network's own words (technical, as logged).
        el('td', { class: 'clip', translate: 'no' }, dash(d.last_error)),
        el('td', { class: 'nowrap' }, dash(fmtTime(d.sent_ms))),
      ),
    ),
  );
  show('#dl-wrap', '#dl-empty', shown.length);
  const empty = $('#dl-empty');
  empty.dataset.i18n = all.length && problemsOnly ? 'admin.dl.empty_problems' : 'admin.dl.empty';
  empty.textContent = t(empty.dataset.i18n);
}

// ------------------------------------------------------------------ refused at ingest

function collidesWith(r) {
  if (r.reason === 'other-clinic') {
    return withData('admin.ir.other_clinic', 'clinic', clinicName(r.owner_clinic));
  }
  if (r.reason === 'other-study') return el('span', { i18n: 'admin.ir.other_study' });
  if (r.reason === 'other-series') return el('span', { i18n: 'admin.ir.other_series' });
  return el('span', { translate: 'no' }, r.reason || '—');
}

async function loadIngest() {
  await loadDirectory();
  try {
    renderIngest(await api('/api/admin/ingest-refusals'));
  } catch (e) {
    fail(t('admin.err.ingest'), e);
  }
}

function renderIngest(r) {
  last.ingest = r;
  const all = arrayOf(r, 'refusals');
  hook.ingest = all.map((x) => ({ calling_ae: x.calling_ae, level: x.level, reason: x.reason }));
  $('#ir-summary').textContent = all.length ? t('admin.ir.summary', { n: fmtNumber(all.length) }) : '';
  $('#ir-rows').replaceChildren(
    ...all.map((x) =>
      el(
        'tr',
        { dataset: { test: 'ingest-row', level: x.level } },
        el('td', { class: 'nowrap' }, dash(fmtTime(x.at_ms))),
        el(
          'td',
          { class: 'mono', translate: 'no', i18nTitle: x.via === 'relay' ? 'admin.ir.via_relay' : 'admin.ir.via_dicom' },
          dash(x.calling_ae),
        ),
        clinicCell(x.clinic_id),
        el('td', {}, codeLabel('admin.ir.level', x.level)),
        el('td', {}, collidesWith(x)),
        el('td', { class: 'mono', translate: 'no', title: x.study_uid || '' }, dash(x.study_uid)),
        el('td', { class: 'mono', translate: 'no', title: x.sop_instance_uid || '' }, dash(x.sop_instance_uid)),
        el('td', { class: 'mono', translate: 'no' }, dash(x.remote)),
      ),
    ),
  );
  show('#ir-wrap', '#ir-empty', all.length);
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
    renderAudit(await api(`/api/admin/audit?${q}`), Number(q.get('limit')));
  } catch (e) {
    fail(t('admin.err.audit'), e);
  }
}

function renderAudit(r, limit) {
  last.audit = [r, limit];
  const events = arrayOf(r, 'events', 'items', 'audit', 'rows');
  hook.audit = events.length;
  $('#audit-rows').replaceChildren(
    ...events.map((a) =>
      el(
        'tr',
        { dataset: { test: 'audit-row', action: a.action } },
        el('td', { class: 'nowrap' }, fmtTime(a.at_ms)),
        el('td', { class: 'mono', translate: 'no' }, dash(a.username)),
        el('td', {}, a.role ? codeLabel('admin.role_short', a.role) : dash('')),
        // Action codes ("sign", "claim"…) and details are the trail's own words.
        el('td', { class: 'nowrap', translate: 'no' }, dash(a.action)),
        el('td', {}, shortUid(a.study_uid)),
        el('td', { class: 'clip', translate: 'no' }, dash(a.detail)),
        el('td', { class: 'mono', translate: 'no' }, dash(a.remote)),
      ),
    ),
  );
  show('#audit-wrap', '#audit-empty', events.length);
  $('#audit-summary').textContent = events.length
    ? t('admin.audit.summary', { n: events.length }) +
      (events.length >= limit ? ` ${t('admin.audit.capped', { limit: fmtNumber(limit) })}` : '')
    : '';
}

function setupAudit() {
  const form = $('#audit-form');
  form.addEventListener('input', syncExport);
  form.addEventListener('change', syncExport);
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = auditQuery();
    if (q.get('from_ms') && q.get('to_ms') && Number(q.get('from_ms')) > Number(q.get('to_ms'))) {
      toast(t('admin.audit.reversed'), 'error');
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

/** `key`: the label's message; `title`: [key, args] of its tooltip. */
function statusBadge(state, key, title) {
  return el('span', {
    class: `badge st-${state}`,
    dataset: { state },
    i18n: key,
    i18nTitle: title && title[0],
    i18nArgs: title && title[1],
  });
}

function linkBadge(link) {
  if (!link) return statusBadge('disconnected', 'admin.relay.not_connected');
  return link.connected
    ? statusBadge('connected', 'admin.relay.connected')
    : statusBadge('disconnected', 'admin.relay.disconnected');
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

/**
 * The link's figures as <dl> entries: [label key, value, {error, data,
 * title}]; `data`: the value is the server's words (an address, an error).
 */
function kv(entries) {
  return entries
    .filter(Boolean)
    .map(([key, value, opts = {}]) =>
      el(
        'div',
        {},
        el('dt', { i18n: key }),
        el('dd', { class: opts.error ? 'error' : undefined, title: opts.title, translate: opts.data ? 'no' : undefined }, dash(value)),
      ),
    );
}

/** A registered edge merged with its live link figures (if it connected since the start). */
function edgeRow({ edge: e, link: f }, now) {
  const revoked = !!e.revoked_ms;
  const connected = !revoked && !!(f && f.connected);
  const status = revoked
    ? statusBadge('revoked', 'admin.relay.revoked', ['admin.relay.since', { time: fmtTime(e.revoked_ms) }])
    : connected
      ? statusBadge('connected', 'admin.relay.connected')
      : statusBadge('disconnected', 'admin.relay.disconnected');
  // Last seen: now while connected, else the later of the last (re)connect
  // and the last figures taken while the connection was up.
  const lastSeen = Math.max(Number(e.last_seen_ms) || 0, (f && Number(f.updated_ms)) || 0);
  const remote = (connected && f.remote) || e.last_addr || (f && f.remote) || '';
  const live = connected ? f : null;
  return el(
    'tr',
    { dataset: { test: 'relay-edge-row', edge: e.name, status: revoked ? 'revoked' : connected ? 'connected' : 'disconnected' } },
    el(
      'td',
      {},
      el(
        'span',
        {
          class: 'mono',
          translate: 'no',
          i18nTitle: e.issued_ms ? 'admin.relay.issued' : undefined,
          i18nArgs: e.issued_ms ? { time: fmtTime(e.issued_ms) } : undefined,
        },
        e.name,
      ),
      e.fingerprint
        ? el(
            'span',
            { class: 'sub mono', translate: 'no', i18nTitle: 'admin.relay.fingerprint', i18nArgs: { fp: e.fingerprint } },
            `${String(e.fingerprint).slice(0, 16)}…`,
          )
        : null,
    ),
    el('td', { translate: 'no' }, e.clinic_id ? clinicName(e.clinic_id) : dash('')),
    el('td', {}, status, f && f.last_error ? el('span', { class: 'sub', translate: 'no' }, f.last_error) : null),
    el('td', { class: 'mono', translate: 'no' }, dash(remote)),
    el('td', { class: 'num' }, dash(live ? fmtMs(live.rtt_ms) : '')),
    el(
      'td',
      {
        class: 'num',
        i18nTitle: live ? 'admin.relay.lost' : undefined,
        i18nArgs: live ? { lost: live.lost_packets ?? 0, sent: live.sent_packets ?? 0 } : undefined,
      },
      dash(live ? pct(live.loss) : ''),
    ),
    el('td', { class: 'num', i18nTitle: 'admin.relay.last_study' }, dash(f ? mbit(f.goodput_bps) : '')),
    el('td', { class: 'num' }, dash(f ? fmtNumber(f.studies_total ?? 0) : '')),
    el('td', { class: 'num' }, dash(f ? fmtBytes(f.bytes_total ?? 0) : '')),
    el(
      'td',
      { class: 'nowrap' },
      connected ? el('span', { i18n: 'admin.relay.now' }) : dash(fmtTime(lastSeen)),
      !connected && lastSeen ? el('span', { class: 'sub' }, ago(lastSeen, now)) : null,
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
    : el('span', { class: 'mono', title: uid, translate: 'no' }, uid.length > 18 ? `…${uid.slice(-16)}` : uid || '—');
  const after = (t) => (t && a.began_ms ? fmtSpan(t - a.began_ms) : '');
  return el(
    'tr',
    { dataset: { test: 'relay-arriving-row', uid, edge: a.edge, state: a.state } },
    el('td', {}, study),
    el('td', { class: 'mono', translate: 'no' }, dash(a.edge)),
    clinicCell(a.clinic_id),
    el('td', {}, prioBadge(a.priority)),
    el('td', {}, statusBadge(a.state, done ? 'admin.relay.committed_state' : 'admin.relay.arriving_state')),
    el(
      'td',
      { class: 'num nowrap' },
      el('span', { i18n: 'admin.relay.of', i18nArgs: { part: fmtNumber(arrived), total: fmtNumber(total) } }),
      !done ? el('span', { class: 'sub', i18n: 'admin.relay.previews', i18nArgs: { n: Number(a.previews) || 0 } }) : null,
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

  // The listen address and the config key are data.
  const parts = [
    r.listen
      ? withData('admin.relay.hub_listening', 'addr', r.listen)
      : [t('admin.relay.hub_off'), ' ', el('code', { translate: 'no' }, '[relay] listen'), t('admin.relay.hub_off_end')],
    t('admin.relay.edges_connected', { c: connected, n: active }),
    t('admin.relay.studies_arriving', { n: moving }),
  ];
  $('#relay-summary').replaceChildren(...parts.flatMap((p, i) => (i ? [' · ', p] : [p])).flat());
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
      ['admin.relay.kv.hub', r.hub, { data: true }],
      ['admin.relay.kv.remote', f && f.remote, { data: true }],
      ['admin.relay.kv.rtt', f && f.connected ? fmtMs(f.rtt_ms) : ''],
      [
        'admin.relay.kv.loss',
        f && f.connected ? pct(f.loss) : '',
        { title: f ? t('admin.relay.lost', { lost: f.lost_packets ?? 0, sent: f.sent_packets ?? 0 }) : undefined },
      ],
      ['admin.relay.kv.cwnd', f && f.connected ? fmtBytes(f.congestion_window) : ''],
      ['admin.relay.kv.goodput', f ? mbit(f.goodput_bps) : ''],
      ['admin.relay.kv.rate', rate > 0 ? `${fmtNumber(rate)} Mbit/s` : t('admin.relay.kv.rate_none')],
      ['admin.relay.kv.studies', f ? fmtNumber(f.studies_total ?? 0) : '', { title: t('admin.relay.since_server') }],
      ['admin.relay.kv.bytes', f ? fmtBytes(f.bytes_total ?? 0) : '', { title: t('admin.relay.since_server') }],
      ['admin.relay.kv.connections', f ? fmtNumber(f.connections ?? 0) : ''],
      [
        'admin.relay.kv.figures',
        f && f.updated_ms ? ago(f.updated_ms, now) : '',
        { title: f && f.updated_ms ? fmtTime(f.updated_ms) : undefined },
      ],
      f && f.last_error ? ['admin.relay.kv.error', f.last_error, { error: true, data: true }] : null,
    ]),
  );
  $('#relay-outbox-kv').replaceChildren(
    ...kv([
      ['admin.relay.kv.waiting', fmtNumber(st.depth ?? 0)],
      [
        'admin.relay.kv.oldest',
        st.oldest_ms ? fmtDuration(now - st.oldest_ms) : '',
        { title: st.oldest_ms ? t('admin.relay.since', { time: fmtTime(st.oldest_ms) }) : undefined },
      ],
      ['admin.relay.kv.pending', fmtBytes(st.bytes_pending ?? 0)],
    ]),
  );
  $('#relay-outbox-rows').replaceChildren(
    ...outbox.map((o) => {
      const state = o.pending ? (o.attempts > 0 || o.last_error ? 'retrying' : 'pending') : 'sent';
      const key = { pending: 'admin.relay.waiting_state', retrying: 'admin.relay.retrying_state', sent: 'admin.relay.sent_state' }[state];
      return el(
        'tr',
        { dataset: { test: 'relay-outbox-row', uid: o.study_uid, state } },
        el('td', {}, shortUid(o.study_uid)),
        el('td', { class: 'nowrap' }, dash(fmtTime(o.completed_ms))),
        el('td', { class: 'nowrap' }, dash(fmtTime(o.enqueued_ms)), o.pending && o.enqueued_ms ? el('span', { class: 'sub' }, ago(o.enqueued_ms, now)) : null),
        el('td', {}, statusBadge(state, key)),
        el('td', { class: 'num' }, fmtNumber(o.attempts ?? 0)),
        el('td', { class: 'nowrap' }, dash(fmtTime(o.sent_ms))),
        el('td', { class: 'num' }, o.sent_ms || o.bytes_sent ? fmtBytes(o.bytes_sent ?? 0) : dash('')),
        el('td', { class: 'clip', translate: 'no' }, dash(o.last_error)),
      );
    }),
  );
  show('#relay-outbox-wrap', '#relay-outbox-empty', outbox.length);

  const parts = [
    r.hub ? withData('admin.relay.edge_to', 'hub', r.hub) : t('admin.relay.edge_to', { hub: t('admin.relay.the_hub') }),
    t(f && f.connected ? 'admin.relay.link_up' : 'admin.relay.link_down'),
    t('admin.relay.studies_waiting', { n: st.depth ?? 0 }),
  ];
  $('#relay-summary').replaceChildren(...parts.flatMap((p, i) => (i ? [' · ', p] : [p])).flat());
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
    renderRelay(r);
    relayFailing = false;
  } catch (e) {
    if (ctl !== relayCtl) return;
    if (!auto || !relayFailing) {
      const msg = fail(t('admin.err.relay'), e);
      if (msg) $('#relay-summary').textContent = msg;
    }
    if (!(e && e.name === 'AbortError')) relayFailing = true;
  } finally {
    if (ctl === relayCtl) relayCtl = null;
  }
}

function renderRelay(r) {
  last.relay = r;
  const now = Date.now();
  const edge = r && r.role === 'edge';
  $('#relay-hub').hidden = edge;
  $('#relay-edge').hidden = !edge;
  if (edge) renderEdge(r, now);
  else renderHub(r || {}, now);
  $('#relay-updated').textContent = t('admin.relay.updated', { time: fmtTime(now).slice(11) });
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
    fail(t('studies.load_session'), e);
    return;
  }
  header(user, '/admin');
  if (user.role !== 'admin') {
    $('#main').replaceChildren(
      el('h1', { i18n: 'admin.heading' }),
      el(
        'p',
        { class: 'notice' },
        el('span', { i18n: 'admin.only_admins' }),
        ' ',
        el('a', { href: '/', i18n: 'admin.go_home' }),
      ),
    );
    hook.errors.push('Not allowed for your role');
    return;
  }
  // Every loaded tab is drawn again from its last answer in the new language.
  onLang(() => {
    if (last.users) renderUsers(last.users);
    if (last.turnaround) renderTurnaround(...last.turnaround);
    if (last.deliveries) renderDeliveries(last.deliveries);
    if (last.ingest) renderIngest(last.ingest);
    if (last.audit) renderAudit(...last.audit);
    if (last.relay) renderRelay(last.relay);
  });
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
