// Worklist page: the expert's home. The server sorts (STAT → urgent →
// routine, longest waiting first); this page filters, shows live waiting
// times, and claims: a claim opens the viewer, a lost race (409) says who
// holds the study and refreshes. Refreshed every 15 s while visible.
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
  dicomDate,
  fmtTime,
  fmtDuration,
  age,
  list,
  cap,
  errText,
  failer,
} from './app-common.js';

const PAGE = 50;
const REFRESH_MS = 15_000;
const TICK_MS = 10_000;
const FILTERS = ['priority', 'modality', 'clinic', 'body_part'];
const DEFAULT_STATES = ['new', 'claimed', 'returned'];
const STATE_LABEL = {
  new: 'New',
  claimed: 'Claimed',
  returned: 'Returned',
  reported: 'Reported',
  delivered: 'Delivered',
  cancelled: 'Cancelled',
};

const hook = testHook('worklist', { ready: false, uids: [], rows: [], total: 0, errors: [] });
const fail = failer(hook);

const enc = encodeURIComponent;
const viewerUrl = (uid) => `/viewer?study=${enc(uid)}`;

let user = null;
let offset = 0;
let loadCtl = null;
let refreshTimer = null;
let tickTimer = null;
let lastLoadAt = 0;
let failing = false;
const clinicNames = new Map();

// ------------------------------------------------------------------ helpers

/** "06:01" today, else the full date and time. */
function sinceText(ms) {
  const t = fmtTime(ms);
  return t.slice(0, 10) === fmtTime(Date.now()).slice(0, 10) ? t.slice(11) : t;
}

function filterCount() {
  const form = $('#filters');
  const st = states();
  let n = st.length && st.join(',') !== DEFAULT_STATES.join(',') ? 1 : 0;
  for (const k of FILTERS) if (form.elements[k].value.trim()) n += 1;
  $('#filter-count').textContent = n ? `(${n} active)` : '';
}

function prioBadge(p) {
  if (!p) return el('span', { class: 'muted' }, '—');
  return el('span', { class: `badge prio-${p}`, dataset: { priority: p } }, p === 'stat' ? 'STAT' : cap(p));
}

// ------------------------------------------------------------------ rows

function row(it, fetchedAt) {
  const uid = it.study_uid;
  const mine = !!it.claimed_by && it.claimed_by === user.username;
  const leaseLive = !!it.lease_until_ms && it.lease_until_ms > Date.now();
  const heldByOther = it.state === 'claimed' && !mine && leaseLive;
  // When the waiting started, on our clock (the server's waiting_ms avoids clock skew).
  const since = Number.isFinite(it.waiting_ms) ? fetchedAt - it.waiting_ms : it.enqueued_ms;

  const actions = [];
  if (user.role === 'expert') {
    const claimable = ['new', 'returned', 'claimed'].includes(it.state);
    const btn = el(
      'button',
      {
        type: 'button',
        class: 'small primary',
        dataset: { test: 'claim' },
        disabled: !claimable || heldByOther,
        title: heldByOther ? `Being read by ${it.claimed_by_name || it.claimed_by}` : undefined,
      },
      mine && it.state === 'claimed' ? 'Continue' : 'Claim',
    );
    btn.addEventListener('click', () => claim(uid, btn));
    actions.push(btn);
  }
  actions.push(el('a', { class: 'button small', href: viewerUrl(uid), dataset: { test: 'open' } }, 'Open'));

  const who =
    it.state === 'claimed' && it.claimed_by
      ? el(
          'span',
          { class: 'sub' },
          mine ? 'by you' : `by ${it.claimed_by_name || it.claimed_by}`,
          leaseLive ? ` · until ${fmtTime(it.lease_until_ms).slice(11)}` : ' · lease expired',
        )
      : null;

  return el(
    'tr',
    { dataset: { test: 'worklist-row', uid, state: it.state, priority: it.priority } },
    el('td', {}, prioBadge(it.priority)),
    el(
      'td',
      {},
      el('span', { class: 'waiting', dataset: { since: since || '' } }, since ? fmtDuration(Date.now() - since) : '—'),
      it.enqueued_ms ? el('span', { class: 'sub' }, `since ${sinceText(it.enqueued_ms)}`) : null,
    ),
    el('td', {}, it.clinic_name || clinicNames.get(it.clinic_id) || it.clinic_id || '—'),
    el(
      'td',
      { class: 'patient' },
      el('strong', {}, personName(it.patient_name) || '(no name)'),
      el(
        'span',
        { class: 'sub' },
        [it.sex, age(it.birth_date, it.study_date), it.patient_id && `ID ${it.patient_id}`].filter(Boolean).join(' · '),
      ),
    ),
    el('td', { class: 'nowrap' }, list(it.modalities) || '—', el('span', { class: 'sub' }, dicomDate(it.study_date))),
    el('td', {}, list(it.body_parts) || el('span', { class: 'muted' }, '—')),
    el('td', { class: 'clip' }, it.description || el('span', { class: 'muted' }, '—')),
    el(
      'td',
      { class: 'num' },
      String(it.num_instances ?? 0),
      it.num_series != null ? el('span', { class: 'sub' }, `${it.num_series} series`) : null,
    ),
    el('td', { class: 'question' }, it.clinical_question || el('span', { class: 'muted' }, '—')),
    el(
      'td',
      {},
      el('span', { class: `badge st-${it.state}`, dataset: { state: it.state } }, STATE_LABEL[it.state] || cap(it.state)),
      who,
      it.state === 'returned' && it.detail ? el('span', { class: 'sub' }, it.detail) : null,
    ),
    el('td', { class: 'sticky-end' }, el('div', { class: 'actions' }, actions)),
  );
}

