// Worklist page: the expert's home. The server sorts (STAT → urgent →
// routine, longest waiting first); this page filters, shows live waiting
// times, and claims: a claim opens the viewer, a lost race (409) says who
// holds the study and refreshes. Refreshed every 15 s while visible.
// Above the list, "Arriving from clinics": studies on their way from clinic
// edge boxes over the relay link (k of n instances, the first preview),
// polled every 2 s while a study is on its way, else every 10 s.
// PHI rule: nothing is logged to the console.

import {
  api,
  ApiError,
  session,
  header,
  el,
  $,
  testHook,
  personNameEl,
  dicomDate,
  fmtTime,
  fmtDuration,
  age,
  list,
  fmtBytesOf,
  t,
  onLang,
} from './app-common.js';
import { translateElement } from './i18n.js';
import { failReporter, liveToast, nodesText, withErrNodes } from './msg-nodes.js';

const PAGE = 50;
const REFRESH_MS = 15_000;
const TICK_MS = 10_000;
const ARRIVING_FAST_MS = 2_000;
const ARRIVING_SLOW_MS = 10_000;
const FILTERS = ['priority', 'modality', 'clinic', 'body_part'];
const DEFAULT_STATES = ['new', 'claimed', 'returned'];
const SEXES = ['M', 'F', 'O'];

const hook = testHook('worklist', { ready: false, uids: [], rows: [], total: 0, arriving: [], errors: [] });
const fail = failReporter(hook);

const enc = encodeURIComponent;
const viewerUrl = (uid) => `/viewer?study=${enc(uid)}`;

let user = null;
let offset = 0;
let loadCtl = null;
let refreshTimer = null;
let tickTimer = null;
let lastLoadAt = 0;
let failing = false;
let last = null; // the last answer and when it came: re-rendered on a language switch
const clinicNames = new Map();

// Arriving studies: their poll, and one card per (edge, study) kept across
// polls so a thumbnail is fetched once rather than every 2 s.
let arrivingTimer = null;
let arrivingCtl = null;
let arrivingFailing = false;
let arrivingOff = false; // the server has no relay routes (404): stop asking
let arrivingSkew = 0; // our clock minus the server's, when the server says its time
const arrivingCards = new Map();

// ------------------------------------------------------------------ helpers

/** "06:01" today, else the full date and time. */
function sinceText(ms) {
  const s = fmtTime(ms);
  return s.slice(0, 10) === fmtTime(Date.now()).slice(0, 10) ? s.slice(11) : s;
}

/**
 * Shows message `key` in `e` as a data-i18n element, so a language switch
 * re-translates it in place (its arguments must not depend on the language).
 */
function say(e, key, args) {
  e.dataset.i18n = key;
  if (args) e.dataset.i18nArgs = JSON.stringify(args);
  else delete e.dataset.i18nArgs;
  translateElement(e);
}

/** Nodes joined with " · " (nothing for empty parts). */
function joined(parts) {
  const out = [];
  for (const p of parts.filter(Boolean)) {
    if (out.length) out.push(' · ');
    out.push(p);
  }
  return out;
}

/** DICOM sex code: 男/女 in zh-CN; an unknown code is shown as data. */
function sexNode(sex) {
  if (!sex) return null;
  return SEXES.includes(sex) ? el('span', { i18n: `worklist.sex.${sex}` }) : el('span', { translate: 'no' }, sex);
}

function filterCount() {
  const form = $('#filters');
  const st = states();
  let n = st.length && st.join(',') !== DEFAULT_STATES.join(',') ? 1 : 0;
  for (const k of FILTERS) if (form.elements[k].value.trim()) n += 1;
  const fc = $('#filter-count');
  if (n) say(fc, 'worklist.filter_count', { n });
  else {
    delete fc.dataset.i18n;
    fc.textContent = '';
  }
}

function clinicName(id, name) {
  return name || clinicNames.get(id) || id || '—';
}

