// Small helpers shared by the consultation page modules. The only
// dependency is web/i18n.js (message keys kept as data-i18n* attributes, so
// a language switch re-translates in place; conventions: web/I18N.md).

import { onLang, t, translateElement } from './i18n.js';

/**
 * Parse the URL fragment (`#token=...&autojoin=1`). Done by hand rather than
 * with URLSearchParams because that decodes "+" as a space, which would
 * corrupt a base64 token.
 */
export function parseFragment(hash) {
  const out = {};
  for (const part of String(hash || '').replace(/^#/, '').split('&')) {
    if (!part) continue;
    const i = part.indexOf('=');
    const key = i < 0 ? part : part.slice(0, i);
    const value = i < 0 ? '' : part.slice(i + 1);
    out[safeDecode(key)] = safeDecode(value);
  }
  return out;
}

function safeDecode(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** A fragment flag is on when present as `flag`, `flag=1` or `flag=true`. */
export function flagOn(frag, name) {
  if (!(name in frag)) return false;
  const v = frag[name].toLowerCase();
  return v === '' || v === '1' || v === 'true' || v === 'yes';
}

/** Same rule as the gateway's `is_valid_uid`: dotted decimal, no leading zeros, <= 64 chars. */
export function isValidUid(uid) {
  return (
    typeof uid === 'string' &&
    uid.length > 0 &&
    uid.length <= 64 &&
    uid.split('.').every((c) => /^(0|[1-9][0-9]*)$/.test(c))
  );
}

export const isFiniteNumber = (v) => typeof v === 'number' && Number.isFinite(v);

/**
 * Build a DOM element. Strings among the children become text nodes, so
 * user-supplied text (names, chat) can never be interpreted as HTML.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  let localized = false;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (Object.hasOwn(I18N_ATTRS, k)) {
      node.dataset[k] = v;
      localized = true;
    } else if (k === 'i18nArgs') node.dataset.i18nArgs = JSON.stringify(v);
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  if (localized) translateElement(node);
  return node;
}

// el() attributes naming a message (interface text): `i18n` (the text),
// `i18nTitle`, `i18nAriaLabel`, `i18nPlaceholder`, with `i18nArgs`.
const I18N_ATTRS = { i18n: 1, i18nTitle: 1, i18nAriaLabel: 1, i18nPlaceholder: 1 };

/**
 * Sets `node`'s text to the message `key` (null: empty), kept as data-i18n
 * so a language switch re-translates it. Returns `node`.
 */
export function setMsg(node, key, args) {
  delete node.dataset.i18nRich;
  node.removeAttribute('translate');
  if (!key) {
    delete node.dataset.i18n;
    delete node.dataset.i18nArgs;
    node.textContent = '';
    return node;
  }
  node.dataset.i18n = key;
  if (args) node.dataset.i18nArgs = JSON.stringify(args);
  else delete node.dataset.i18nArgs;
  translateElement(node);
  return node;
}

/** Sets an attribute (`title`, `aria-label`, `placeholder`) of `node` to the message `key`. */
export function setMsgAttr(node, attr, key, args) {
  const k = { title: 'i18nTitle', 'aria-label': 'i18nAriaLabel', placeholder: 'i18nPlaceholder' }[attr];
  node.dataset[k] = key;
  if (args) node.dataset.i18nArgs = JSON.stringify(args);
  translateElement(node);
  return node;
}

/**
 * Shows data typed by people (a name, a room title) as it is, marked
 * translate="no"; without it, the message `fallback` (e.g. "Participant").
 */
export function setData(node, value, fallback) {
  if (value) {
    delete node.dataset.i18n;
    delete node.dataset.i18nArgs;
    delete node.dataset.i18nRich;
    node.setAttribute('translate', 'no');
    node.textContent = value;
    return node;
  }
  return setMsg(node, fallback);
}

/**
 * A message with data inside it ("{name} joined"): the data placeholders
 * (`data`, e.g. {name}) become translate="no" spans, the rest is the
 * message's text, so names are never mistaken for interface text (and the
 * message follows a language switch). Returns `node`.
 */
export function setRich(node, key, data) {
  delete node.dataset.i18n;
  node.removeAttribute('translate');
  node.dataset.i18nRich = key;
  node.dataset.i18nRichArgs = JSON.stringify(data || {});
  renderRich(node);
  return node;
}

function renderRich(node) {
  let data = {};
  try {
    data = JSON.parse(node.dataset.i18nRichArgs || '{}');
  } catch {
    data = {};
  }
  const marks = Object.fromEntries(Object.keys(data).map((k) => [k, `\u0000${k}\u0000`]));
  const parts = t(node.dataset.i18nRich, marks).split('\u0000');
  node.replaceChildren(
    ...parts
      .map((p, i) => (i % 2 ? el('span', { translate: 'no' }, String(data[p] ?? '')) : p))
      .filter((p) => p !== ''),
  );
}

onLang(() => {
  for (const node of document.querySelectorAll('[data-i18n-rich]')) renderRich(node);
});

/**
 * Rate-limit `fn` to one call per `ms`, always delivering the latest
 * arguments at the end of a burst (leading + trailing). Used for `view`
 * messages during drags: at most ~5/s, and the final state always goes out.
 */
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  let pending = null;
  const fire = () => {
    timer = null;
    last = Date.now();
    const args = pending;
    pending = null;
    fn(...args);
  };
  const wrapped = (...args) => {
    pending = args;
    if (timer) return;
    const wait = last + ms - Date.now();
    if (wait <= 0) fire();
    else timer = setTimeout(fire, wait);
  };
  wrapped.cancel = () => {
    clearTimeout(timer);
    timer = null;
    pending = null;
  };
  return wrapped;
}

/** Call `fn` once calls have stopped for `ms`. */
export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

const encoder = new TextEncoder();
export const utf8Length = (s) => encoder.encode(s).length;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Keep a bounded array bounded (test hooks and logs must not grow forever). */
export function pushBounded(arr, item, max = 1000) {
  arr.push(item);
  if (arr.length > max) arr.splice(0, arr.length - max);
}

/** "14:03" from a ms timestamp. */
export function clockTime(ms) {
  const d = new Date(ms);
  return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
}

/** Initials for an avatar placeholder. */
export function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  const letters = parts.length > 1 ? [parts[0], parts[parts.length - 1]] : parts;
  return letters.map((p) => Array.from(p)[0]).join('').toUpperCase() || '?';
}

/**
 * Console output that never carries PHI: only an event name and, optionally,
 * a code or count. Names, chat text, study UIDs and tokens are never passed here.
 */
export function log(event, code) {
  if (code === undefined) console.info(`[consult] ${event}`);
  else console.info(`[consult] ${event}: ${code}`);
}
