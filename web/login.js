// Login page: POST /api/login, then back to where the user was going
// (`?next=`, same-origin paths only) or to the role's home page.
// PHI rule: nothing is logged; the password never leaves the form except in
// the login request.

import { api, ApiError, setSession, homeOf, testHook, $ } from './app-common.js';

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

function showError(text) {
  errorBox.textContent = text;
  errorBox.hidden = !text;
  if (text) hook.errors.push(text);
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
      button.textContent = 'Sign in';
      errorBox.textContent = '';
      errorBox.hidden = true;
      return;
    }
    button.disabled = true;
    button.textContent = `Wait ${left} s`;
    errorBox.textContent = `Too many attempts, try again in ${left} s`;
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
    showError('Enter your username and password');
    (user ? password : username).focus();
    return;
  }
  showError('');
  button.disabled = true;
  button.textContent = 'Signing in…';
  button.setAttribute('aria-busy', 'true');
  let keep = false; // leave the button as it is (navigating away, or locked out)
  try {
    const r = await api('/api/login', { method: 'POST', body: { username: user, password: password.value } });
    setSession(r.user, r.csrf);
    const next = safeNext(new URLSearchParams(location.search).get('next'));
    button.textContent = 'Signed in';
    keep = true;
    location.assign(next || homeOf(r.user));
    return;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      showError('Wrong username or password');
      password.value = '';
      password.focus();
    } else if (err instanceof ApiError && err.status === 429) {
      const secs = Number(err.body && err.body.retry_after_secs) || 30;
      hook.errors.push(`Too many attempts, try again in ${secs} s`);
      lockFor(Math.max(1, Math.ceil(secs)));
      keep = true;
    } else if (err instanceof ApiError && err.status === 503) {
      // Every password-checking slot is taken (a login flood): not the user's fault.
      showError('The server is busy, try again in a moment');
    } else if (err instanceof ApiError) {
      showError(err.status === 403 ? 'Not allowed for your role' : `Sign-in failed: ${err.message}`);
    } else {
      showError('Cannot reach the server. Check the connection and try again.');
    }
  } finally {
    button.removeAttribute('aria-busy');
    if (!keep && Date.now() >= lockedUntil) {
      button.disabled = false;
      button.textContent = 'Sign in';
    }
  }
}

form.addEventListener('submit', submit);

if (new URLSearchParams(location.search).get('next')) {
  $('#login-lead').textContent = 'Sign in to continue.';
}
username.focus();
hook.ready = true;