function prioBadge(p) {
  if (!p) return el('span', { class: 'muted' }, '—');
  return el('span', { class: `badge prio-${p}`, dataset: { priority: p }, i18n: `worklist.prio.${p}` });
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
        i18n: mine && it.state === 'claimed' ? 'worklist.continue' : 'worklist.claim',
        i18nTitle: heldByOther ? 'worklist.held_by' : undefined,
        i18nArgs: heldByOther ? { name: it.claimed_by_name || it.claimed_by } : undefined,
      },
    );
    btn.addEventListener('click', () => claim(uid, btn));
    actions.push(btn);
  }
  actions.push(el('a', { class: 'button small', href: viewerUrl(uid), dataset: { test: 'open' }, i18n: 'worklist.open' }));

  const who =
    it.state === 'claimed' && it.claimed_by
      ? el(
          'span',
          { class: 'sub' },
          mine
            ? el('span', { i18n: 'worklist.by_you' })
            : [el('span', { i18n: 'worklist.by' }), ' ', el('span', { translate: 'no' }, it.claimed_by_name || it.claimed_by)],
          ' · ',
          leaseLive
            ? el('span', { i18n: 'worklist.until', i18nArgs: { time: fmtTime(it.lease_until_ms).slice(11) } })
            : el('span', { i18n: 'worklist.lease_expired' }),
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
      it.enqueued_ms
        ? el('span', { class: 'sub', i18n: 'worklist.since', i18nArgs: { time: sinceText(it.enqueued_ms) } })
        : null,
    ),
    el('td', { translate: 'no' }, clinicName(it.clinic_id, it.clinic_name)),
    el(
      'td',
      { class: 'patient' },
      personNameEl(it.patient_name, 'strong', 'worklist.no_name'),
      el(
        'span',
        { class: 'sub' },
        joined([
          sexNode(it.sex),
          age(it.birth_date, it.study_date),
          it.patient_id && el('span', {}, 'ID ', el('span', { translate: 'no' }, it.patient_id)),
        ]),
      ),
    ),
    el(
      'td',
      { class: 'nowrap' },
      el('span', { translate: 'no' }, list(it.modalities) || '—'),
      el('span', { class: 'sub' }, dicomDate(it.study_date)),
    ),
    el('td', { translate: 'no' }, list(it.body_parts) || el('span', { class: 'muted' }, '—')),
    el('td', { class: 'clip', translate: 'no' }, it.description || el('span', { class: 'muted' }, '—')),
    el(
      'td',
      { class: 'num' },
      String(it.num_instances ?? 0),
      it.num_series != null
        ? el('span', { class: 'sub', i18n: 'worklist.n_series', i18nArgs: { n: it.num_series } })
        : null,
    ),
    el('td', { class: 'question', translate: 'no' }, it.clinical_question || el('span', { class: 'muted' }, '—')),
    el(
      'td',
      {},
      el('span', { class: `badge st-${it.state}`, dataset: { state: it.state }, i18n: `worklist.state.${it.state}` }),
      who,
      it.state === 'returned' && it.detail ? el('span', { class: 'sub', translate: 'no' }, it.detail) : null,
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
  for (const card of arrivingCards.values()) sinceArriving(card, now);
}

function render(r, fetchedAt) {
  last = { r, fetchedAt };
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
  const summary = $('#summary');
  // Past COUNT_CAP the server stops counting (total_exact false): say
  // "more than", and let Next follow full pages.
  const more = r.total_exact === false;
  if (items.length)
    say(summary, more ? 'worklist.summary_more' : 'worklist.summary', { from: offset + 1, to: offset + items.length, n: total });
  else {
    delete summary.dataset.i18n;
    summary.textContent = '';
  }
  $('#pager').hidden = total <= PAGE && offset === 0;
  $('#prev').disabled = offset === 0;
  $('#next').disabled = more ? items.length < PAGE : offset + items.length >= total;
  say($('#page-info'), more ? 'worklist.page_more' : 'worklist.page', { page: Math.floor(offset / PAGE) + 1, pages: Math.max(1, Math.ceil(total / PAGE)) });
  say($('#updated'), 'worklist.updated', { time: fmtTime(fetchedAt).slice(11) });

  if (focusKey && focusKey[1]) {
    const tr = document.querySelector(`#rows tr[data-uid="${CSS.escape(focusKey[0])}"]`);
    const target = tr && tr.querySelector(`[data-test="${CSS.escape(focusKey[1])}"]`);
    if (target) target.focus();
  }
}

