// Shared helpers for the reading pages (login, studies, worklist, viewer,
// requests, admin): the API wrapper with the CSRF header and the
// session-expired redirect, the page header, small formatters.
//
// PHI rule: nothing here logs patient names, IDs or report text.
//
// Every visible string goes through web/i18n.js (conventions: web/I18N.md);
// the formatters live there and are re-exported here for the pages.

import { t, has as hasMessage, translateElement, langSwitcher, fmtTime, fmtDuration, fmtNumber, fmtBytes, fmtBytesOf } from './i18n.js';

export { t, lang, onLang, applyI18n, langSwitcher } from './i18n.js';
export { fmtTime, fmtDuration, fmtNumber, fmtBytes, fmtBytesOf };

let csrf = '';
let me = null;

/**
 * Thrown for non-2xx answers: `status`, the server's English `error` text
 * (for logs), and its machine `code` and `params`, which `errText` turns
 * into the user's language.
 */
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
    this.code = (body && typeof body.code === 'string' && body.code) || '';
    this.params = (body && body.params) || {};
  }
}

/**
 * fetch() for the JSON API. Sends the CSRF token on every state-changing
 * request; a 401 (never logged in, or the session expired) goes to the
 * login page and comes back here afterwards.
 */
export async function api(path, { method = 'GET', body, raw = false, signal } = {}) {
  const headers = {};
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = csrf;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    signal,
  });
  if (res.status === 401 && !path.startsWith('/api/login')) {
    toLogin();
    throw new ApiError(401, 'session expired');
  }
  if (raw) {
    if (!res.ok) throw new ApiError(res.status, `HTTP ${res.status}`);
    return res;
  }
  if (res.status === 204) return null;
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) throw new ApiError(res.status, (data && data.error) || `HTTP ${res.status}`, data);
  return data;
}

export function toLogin() {
  const next = location.pathname + location.search + location.hash;
  location.assign('/login?next=' + encodeURIComponent(next));
}

/** The logged-in user (fetches once); redirects to login when there is none. */
export async function session() {
  if (me) return me;
  const r = await api('/api/me');
  csrf = r.csrf;
  me = r.user;
  return me;
}

export function setSession(user, token) {
  me = user;
  csrf = token;
}

