// The pages' interface language: the message catalogues, t(), the DOM
// helpers that translate a page and re-translate it in place when the
// language is switched (so the page keeps its state: the study open, the
// half-typed report), and the local formats of times, durations, numbers
// and sizes. Conventions for page authors: web/I18N.md.
//
// Which language: the server writes it into <html lang> (the account's
// setting, else the browser's Accept-Language, else zh-CN) and says who
// chose it in data-mr-lang-from. The account's choice wins; else a choice
// made with the switcher in this browser (localStorage, e.g. on the login
// page); else the server's pick from Accept-Language.
//
// Both catalogues are imported statically: they load in parallel with the
// page's other modules (no extra round trip on a 300 ms link before the
// first paint), and a switch is synchronous.

import zhCN from './i18n-zh-CN.js';
import en from './i18n-en.js';

/** The languages: tag -> its name in itself (the switcher's label) and catalogue. */
export const LANGUAGES = {
  'zh-CN': { name: '中文', messages: zhCN },
  en: { name: 'English', messages: en },
};
export const DEFAULT_LANG = 'zh-CN';
const STORE_KEY = 'mr-lang';

// Test hook: every lookup of a key the active catalogue lacks, as "lang key".
window.mrTest = window.mrTest || {};
const hook = (window.mrTest.i18n = { lang: '', missing: [] });

let current = initialLang();
hook.lang = current;

function stored() {
  try {
    const v = localStorage.getItem(STORE_KEY);
    return v && LANGUAGES[v] ? v : null;
  } catch {
    return null; // storage disabled
  }
}

/** The first of the browser's languages we have (same rule as the server). */
export function negotiate(prefs) {
  for (const p of prefs || []) {
    const tag = String(p);
    const exact = Object.keys(LANGUAGES).find((l) => l.toLowerCase() === tag.toLowerCase());
    if (exact) return exact;
    const primary = tag.split('-')[0].toLowerCase();
    const near = Object.keys(LANGUAGES).find((l) => l.split('-')[0].toLowerCase() === primary);
    if (near) return near;
  }
  return null;
}

function initialLang() {
  const root = document.documentElement;
  const served = root.getAttribute('lang');
  const from = root.dataset.mrLangFrom;
  if (from === 'account' && LANGUAGES[served]) return served;
  const mine = stored();
  if (mine) return mine;
  if (from && LANGUAGES[served]) return served;
  return negotiate(navigator.languages) || DEFAULT_LANG;
}

/** The language in use, e.g. 'zh-CN'. */
export function lang() {
  return current;
}

/** True if the active catalogue has `key` (records nothing). */
export function has(key) {
  return Object.prototype.hasOwnProperty.call(LANGUAGES[current].messages, key);
}

function noteMissing(key) {
  const entry = `${current} ${key}`;
  if (!hook.missing.includes(entry) && hook.missing.length < 500) hook.missing.push(entry);
}

function fill(text, args) {
  if (!args) return text;
  return text.replace(/\{(\w+)\}/g, (m, k) => (args[k] === undefined || args[k] === null ? m : String(args[k])));
}

/**
 * The message `key` in the language in use, with `{name}` placeholders
 * filled from `args`. A message may be plural forms `{one, other}`, chosen
 * by `args.n`. A key the catalogue lacks is recorded for the tests and
 * shown in English (or as the key).
 */
export function t(key, args) {
  const cat = LANGUAGES[current].messages;
  let v = Object.prototype.hasOwnProperty.call(cat, key) ? cat[key] : undefined;
  if (v === undefined) {
    noteMissing(key);
    v = en[key] ?? key;
  }
  if (v && typeof v === 'object') {
    const n = Number(args && args.n);
    v = v[new Intl.PluralRules(current).select(Number.isFinite(n) ? n : 0)] ?? v.other;
  }
  return fill(String(v), args);
}

const ATTRS = [
  ['i18nPlaceholder', 'placeholder'],
  ['i18nTitle', 'title'],
  ['i18nAriaLabel', 'aria-label'],
];
const SELECTOR = '[data-i18n],[data-i18n-placeholder],[data-i18n-title],[data-i18n-aria-label]';

function argsOf(e) {
  if (!e.dataset.i18nArgs) return undefined;
  try {
    return JSON.parse(e.dataset.i18nArgs);
  } catch {
    return undefined;
  }
}

/** Fills one element from its data-i18n* attributes. */
export function translateElement(e) {
  const args = argsOf(e);
  if (e.dataset.i18n) e.textContent = t(e.dataset.i18n, args);
  for (const [k, attr] of ATTRS) if (e.dataset[k]) e.setAttribute(attr, t(e.dataset[k], args));
}

/**
 * Translates every element under `root` (and `root` itself) that carries
 * data-i18n (text), data-i18n-placeholder, data-i18n-title or
 * data-i18n-aria-label, with arguments from data-i18n-args (JSON).
 */
export function applyI18n(root = document) {
  if (root.nodeType === Node.ELEMENT_NODE && root.matches(SELECTOR)) translateElement(root);
  for (const e of root.querySelectorAll(SELECTOR)) translateElement(e);
  if (root === document) document.documentElement.lang = current;
}

/**
 * Switches the language in place: every data-i18n element is re-translated
 * and `mr-lang` is dispatched on window, on which pages re-render what is
 * not in the DOM's attributes (document.title set by code, lists built with
 * formatted values). Nothing is reloaded.
 */