function tick() {
  const now = Date.now();
  for (const s of document.querySelectorAll('#rows .waiting[data-since]')) {
    const since = Number(s.dataset.since);
    if (since) s.textContent = fmtDuration(now - since);
  }
}

function render(r, fetchedAt) {
  const items = r.items || [];
  const total = Number.isFinite(r.total) ? r.total : items.length;
  hook.uids = items.map((it) => it.study_uid);
  hook.rows = items.map((it) => ({
    uid: it.study_uid,
    state: it.state,
    priority: it.priority,
    claimed_by: it.claimed_by || null,
  }));
  hook.total = total;

  // Keep keyboard focus on the same control across a refresh.
  const active = document.activeElement;
  const focusRow = active && active.closest && active.closest('tr[data-uid]');
  const focusKey = focusRow ? [focusRow.dataset.uid, active.dataset.test] : null;

  $('#rows').replaceChildren(...items.map((it) => row(it, fetchedAt)));
  $('#table-wrap').hidden = items.length === 0;
  $('#empty').hidden = items.length > 0;
  $('#summary').textContent = items.length
    ? `${offset + 1}–${offset + items.length} of ${total} ${total === 1 ? 'study' : 'studies'}`
    : '';
  $('#pager').hidden = total <= PAGE && offset === 0;
  $('#prev').disabled = offset === 0;
  $('#next').disabled = offset + items.length >= total;
  $('#page-info').textContent = `Page ${Math.floor(offset / PAGE) + 1} of ${Math.max(1, Math.ceil(total / PAGE))}`;
  $('#updated').textContent = `Updated ${fmtTime(fetchedAt).slice(11)}`;

  if (focusKey && focusKey[1]) {
    const tr = document.querySelector(`#rows tr[data-uid="${CSS.escape(focusKey[0])}"]`);
    const target = tr && tr.querySelector(`[data-test="${CSS.escape(focusKey[1])}"]`);
    if (target) target.focus();
  }
}

// ------------------------------------------------------------------ loading

function states() {
  return [...$('#filters').elements.state.selectedOptions].map((o) => o.value);
}

function query() {
  const form = $('#filters');
  const q = new URLSearchParams();
  const st = states();
  if (st.length) q.set('state', st.join(','));
  for (const k of FILTERS) {
    const v = form.elements[k].value.trim();
    if (v) q.set(k, v);
  }
  return q;
}

function syncUrl() {
  const q = query();
  if (q.get('state') === DEFAULT_STATES.join(',')) q.delete('state');
  if (offset) q.set('offset', String(offset));
  const s = q.toString();
  history.replaceState(null, '', location.pathname + (s ? '?' + s : ''));
}