export function homeOf(user) {
  if (!user) return '/login';
  if (user.role === 'expert') return '/worklist';
  if (user.role === 'admin') return '/admin';
  return '/studies';
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

// el() attributes naming a message; kept as data-i18n* so applyI18n()
// re-translates the element when the language is switched.
const I18N_ATTRS = {
  i18n: 'i18n',
  i18nPlaceholder: 'i18nPlaceholder',
  i18nTitle: 'i18nTitle',
  i18nAriaLabel: 'i18nAriaLabel',
};

/**
 * Element builder: el('td', {class: 'x', dataset: {uid}}, 'text', child).
 * Interface text: el('button', {i18n: 'report.sign', i18nArgs: {n: 2}})
 * (also i18nPlaceholder, i18nTitle, i18nAriaLabel); data shown to users:
 * el('td', {translate: 'no'}, name).
 */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  let localized = false;
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (Object.hasOwn(I18N_ATTRS, k)) {
      e.dataset[I18N_ATTRS[k]] = v;
      localized = true;
    } else if (k === 'i18nArgs') e.dataset.i18nArgs = JSON.stringify(v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  if (localized) translateElement(e);
  return e;
}

/** Han, kana, Hangul: names written without spaces between their parts. */
const UNSPACED = /^[\u1100-\u11ff\u2e80-\u2fdf\u3040-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7ff\uf900-\ufaff\u{20000}-\u{3ffff}]+$/u;

/** One PN component group for display: "Doe^John" -> "Doe, John";
 * "王^小东" -> "王小东" (CJK names are written family name first, unspaced). */
function pnGroup(group) {
  const parts = String(group || '').split('^').map((p) => p.trim());
  const [family = '', given = '', middle = ''] = parts;
  const named = [family, given, middle].filter(Boolean);
  if (!named.length) return parts.filter(Boolean).join(' ');
  if (named.every((p) => UNSPACED.test(p))) return named.join('');
  const rest = [given, middle].filter(Boolean).join(' ');
  return family && rest ? `${family}, ${rest}` : family || rest;
}

/** The three component groups of a DICOM PN value
 * ("Wang^Xiaodong=王^小东=wang^xiaodong"), each formatted for display. */
export function personNameGroups(pn) {
  const [alphabetic = '', ideographic = '', phonetic = ''] = String(pn || '').split('=');
  return { alphabetic: pnGroup(alphabetic), ideographic: pnGroup(ideographic), phonetic: pnGroup(phonetic) };
}

/** A DICOM PN as people read it: the ideographic form when there is one
 * ("王小东"), else the alphabetic ("Doe, John"), else the phonetic. */
export function personName(pn) {
  const g = personNameGroups(pn);
  return g.ideographic || g.alphabetic || g.phonetic;
}

/** The alphabetic form worth showing beside `personName` (it differs from
 * what is shown), or ''. */
export function personNameAlt(pn) {
  const g = personNameGroups(pn);
  return g.ideographic && g.alphabetic ? g.alphabetic : '';
}

/** `personName` with the alphabetic form in brackets when it adds
 * something: "王小东 (Wang, Xiaodong)". For one-line texts. */
export function personNameFull(pn) {
  const alt = personNameAlt(pn);
  return alt ? `${personName(pn)} (${alt})` : personName(pn);
}

/** A name as an element: `tag` holding the shown form, and the alphabetic
 * form beside it in a muted span. Names are data: `translate="no"`. */
export function personNameEl(pn, tag = 'strong', noNameKey = 'common.no_name') {
  const main = personName(pn);
  // No name: the placeholder is interface text (translated), not data.
  if (!main) return el('span', { class: 'pn', 'data-pn': '' }, el(tag, { class: 'pn-main', i18n: noNameKey }));
  const alt = personNameAlt(pn);
  return el(
    'span',
    { class: 'pn', translate: 'no', 'data-pn': pn },
    el(tag, { class: 'pn-main' }, main),
    alt ? el('span', { class: 'pn-alt muted' }, ` ${alt}`) : null,
  );
}

/** DICOM DA "20240131" -> "2024-01-31". */
export function dicomDate(da) {
  if (!da || da.length !== 8) return da || '';
  return `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}`;
}

/**
 * The page header: product name, links for the caller's role, who is
 * logged in, the language switcher, logout. `active` is the current page's
 * path. Everything in it is re-translated in place on a language switch.
 */
export function header(user, active) {
  const links = [];
  if (user.role === 'clinic') links.push(['/studies', 'studies'], ['/requests', 'requests'], ['/broadcasts', 'broadcasts']);
  if (user.role === 'expert')
    links.push(['/worklist', 'worklist'], ['/studies', 'studies'], ['/requests', 'requests'], ['/broadcasts', 'broadcasts']);
  if (user.role === 'admin')
    links.push(['/admin', 'admin'], ['/worklist', 'worklist'], ['/studies', 'studies'], ['/requests', 'requests']);
  const nav = el(
    'nav',
    { class: 'app-nav', i18nAriaLabel: 'common.nav.label' },
    links.map(([href, key]) =>
      el('a', { href, class: href === active ? 'active' : undefined, i18n: `common.nav.${key}` }),
    ),
  );
  const logout = el('button', { type: 'button', class: 'link', dataset: { test: 'logout' }, i18n: 'common.logout' });
  logout.addEventListener('click', async () => {
    try {
      await api('/api/logout', { method: 'POST' });
    } finally {
      location.assign('/login');
    }
  });
  const who = el(
    'span',
    { class: 'app-user', dataset: { test: 'user-menu' } },
    el('span', { translate: 'no' }, user.display_name || user.username),
    ' · ',
    el('span', { i18n: `common.role.${user.role}` }),
  );
  const brand = el('a', { class: 'brand', href: '/', translate: 'no' }, 'medrelay');
  const h = el('header', { class: 'app-header' }, brand, nav, who, langSwitcher(), logout);
  document.body.prepend(h);
  return h;
}

/**
 * A small non-blocking message at the bottom of the page. Toasts are text
 * in the language of the moment and last seconds: a language switch clears
 * them (what must stay, like a form's error, is shown in the page by key).
 */
export function toast(text, kind = 'info') {
  let box = $('#toasts');
  if (!box) {
    box = el('div', { id: 'toasts', role: 'status', 'aria-live': 'polite' });
    document.body.append(box);
    window.addEventListener('mr-lang', () => box.replaceChildren());
  }
  const t = el('div', { class: `toast ${kind}` }, text);
  box.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}

/** Test hooks for WebDriver: window.mrTest.<page> = {...}. */
export function testHook(name, obj) {
  window.mrTest = window.mrTest || {};
  window.mrTest[name] = obj;
  return obj;
}

/** `word` -> `Word`. */
export function cap(s) {
  return s ? s[0].toUpperCase() + s.slice(1) : '';
}

/** A DICOM multi-value or comma list for display: "CT\\PT" -> "CT, PT". */
export function list(v) {
  return String(v || '')
    .split(/[,\\]/)
    .map((x) => x.trim())
    .filter(Boolean)
    .join(', ');
}

/** Age at `at` (DICOM DA, default today) from a DICOM birth date: "54 y", "7 mo", "12 d". */
export function age(birth, at) {
  if (!birth || birth.length !== 8) return '';
  const b = new Date(+birth.slice(0, 4), +birth.slice(4, 6) - 1, +birth.slice(6, 8));
  const r = at && at.length === 8 ? new Date(+at.slice(0, 4), +at.slice(4, 6) - 1, +at.slice(6, 8)) : new Date();
  if (Number.isNaN(b.getTime()) || r < b) return '';
  let months = (r.getFullYear() - b.getFullYear()) * 12 + (r.getMonth() - b.getMonth());
  if (r.getDate() < b.getDate()) months -= 1;
  if (months >= 24) return t('common.age.y', { n: Math.floor(months / 12) });
  if (months >= 1) return t('common.age.mo', { n: months });
  return t('common.age.d', { n: Math.round((r - b) / 86_400_000) });
}

/** ms since epoch -> the value of an `<input type="datetime-local">`. */
export function toLocalInput(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

export function fromLocalInput(v) {
  if (!v) return null;
  const ms = new Date(v).getTime();
  return Number.isFinite(ms) ? ms : null;
}

/**
 * What to tell the user about a failed request, as a message key and its
 * arguments (for el({i18n, i18nArgs}), so a language switch re-translates
 * it): the server's `code` (with its `params`) as `error.<code>`; without
 * one, or one the catalogue lacks, a generic message with the HTTP status,
 * never the server's English text.
 */
export function errMessage(err) {
  if (err instanceof ApiError) {
    const key = `error.${err.code}`;
    if (err.code && hasMessage(key)) return { key, args: err.params };
    if (err.status === 403) return { key: 'error.role', args: {} };
    return { key: 'error.generic', args: { status: err.status } };
  }
  return { key: 'error.network', args: {} };
}

/** errMessage() as text in the language in use. */
export function errText(err) {
  const { key, args } = errMessage(err);
  return t(key, args);
}

/**
 * A page's failure reporter: a toast and the page's test hook. Aborted
 * requests and 401s (already on the way to the login page) say nothing.
 */
export function failer(hook) {
  return (what, err) => {
    if (err && err.name === 'AbortError') return null;
    if (err instanceof ApiError && err.status === 401) return null;
    const msg = t('common.failed', { what, error: errText(err) });
    hook.errors.push(msg);
    toast(msg, 'error');
    return msg;
  };
}

/**
 * A server code shown as a label (a reading state, a priority, a delivery
 * state): the message `prefix.value` when the catalogue has it, else the
 * code as the server sent it, marked as data.
 */
export function codeLabel(prefix, value, attrs = {}) {
  const key = `${prefix}.${value}`;
  return hasMessage(key) ? el('span', { ...attrs, i18n: key }) : el('span', { ...attrs, translate: 'no' }, value || '');
}
