// Login page: POST /api/login, then back to where the user was going
// (`?next=`, same-origin paths only) or to the role's home page.
// PHI rule: nothing is logged; the password never leaves the form except in
// the login request.
//
// Every text this page shows is set as a message key (data-i18n), so the
// language switcher re-translates it in place, typed username included.

import { api, ApiError, setSession, homeOf, testHook, t, errMessage, $ } from './app-common.js';

const hook = testHook('login', { ready: false, errors: [] });

const form = $('#login-form');
const username = $('#username');
const password = $('#password');
const button = $('#login');
const errorBox = $('#login-error');

let lockedUntil = 0;
let lockTimer = null;

/**
 * The `next` parameter if it is a path on this site: starts with a single
 * '/', resolves to our own origin (tabs/newlines and backslashes are folded
 * by the URL parser, so "/\evil" or "/\t/evil" are caught too), and is not
 * the login page itself.
 */
export function safeNext(raw) {
  if (typeof raw !== 'string' || !raw.startsWith('/') || raw.startsWith('//') || raw.startsWith('/\\')) return null;
  try {
    const u = new URL(raw, location.origin);
    if (u.origin !== location.origin) return null;
    if (u.pathname === '/login' || u.pathname.startsWith('/api/')) return null;
    return u.pathname + u.search + u.hash;
  } catch {
    return null;
  }
}

/** Sets `e`'s text to message `key` and keeps the key for a language switch. */
function say(e, key, args) {
  e.dataset.i18n = key;
  if (args) e.dataset.i18nArgs = JSON.stringify(args);
  else delete e.dataset.i18nArgs;
  e.textContent = t(key, args);
}

function showError(key, args) {
  if (!key) {
    delete errorBox.dataset.i18n;
    errorBox.textContent = '';
    errorBox.hidden = true;
    return;
  }
  say(errorBox, key, args);
  errorBox.hidden = false;
  hook.errors.push(errorBox.textContent);
}

function lockFor(secs) {
  lockedUntil = Date.now() + secs * 1000;
  clearInterval(lockTimer);
  const tick = () => {
    const left = Math.ceil((lockedUntil - Date.now()) / 1000);
    if (left <= 0) {
      clearInterval(lockTimer);
      lockTimer = null;
      button.disabled = false;
      say(button, 'login.submit');
      showError(null);
      return;
    }
    button.disabled = true;
    say(button, 'login.wait', { secs: left });
    say(errorBox, 'error.login_locked', { secs: left });
    errorBox.hidden = false;
  };
  tick();
  lockTimer = setInterval(tick, 1000);
}

async function submit(ev) {
  ev.preventDefault();
  if (button.disabled || Date.now() < lockedUntil) return;
  const user = username.value.trim();
  if (!user || !password.value) {
    showError('login.missing');
    (user ? password : username).focus();
    return;
  }
  showError(null);
  button.disabled = true;
  say(button, 'login.signing_in');
  button.setAttribute('aria-busy', 'true');
  let keep = false; // leave the button as it is (navigating away, or locked out)
  try {
    const r = await api('/api/login', { method: 'POST', body: { username: user, password: password.value } });
    setSession(r.user, r.csrf);
    const next = safeNext(new URLSearchParams(location.search).get('next'));
    say(button, 'login.signed_in');
    keep = true;
    location.assign(next || homeOf(r.user));
    return;
  } catch (err) {
    const { key, args } = errMessage(err);
    if (err instanceof ApiError && err.status === 401) {
      showError(key, args);
      password.value = '';
      password.focus();
    } else if (err instanceof ApiError && err.status === 429) {
      const secs = Math.max(1, Math.ceil(Number(err.body && err.body.retry_after_secs) || 30));
      hook.errors.push(t('error.login_locked', { secs }));
      lockFor(secs);
      keep = true;
    } else {
      // 503: every password-checking slot is taken (a login flood), not
      // the user's fault; the server's code says so.
      showError(key, args);
    }
  } finally {
    button.removeAttribute('aria-busy');
    if (!keep && Date.now() >= lockedUntil) {
      button.disabled = false;
      say(button, 'login.submit');
    }
  }
}

form.addEventListener('submit', submit);

if (new URLSearchParams(location.search).get('next')) say($('#login-lead'), 'login.lead_next');
username.focus();
hook.ready = true;