export function setLang(tag) {
  if (!LANGUAGES[tag]) return false;
  current = tag;
  hook.lang = tag;
  applyI18n(document);
  window.dispatchEvent(new CustomEvent('mr-lang', { detail: { lang: tag } }));
  return true;
}

/** Runs `fn(lang)` after every switch. */
export function onLang(fn) {
  window.addEventListener('mr-lang', (ev) => fn(ev.detail.lang));
}

/**
 * Saves a choice made with the switcher to the account, if there is a
 * session (a 401 from /api/me: none, e.g. on the login page). Kept here,
 * not in app-common.js, so the consultation page uses it too.
 */
async function saveToAccount(tag) {
  if (location.pathname === '/login') return false; // no account yet: localStorage only
  const me = await fetch('/api/me', { credentials: 'same-origin' });
  if (!me.ok) return false;
  const { csrf } = await me.json();
  const r = await fetch('/api/me/language', {
    method: 'PUT',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
    body: JSON.stringify({ language: tag }),
  });
  return r.ok;
}

/** The user picked `tag`: switch, remember it in this browser and on the account. */
export async function chooseLang(tag) {
  if (!setLang(tag)) return;
  try {
    localStorage.setItem(STORE_KEY, tag);
  } catch {
    // storage disabled: the account (if any) still remembers
  }
  hook.saved = false;
  try {
    hook.saved = await saveToAccount(tag);
  } catch {
    // offline: this page is switched; the next one asks the server again
  }
}

/**
 * The language switcher: one button per language, each labelled in its own
 * language (and so marked translate="no"). Pages put it in their header;
 * static pages mark a place with data-lang-switch and get one there.
 */
export function langSwitcher() {
  const box = document.createElement('span');
  box.className = 'lang-switch';
  box.setAttribute('role', 'group');
  box.dataset.i18nAriaLabel = 'common.lang.switch';
  box.dataset.test = 'lang-switch';
  const buttons = Object.entries(LANGUAGES).map(([tag, { name }]) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'link';
    b.lang = tag;
    b.setAttribute('translate', 'no');
    b.dataset.test = `lang-${tag}`;
    b.textContent = name;
    b.addEventListener('click', () => chooseLang(tag));
    box.append(b);
    return [tag, b];
  });
  const mark = () => {
    for (const [tag, b] of buttons) b.setAttribute('aria-pressed', String(tag === current));
  };
  mark();
  window.addEventListener('mr-lang', mark);
  translateElement(box);
  return box;
}

// ------------------------------------------------------------ local formats

const p2 = (n) => String(n).padStart(2, '0');

/** ms since epoch -> "2026-12-07 14:30" (local time, 24-hour, every language). */
export function fmtTime(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  return `${d.getFullYear()}-${p2(d.getMonth() + 1)}-${p2(d.getDate())} ${p2(d.getHours())}:${p2(d.getMinutes())}`;
}

/** A duration in ms -> "45 s", "12 min", "3 h 5 min", "2 d 4 h" (or 秒/分钟/小时/天). */
export function fmtDuration(ms) {
  if (ms == null) return '';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return t('common.dur.s', { s });
  const m = Math.round(s / 60);
  if (m < 60) return t('common.dur.min', { m });
  const h = Math.floor(m / 60);
  if (h < 48) return t('common.dur.h_min', { h, m: m % 60 });
  return t('common.dur.d_h', { d: Math.floor(h / 24), h: h % 24 });
}

/** A number with the language's grouping: 12,345 (Intl.NumberFormat options allowed). */
export function fmtNumber(n, opts) {
  const v = Number(n);
  return Number.isFinite(v) ? new Intl.NumberFormat(current, opts).format(v) : '';
}

const SIZE_UNITS = [
  [1e9, 'GB', 2],
  [1e6, 'MB', 1],
  [1e3, 'KB', 0],
];

/** Bytes -> "840 KB", "12.3 MB", "1.25 GB" (decimal units, like Mbit/s); "512 B"/"512 字节". */
export function fmtBytes(b) {
  const v = Number(b);
  if (!Number.isFinite(v)) return '';
  for (const [div, unit, dp] of SIZE_UNITS) if (v >= div) return `${(v / div).toFixed(dp)} ${unit}`;
  return t('common.bytes.b', { n: Math.round(v) });
}

/** "12.3 of 45.6 MB": both in the unit of the total. */
export function fmtBytesOf(part, total) {
  const tot = Number(total) || 0;
  const [div, unit, dp] = SIZE_UNITS.find(([d]) => tot >= d) || [1e3, 'KB', 0];
  return t('common.bytes.of', {
    part: ((Number(part) || 0) / div).toFixed(dp),
    total: (tot / div).toFixed(dp),
    unit,
  });
}

// ------------------------------------------------------------ start-up

// Module scripts run after the document is parsed: translate the static
// page, put a switcher where the page asks for one, then show the page
// (app.css and consult.css hide the body until then, so a zh-CN user never
// sees the English text the HTML carries).
applyI18n(document);
// The bundled Tibetan font (app.css, consult.css) is fetched now, not when
// the first Tibetan text appears: Chromium keeps drawing a text node made of
// Tibetan only as missing-glyph boxes if it was laid out while the font was
// still loading. Cached for a year after the first page (immutable).
if (document.fonts && document.fonts.load) document.fonts.load('16px "medrelay Tibetan"', '\u0f40').catch(() => {});
for (const slot of document.querySelectorAll('[data-lang-switch]')) slot.replaceChildren(langSwitcher());
document.documentElement.dataset.i18nReady = '';