// ------------------------------------------------------------------ arriving

const arrivingKey = (a) => `${a.edge}\n${a.study_uid}`;
const arrivingImage = (uid, kind) => `/api/relay/arriving/${enc(uid)}/${kind}`;

/** One card's elements; updateArriving() fills them in on every poll. */
function arrivingCard(a) {
  const c = { key: arrivingKey(a), row: a, img: null, thumbTried: 0, keyImagesTried: false, prio: undefined };
  c.thumb = el('a', { class: 'arr-thumb', rel: 'noopener', hidden: true, dataset: { test: 'arriving-thumb' } });
  c.badge = el('span', { class: 'arr-prio' });
  c.clinic = el('strong', { class: 'arr-clinic', translate: 'no' });
  c.since = el('span', { class: 'arr-since muted', dataset: { test: 'arriving-since' } });
  c.bar = el('progress', { class: 'arr-bar', max: '100', value: '0' });
  c.count = el('span', { dataset: { test: 'arriving-count' } });
  c.bytes = el('span', { dataset: { test: 'arriving-bytes' } });
  c.previews = el('span', { dataset: { test: 'arriving-previews' } });
  c.done = el('p', { class: 'arr-done', hidden: true, dataset: { test: 'arriving-done' } });
  c.li = el(
    'li',
    { class: 'arr-card', dataset: { test: 'arriving-row', uid: a.study_uid, edge: a.edge } },
    c.thumb,
    el(
      'div',
      { class: 'arr-body' },
      el('div', { class: 'arr-head' }, c.badge, c.clinic, c.since),
      c.bar,
      el('div', { class: 'arr-figures' }, c.count, c.bytes, c.previews),
      c.done,
    ),
  );
  return c;
}

/** Server time (ms since epoch) to our clock. */
function localTime(ms) {
  return ms + arrivingSkew;
}

function sinceArriving(c, now = Date.now()) {
  const a = c.row;
  if (a.state === 'committed') {
    c.since.textContent = a.committed_ms ? t('worklist.arr.completed_ago', { dur: fmtDuration(now - localTime(a.committed_ms)) }) : '';
    c.since.title = a.committed_ms ? fmtTime(localTime(a.committed_ms)) : '';
  } else {
    c.since.textContent = a.began_ms ? t('worklist.arr.began_ago', { dur: fmtDuration(now - localTime(a.began_ms)) }) : '';
    c.since.title = a.began_ms ? fmtTime(localTime(a.began_ms)) : '';
  }
}

/**
 * The card's thumbnail: the first staged preview while the study is on its
 * way (asked for again only when more previews have arrived since a 404),
 * the study's key images once it is committed and none was shown. Hidden
 * until an image has loaded.
 */
function thumbArriving(c) {
  const a = c.row;
  const uid = a.study_uid;
  const done = a.state === 'committed';
  c.thumb.href = done ? viewerUrl(uid) : arrivingImage(uid, 'preview');
  if (done) c.thumb.removeAttribute('target');
  else c.thumb.target = '_blank';
  c.thumb.title = t(done ? 'worklist.arr.open_study' : 'worklist.arr.open_preview');
  c.thumb.setAttribute('aria-label', c.thumb.title);
  if (c.img) return;
  let src = null;
  const previews = Number(a.previews) || 0;
  if (!done && previews > c.thumbTried) {
    c.thumbTried = previews;
    src = arrivingImage(uid, 'thumb');
  } else if (done && !c.keyImagesTried) {
    c.keyImagesTried = true;
    src = `/api/studies/${enc(uid)}/key-images`;
  }
  if (!src) return;
  const img = el('img', { class: 'study-thumb', alt: '', width: 64, height: 64, decoding: 'async' });
  c.img = img;
  img.addEventListener('load', () => {
    if (c.img === img) c.thumb.hidden = false;
  });
  img.addEventListener('error', () => {
    if (c.img !== img) return;
    c.img = null;
    c.thumb.hidden = true;
    img.remove();
  });
  c.thumb.replaceChildren(img);
  img.src = src;
}

