// Teaching broadcasts: experts open one for the clinics their hospital
// serves, clinic doctors find the ones they may watch and join them, a
// presenter ends its own. The broadcast itself is /broadcast (the
// consultation page in broadcast mode), reached through the join link.
//
// Slow links: the list is small and refreshed every 30 s while the tab is
// visible. PHI rule: broadcasts carry no patient data; nothing is logged.

import { api, session, header, el, $, toast, testHook, fmtTime, fmtNumber, errText, errMessage, failer, t, onLang } from './app-common.js';

const REFRESH_MS = 30_000;

const hook = testHook('broadcasts', { ready: false, ids: [], rows: [], errors: [] });
const fail = failer(hook);
const enc = encodeURIComponent;

let user = null;
let timer = null;
let shown = null; // the list on the page, rebuilt on a language switch

async function load() {
  let data;
  try {
    data = await api('/api/broadcasts');
  } catch (e) {
    fail(t('broadcasts.err.load'), e);
    return;
  }
  render(Array.isArray(data?.broadcasts) ? data.broadcasts : []);
}

function render(list) {
  shown = list;
  hook.ids = list.map((b) => b.id);
  hook.rows = list;
  $('#summary').textContent = list.length
    ? t('broadcasts.summary', { n: list.length })
    : t(user.role === 'expert' ? 'broadcasts.none.expert' : 'broadcasts.none.clinic');
  $('#table-wrap').hidden = list.length === 0;
  $('#rows').replaceChildren(...list.map(row));
  hook.ready = true;
}

function row(b) {
  // The starter and the colleagues it named present; the starter ends it.
  const presents = Array.isArray(b.presenters) && b.presenters.includes(user.username);
  const mine = user.role === 'expert' && b.presenter === user.username;
  const join = el('button', {
    type: 'button',
    class: 'primary',
    dataset: { test: 'bc-join' },
    i18n: presents ? 'broadcasts.present' : 'broadcasts.join',
  });
  join.addEventListener('click', () => joinBroadcast(b, join));
  const actions = [join];
  if (mine) {
    const end = el('button', { type: 'button', class: 'danger', dataset: { test: 'bc-end' }, i18n: 'broadcasts.end' });
    end.addEventListener('click', () => endBroadcast(b, end));
    actions.push(end);
  }
  return el(
    'tr',
    { dataset: { id: b.id } },
    el('td', { translate: 'no' }, b.title || ''),
    el('td', { translate: 'no' }, b.presenter_name || b.presenter || ''),
    el('td', {}, fmtTime((b.started_unix || 0) * 1000)),
    el(
      'td',
      {},
      b.on_air
        ? el('strong', { class: 'on-air', i18n: 'broadcasts.on_air' })
        : el('span', { i18n: 'broadcasts.not_started' }),
    ),
    el('td', {}, b.connected == null ? '' : fmtNumber(b.connected)),
    el('td', {}, el('div', { class: 'actions' }, actions)),
  );
}

async function joinBroadcast(b, button) {
  button.disabled = true;
  try {
    const r = await api(`/api/broadcasts/${enc(b.id)}/join`, { method: 'POST' });
    if (r?.join?.url) location.assign(r.join.url);
  } catch (e) {
    fail(t('broadcasts.err.join'), e);
    button.disabled = false;
    load();
  }
}

async function endBroadcast(b, button) {
  if (!confirm(t('broadcasts.end.confirm', { title: b.title }))) return;
  button.disabled = true;
  try {
    await api(`/api/broadcasts/${enc(b.id)}`, { method: 'DELETE' });
    toast(t('broadcasts.ended'));
  } catch (e) {
    fail(t('broadcasts.err.end'), e);
  }
  load();
}

async function start(ev) {
  ev.preventDefault();
  const title = $('#start-title-input').value.trim();
  const presenters = $('#start-presenters-input')
    .value.split(/[\s,;]+/)
    .map((s) => s.trim())
    .filter(Boolean);
  const err = $('#start-error');
  err.hidden = true;
  if (!title) return;
  const submit = ev.target.querySelector('[type=submit]');
  submit.disabled = true;
  try {
    const r = await api('/api/broadcasts', { method: 'POST', body: { title, presenters } });
    if (r?.join?.url) location.assign(r.join.url);
  } catch (e) {
    const { key, args } = errMessage(e);
    err.dataset.i18n = key;
    err.dataset.i18nArgs = JSON.stringify(args);
    err.textContent = t(key, args);
    err.hidden = false;
    fail(t('broadcasts.err.start'), e);
  } finally {
    submit.disabled = false;
  }
}

async function main() {
  user = await session();
  if (!user) return;
  header(user, '/broadcasts');
  // The summary is rebuilt in the new language; the start form keeps what is typed.
  onLang(() => {
    if (shown) render(shown);
  });
  if (user.role === 'expert') {
    $('#start-form').hidden = false;
    $('#start-form').addEventListener('submit', start);
  }
  await load();
  timer = setInterval(() => {
    if (document.visibilityState === 'visible') load();
  }, REFRESH_MS);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') load();
  });
}

main().catch((e) => toast(t('broadcasts.err.page', { error: errText(e) }), 'error'));
window.addEventListener('pagehide', () => clearInterval(timer));
