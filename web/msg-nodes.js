// Messages whose arguments carry data, as DOM nodes: an API error naming
// the colleague who holds a study ("该检查正由 {name} 阅片") must not show
// that name as interface text. The name goes into a translate="no" span
// (the i18n checks and browser translators skip it), the rest is the
// message in the language in use. Used by the worklist and the viewer.
// Also the pages' failure reporter, whose toast follows a language switch.

import { el, errMessage, onLang, t, toast } from './app-common.js';

const MARK = '\u0001';
const HOLE = '\u0002';

/** Arguments that are data (people's names), never interface text. */
const DATA_ARGS = ['name'];

/** Message `key` with `args` as nodes; the DATA_ARGS among them in translate="no" spans. */
export function msgNodes(key, args) {
  const a = { ...(args || {}) };
  for (const k of DATA_ARGS) if (a[k] !== undefined && a[k] !== null) a[k] = `${MARK}${k}${MARK}`;
  return t(key, a)
    .split(MARK)
    .map((part, i) => (i % 2 ? el('span', { translate: 'no' }, String(args[part])) : part))
    .filter((p) => p !== '');
}

/** An error (from errMessage's {key, args}) as nodes. */
export function errNodes(err) {
  const { key, args } = err && err.key ? err : errMessage(err);
  return msgNodes(key, args);
}

/** Message `key` with its `{error}` filled by the error's nodes (e.g. common.failed, worklist.not_claimed). */
export function withErrNodes(key, args, err) {
  const [before, after] = t(key, { ...args, error: HOLE }).split(HOLE);
  return [before, ...errNodes(err), after].filter((p) => p !== '' && p !== undefined);
}

/** The nodes' text (for test hooks and logs-free error lists). */
export function nodesText(nodes) {
  return nodes.map((n) => (typeof n === 'string' ? n : n.textContent)).join('');
}

// Elements whose content `build()` makes with t() (a message with an error
// or data inside, which data-i18n cannot express): rebuilt on a language
// switch. Entries whose element has left the page are dropped.
const live = new Map();
const LIVE_PRUNE_AT = 50;

function prune() {
  for (const e of live.keys()) if (!e.isConnected) live.delete(e);
}

/**
 * Fills `e` with the nodes `build()` returns, now and again after every
 * language switch (until liveNodes(e, null) or `e` leaves the page).
 */
export function liveNodes(e, build) {
  if (!build) {
    live.delete(e);
    e.replaceChildren();
    return;
  }
  e.replaceChildren(...build());
  live.set(e, build);
  if (live.size > LIVE_PRUNE_AT) prune();
}

onLang(() => {
  for (const [e, build] of live) if (e.isConnected) e.replaceChildren(...build());
  prune();
});

/** A toast of the nodes `build()` returns, rebuilt in the new language on a switch. */
export function liveToast(build, kind) {
  const box = el('span', {});
  toast(box, kind);
  liveNodes(box, build);
}

/**
 * A page's failure reporter (as app-common's failer(), with the toast in
 * the language in use and data in the error marked as data): `whatKey`
 * names what failed (with `whatArgs`); `errorOf` turns an error into
 * {key, args} (default: errMessage). Aborted requests and 401s (on the way
 * to the login page) say nothing. `dedupeMs`: the same text is toasted at
 * most once in that time (hook.errors still gets every one). Returns the
 * text, or null.
 */
export function failReporter(hook, { errorOf = errMessage, dedupeMs = 0 } = {}) {
  const recent = new Map();
  return (whatKey, err, whatArgs) => {
    if (err && err.name === 'AbortError') return null;
    if (err && err.status === 401) return null;
    const e = errorOf(err);
    const build = () => withErrNodes('common.failed', { what: t(whatKey, whatArgs) }, e);
    const msg = nodesText(build());
    hook.errors.push(msg);
    if (hook.errors.length > 100) hook.errors.splice(0, hook.errors.length - 100);
    const now = Date.now();
    if (dedupeMs && (recent.get(msg) || 0) > now - dedupeMs) return msg; // no toast storms
    recent.set(msg, now);
    if (recent.size > 100) recent.clear();
    liveToast(build, 'error');
    return msg;
  };
}