function updateArriving(c, a) {
  c.row = a;
  const done = a.state === 'committed';
  c.li.dataset.state = a.state;
  c.li.classList.toggle('committed', done);
  if (c.prio !== a.priority) {
    c.prio = a.priority;
    c.badge.replaceChildren(prioBadge(a.priority));
  }
  c.clinic.textContent = clinicName(a.clinic_id);
  // Once committed the staged parts are gone (the server counts 0 arrived):
  // everything has arrived.
  const total = Number(a.total) || 0;
  const arrived = done ? total : Number(a.arrived) || 0;
  const totalBytes = Number(a.total_bytes) || 0;
  const arrivedBytes = done ? totalBytes : Number(a.arrived_bytes) || 0;
  const frac = done ? 1 : totalBytes > 0 ? arrivedBytes / totalBytes : total > 0 ? arrived / total : 0;
  c.bar.value = Math.round(Math.max(0, Math.min(1, frac)) * 100);
  c.bar.setAttribute('aria-label', t('worklist.arr.bar', { arrived, total }));
  c.count.textContent = t(done ? 'worklist.arr.received' : 'worklist.arr.arriving', { arrived, total });
  c.bytes.textContent = totalBytes ? fmtBytesOf(arrivedBytes, totalBytes) : '';
  c.bytes.hidden = !totalBytes;
  c.previews.textContent = t('worklist.arr.previews', { n: Number(a.previews) || 0 });
  c.previews.hidden = done;
  c.done.hidden = !done;
  if (done) {
    c.done.textContent =
      a.committed_ms && a.began_ms
        ? t('worklist.arr.done_took', { dur: fmtDuration(a.committed_ms - a.began_ms) })
        : t('worklist.arr.done');
  }
  thumbArriving(c);
}

/** Renders the poll's rows; true when a study was committed since the last poll. */
function renderArriving(rows) {
  const now = Date.now();
  const seen = new Set();
  const cards = [];
  let committedNow = false;
  for (const a of rows) {
    if (!a || !a.study_uid) continue;
    const key = arrivingKey(a);
    if (seen.has(key)) continue;
    seen.add(key);
    let c = arrivingCards.get(key);
    if (!c) {
      c = arrivingCard(a);
      arrivingCards.set(key, c);
    } else if (c.row.state !== 'committed' && a.state === 'committed') {
      committedNow = true;
    }
    updateArriving(c, a);
    sinceArriving(c, now);
    cards.push(c);
  }
  for (const key of [...arrivingCards.keys()]) if (!seen.has(key)) arrivingCards.delete(key);
  // On their way first (in the server's order: STAT → urgent → routine,
  // oldest first), then the just completed, newest first.
  const moving = cards.filter((c) => c.row.state !== 'committed');
  const done = cards
    .filter((c) => c.row.state === 'committed')
    .sort((x, y) => (y.row.committed_ms || 0) - (x.row.committed_ms || 0));
  const order = [...moving, ...done].map((c) => c.li);
  const list = $('#arriving-list');
  const current = [...list.children];
  // Re-insert only when the order changed (keeps keyboard focus in place).
  if (current.length !== order.length || current.some((li, i) => li !== order[i])) list.replaceChildren(...order);
  $('#arriving').hidden = order.length === 0;
  const count = $('#arriving-count');
  if (!order.length) {
    delete count.dataset.i18n;
    count.textContent = '';
  } else if (done.length) say(count, 'worklist.arr.count_done', { n: moving.length, done: done.length });
  else say(count, 'worklist.arr.count', { n: moving.length });
  hook.arriving = [...moving, ...done].map(({ row: a }) => ({
    uid: a.study_uid,
    edge: a.edge,
    clinic_id: a.clinic_id,
    state: a.state,
    priority: a.priority,
    total: a.total,
    arrived: a.arrived,
    previews: a.previews,
  }));
  return committedNow;
}