/** `auto`: a background refresh (errors are reported once per outage). */
async function load({ auto = false } = {}) {
  if (loadCtl) loadCtl.abort();
  const ctl = (loadCtl = new AbortController());
  const q = query();
  q.set('limit', String(PAGE));
  q.set('offset', String(offset));
  try {
    const r = await api('/api/worklist?' + q, { signal: ctl.signal });
    if (ctl !== loadCtl) return;
    if (!(r.items || []).length && offset > 0) {
      offset = 0;
      loadCtl = null;
      return load({ auto });
    }
    render(r, Date.now());
    failing = false;
  } catch (e) {
    if (ctl !== loadCtl) return;
    if (!auto || !failing) fail('Loading the worklist', e);
    if (!(e && e.name === 'AbortError')) failing = true;
  } finally {
    if (ctl === loadCtl) {
      loadCtl = null;
      lastLoadAt = Date.now();
    }
  }
}

async function claim(uid, btn) {
  btn.disabled = true;
  try {
    await api(`/api/worklist/${enc(uid)}/claim`, { method: 'POST' });
    btn.textContent = 'Opening…';
    location.assign(viewerUrl(uid));
    return;
  } catch (e) {
    if (e instanceof ApiError && e.status === 409) {
      const msg = `Not claimed: ${e.message}`;
      hook.errors.push(msg);
      toast(msg, 'error');
      load();
    } else {
      fail('Claiming the study', e);
    }
  }
  btn.disabled = false;
}

// ------------------------------------------------------------------ refresh timers

function schedule() {
  clearTimeout(refreshTimer);
  clearInterval(tickTimer);
  refreshTimer = null;
  tickTimer = null;
  if (document.hidden) return;
  refreshTimer = setTimeout(async () => {
    await load({ auto: true });
    schedule();
  }, REFRESH_MS);
  tickTimer = setInterval(tick, TICK_MS);
}

function setupRefresh() {
  document.addEventListener('visibilitychange', async () => {
    if (document.hidden) {
      clearTimeout(refreshTimer);
      clearInterval(tickTimer);
      refreshTimer = null;
      tickTimer = null;
      return;
    }
    tick();
    if (Date.now() - lastLoadAt >= REFRESH_MS) await load({ auto: true });
    schedule();
  });
  $('#refresh').addEventListener('click', async () => {
    await load();
    schedule();
  });
}

// ------------------------------------------------------------------ filters

function setupFilters() {
  const form = $('#filters');
  if (matchMedia('(max-width: 699px)').matches) $('#filter-box').open = false;
  const params = new URLSearchParams(location.search);
  const st = params.get('state');
  if (st) {
    const want = new Set(st.split(','));
    for (const o of form.elements.state.options) o.selected = want.has(o.value);
  }
  for (const k of FILTERS) {
    const v = params.get(k);
    if (v && form.elements[k]) form.elements[k].value = v;
  }
  offset = Math.max(0, Math.floor(Number(params.get('offset')) / PAGE) * PAGE || 0);
  filterCount();
  const apply = () => {
    filterCount();
    offset = 0;
    syncUrl();
    load();
    schedule();
  };
  form.addEventListener('change', apply);
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    apply();
  });
  form.addEventListener('reset', () =>
    setTimeout(() => {
      for (const o of form.elements.state.options) o.selected = DEFAULT_STATES.includes(o.value);
      apply();
    }),
  );
  $('#prev').addEventListener('click', () => {
    offset = Math.max(0, offset - PAGE);
    syncUrl();
    load();
  });
  $('#next').addEventListener('click', () => {
    offset += PAGE;
    syncUrl();
    load();
  });
}

async function loadClinics() {
  try {
    const r = await api('/api/clinics');
    const sel = $('#filters').elements.clinic;
    for (const c of r.clinics || []) {
      clinicNames.set(c.id, c.name || c.id);
      sel.append(el('option', { value: c.id }, c.name || c.id));
    }
    const want = new URLSearchParams(location.search).get('clinic');
    if (want) sel.value = want;
  } catch (e) {
    fail('Loading clinics', e);
  }
}

// ------------------------------------------------------------------ start

async function main() {
  try {
    user = await session();
  } catch (e) {
    fail('Loading your session', e);
    return;
  }
  header(user, '/worklist');
  if (user.role === 'clinic') {
    $('#main').replaceChildren(
      el('h1', {}, 'Reading worklist'),
      el('p', { class: 'notice' }, 'The worklist is for reading experts. ', el('a', { href: '/studies' }, 'Go to your studies'), '.'),
    );
    return;
  }
  setupFilters();
  await loadClinics();
  setupRefresh();
  await load();
  schedule();
}

hook.refresh = () => load();

main().finally(() => {
  hook.ready = true;
});
