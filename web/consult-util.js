// Small helpers shared by the consultation page modules. No dependencies.

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
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return node;
}

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