async function loadArriving() {
  if (arrivingOff) return;
  if (arrivingCtl) arrivingCtl.abort();
  const ctl = (arrivingCtl = new AbortController());
  try {
    const r = await api('/api/relay/arriving', { signal: ctl.signal });
    if (ctl !== arrivingCtl) return;
    if (r && Number.isFinite(r.now_ms)) arrivingSkew = Date.now() - r.now_ms;
    // A study just committed is now on the worklist: show it.
    if (renderArriving((r && r.arriving) || [])) load({ auto: true });
    arrivingFailing = false;
  } catch (e) {
    if (ctl !== arrivingCtl) return;
    if (e instanceof ApiError && e.status === 404) {
      // A server without the relay link's routes: nothing will ever arrive.
      arrivingOff = true;
      renderArriving([]);
      return;
    }
    if (!arrivingFailing) fail('worklist.fail.arriving', e);
    if (!(e && e.name === 'AbortError')) arrivingFailing = true;
  } finally {
    if (ctl === arrivingCtl) arrivingCtl = null;
  }
}

/** Every 2 s while a study is on its way, else every 10 s; none while hidden. */
function scheduleArriving() {
  clearTimeout(arrivingTimer);
  arrivingTimer = null;
  if (document.hidden || arrivingOff) return;
  const fast = [...arrivingCards.values()].some((c) => c.row.state !== 'committed');
  arrivingTimer = setTimeout(
    async () => {
      arrivingTimer = null;
      await loadArriving();
      scheduleArriving();
    },
    fast ? ARRIVING_FAST_MS : ARRIVING_SLOW_MS,
  );
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
    if (!auto || !failing) fail('worklist.fail.load', e);
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
    say(btn, 'worklist.opening');
    location.assign(viewerUrl(uid));
    return;
  } catch (e) {
    if (e instanceof ApiError && e.status === 409) {
      // The message names who holds the study: data, in its own translate="no" span.
      const build = () => withErrNodes('worklist.not_claimed', {}, e);
      hook.errors.push(nodesText(build()));
      liveToast(build, 'error');
      load();
    } else {
      fail('worklist.fail.claim', e);
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
      clearTimeout(arrivingTimer);
      refreshTimer = null;
      tickTimer = null;
      arrivingTimer = null;
      return;
    }
    tick();
    loadArriving().then(scheduleArriving);
    if (Date.now() - lastLoadAt >= REFRESH_MS) await load({ auto: true });
    schedule();
  });
  $('#refresh').addEventListener('click', async () => {
    loadArriving().then(scheduleArriving);
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
      sel.append(el('option', { value: c.id, translate: 'no' }, c.name || c.id));
    }
    const want = new URLSearchParams(location.search).get('clinic');
    if (want) sel.value = want;
  } catch (e) {
    fail('worklist.fail.clinics', e);
  }
}

// ------------------------------------------------------------------ start

async function main() {
  try {
    user = await session();
  } catch (e) {
    fail('worklist.fail.session', e);
    return;
  }
  header(user, '/worklist');
  if (user.role === 'clinic') {
    $('#main').replaceChildren(
      el('h1', { i18n: 'worklist.heading' }),
      el(
        'p',
        { class: 'notice' },
        el('span', { i18n: 'worklist.clinic_notice' }),
        ' ',
        el('a', { href: '/studies', i18n: 'worklist.clinic_go' }),
        el('span', { i18n: 'worklist.clinic_end' }),
      ),
    );
    return;
  }
  setupFilters();
  await loadClinics();
  setupRefresh();
  await Promise.all([load(), loadArriving()]);
  schedule();
  scheduleArriving();
}

// A language switch re-renders what carries formatted values (durations)
// or is set outside data-i18n (the arriving cards); the rest is re-translated in place.
onLang(() => {
  if (last) render(last.r, last.fetchedAt);
  for (const c of arrivingCards.values()) {
    updateArriving(c, c.row);
    sinceArriving(c);
  }
});

hook.refresh = () => load();
hook.refreshArriving = () => loadArriving();

main().finally(() => {
  hook.ready = true;
});
