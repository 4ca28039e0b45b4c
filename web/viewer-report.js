// The reading side panel: worklist claim (experts), the report editor with
// autosave, signing and amendments, the version list with delivery state;
// the read-only report for clinic doctors and admins.
//
// Nothing typed is ever lost: every keystroke is copied to sessionStorage
// (keyed by study) until the server has the same text, a failed autosave is
// retried with back-off, and a reload restores the unsaved text.
//
// PHI rule: report text and patient data are never logged.

import { api, el, errMessage, fmtTime, onLang, t, toast } from './app-common.js';
import { errNodes } from './msg-nodes.js';

/** Template languages, each named in itself. */
const LANGUAGE_NAMES = { en: 'English', zh: '中文' };

const AUTOSAVE_MS = 2000;
const RENEW_MS = 5 * 60 * 1000;
const RETRY_MS = [5000, 10000, 20000, 40000, 60000];

// Worklist states (report.state.* the sentence, report.badge.* the badge) and report statuses (report.status.*).
const STATES = ['new', 'claimed', 'returned', 'reported', 'delivered', 'cancelled'];
const STATUSES = ['draft', 'signed', 'amended'];

const hhmm = (ms) => fmtTime(ms).slice(11);

/** Message `key` in `e` as data-i18n (re-translated in place on a language switch). */
function say(e, key, args) {
  e.dataset.i18n = key;
  if (args) e.dataset.i18nArgs = JSON.stringify(args);
  else delete e.dataset.i18nArgs;
  e.textContent = t(key, args);
}

/** `e` shows nothing (and is not re-translated). */
function blank(e) {
  delete e.dataset.i18n;
  delete e.dataset.i18nArgs;
  e.textContent = '';
}

/** A code as its message when known, else as data. */
function coded(prefix, codes, v, attrs = {}) {
  return codes.includes(v) ? el('span', { ...attrs, i18n: `${prefix}.${v}` }) : el('span', { ...attrs, translate: 'no' }, v);
}

/**
 * A history entry's detail: the notes the server writes itself (fixed
 * English, src/reading/reports.rs, src/http/reading.rs, src/archive/index.rs)
 * as messages; anything else (a return reason someone typed) as data.
 */
function historyDetail(detail) {
  let m = /^priority (stat|urgent|routine)$/.exec(detail);
  if (m) return [el('span', { i18n: 'report.hist.priority' }), ' ', el('span', { i18n: `viewer.prio.${m[1]}` })];
  m = /^report v(\d+) signed( \(amendment\))?$/.exec(detail);
  if (m) return [el('span', { i18n: m[2] ? 'report.hist.signed_amend' : 'report.hist.signed', i18nArgs: { v: Number(m[1]) } })];
  if (detail === 'shown on the clinic page') return [el('span', { i18n: 'report.hist.shown' })];
  if (detail === 'new images arrived') return [el('span', { i18n: 'report.hist.new_images' })];
  return [el('span', { translate: 'no' }, detail)];
}

/**
 * An in-page confirmation (WebDriver can click it; window.confirm it cannot).
 * `text`: the body as nodes (built with el({i18n})); `ok`: the button's message key.
 */
export function confirmDialog(dialog, { text, ok } = {}) {
  return new Promise((resolve) => {
    if (text !== undefined) dialog.querySelector('[data-text]').replaceChildren(...text);
    if (ok) say(dialog.querySelector('[data-ok]'), ok);
    const done = () => {
      dialog.removeEventListener('close', done);
      resolve(dialog.returnValue === 'ok');
    };
    dialog.returnValue = '';
    dialog.addEventListener('close', done);
    dialog.showModal();
  });
}

export class ReportPanel {
  /**
   * @param {HTMLElement} root
   * @param {object} o
   * @param {object} o.user the logged-in user
   * @param {string} o.uid Study Instance UID
   * @param {string} o.modality for the template list
   * @param {(whatKey: string, err: any) => void} o.fail reports an error (toast + test hook)
   * @param {() => void} o.onChange hook fields changed
   * @param {() => Promise<object>} o.reloadStudy GET /api/studies/{uid} again; returns its body
   * @param {{sign: HTMLDialogElement, ret: HTMLDialogElement, template: HTMLDialogElement}} o.dialogs
   */
  constructor(root, o) {
    Object.assign(this, o);
    this.root = root;
    this.enc = encodeURIComponent(o.uid);
    this.storeKey = `medrelay.viewer.draft.${o.uid}`;
    this.worklist = null;
    this.versions = [];
    this.delivery = [];
    this.templates = [];
    this.amending = false;
    this.dirty = false;
    this.saving = null;
    this.saveTimer = 0;
    this.retryTimer = 0;
    this.retryCount = 0;
    this.renewTimer = 0;
    this.lastRenew = 0;
    this.reportSaved = null; // ms of the last successful autosave
    this.holder = null; // why the claim failed (who holds it), from a 409: {key, args}
    this.isExpert = o.user.role === 'expert';
    this.build();
    // A language switch: data-i18n text is re-translated in place; the
    // state line and the version list are rebuilt (the typed text stays).
    onLang(() => {
      this.versionsSig = null;
      this.render();
    });
    window.addEventListener('pagehide', () => this.stash());
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && this.claimedByMe() && Date.now() - this.lastRenew > RENEW_MS - 30000) {
        this.renew();
      }
    });
  }

  /* ---------------- facts for the test hook ---------------- */

  get state() {
    return this.worklist?.state || null;
  }

  get claimedBy() {
    return this.worklist?.state === 'claimed' ? this.worklist.claimed_by || null : null;
  }

  get signedVersion() {
    const s = this.versions.find((v) => v.status === 'signed');
    return s ? s.version : null;
  }

  claimedByMe() {
    return this.worklist?.state === 'claimed' && this.worklist.claimed_by === this.user.username;
  }

  latestSigned() {
    return this.versions.find((v) => v.status === 'signed') || null;
  }

  /** May the editor save right now (claim holder, or the author amending)? */
  editable() {
    if (!this.isExpert) return false;
    if (this.claimedByMe()) return true;
    const signed = this.latestSigned();
    return this.amending && !!signed && signed.author === this.user.username;
  }

  /* ---------------- DOM ---------------- */

  build() {
    const u = (this.ui = {});
    if (this.isExpert || this.user.role === 'admin') {
      u.state = el('p', { class: 'wl-state', dataset: { test: 'wl-state' } });
      u.claim = el('button', { type: 'button', class: 'primary', dataset: { test: 'claim' }, i18n: 'report.claim' });
      u.release = el('button', { type: 'button', dataset: { test: 'release' }, i18n: 'report.release' });
      u.ret = el('button', { type: 'button', dataset: { test: 'return' }, i18n: 'report.return' });
      u.claim.addEventListener('click', () => this.claim());
      u.release.addEventListener('click', () => this.release());
      u.ret.addEventListener('click', () => this.returnStudy());
      u.history = el('ol', { class: 'history-list' });
      const hist = el('details', { class: 'history' }, el('summary', { i18n: 'report.history' }), u.history);
      hist.addEventListener('toggle', () => hist.open && this.loadHistory());
      const actions = this.isExpert ? el('div', { class: 'row-actions' }, u.claim, u.release, u.ret) : null;
      this.root.append(
        el('section', { class: 'panel', 'aria-labelledby': 'wl-h' }, el('h2', { id: 'wl-h', i18n: 'report.worklist' }), u.state, actions, hist),
      );
    }

    u.reportSection = el('section', { class: 'panel report', 'aria-labelledby': 'rep-h' });
    u.saved = el('span', { class: 'saved', role: 'status', 'aria-live': 'polite', dataset: { test: 'report-saved' } });
    u.reportSection.append(el('h2', { id: 'rep-h' }, el('span', { i18n: 'report.title' }), ' ', u.saved));
    if (this.isExpert) {
      u.template = el(
        'select',
        { dataset: { test: 'template' }, i18nAriaLabel: 'report.template_label' },
        el('option', { value: '', i18n: 'report.template_choose' }),
      );
      u.template.addEventListener('change', () => this.applyTemplate());
      // What the reader types is data: never translated.
      u.findings = el('textarea', { id: 'findings', rows: 8, dataset: { test: 'findings' }, spellcheck: 'true', translate: 'no' });
      u.impression = el('textarea', { id: 'impression', rows: 3, dataset: { test: 'impression' }, spellcheck: 'true', translate: 'no' });
      for (const t of [u.findings, u.impression]) {
        t.addEventListener('input', () => this.onInput());
        t.addEventListener('blur', () => this.dirty && this.save());
      }
      u.sign = el('button', { type: 'button', class: 'primary', dataset: { test: 'sign' }, i18n: 'report.sign' });
      u.amend = el('button', { type: 'button', dataset: { test: 'amend' }, i18n: 'report.amend' });
      u.cancelAmend = el('button', { type: 'button', dataset: { test: 'amend-cancel' }, i18n: 'report.amend_stop' });
      u.sign.addEventListener('click', () => this.sign());
      u.amend.addEventListener('click', () => this.startAmend());
      u.cancelAmend.addEventListener('click', () => this.stopAmend());
      u.hint = el('p', { class: 'hint', role: 'note' });
      u.reportSection.append(
        (u.templateField = el('label', { class: 'field' }, el('span', { i18n: 'report.template' }), u.template)),
        el('label', { class: 'field', for: 'findings', i18n: 'report.findings' }),
        u.findings,
        el('label', { class: 'field', for: 'impression', i18n: 'report.impression' }),
        u.impression,
        u.hint,
        el('div', { class: 'row-actions' }, u.sign, u.amend, u.cancelAmend),
      );
    } else {
      u.view = el('div', { class: 'report-view', dataset: { test: 'report-view' } });
      u.reportSection.append(u.view);
      if (this.user.role === 'clinic') {
        u.reportSection.append(
          el(
            'p',
            {},
            el(
              'a',
              {
                class: 'button',
                href: `/requests?new=1&study=${encodeURIComponent(this.uid)}`,
                dataset: { test: 'request-consult' },
                i18n: 'report.request_consult',
              },
            ),
          ),
        );
      }
    }
    u.versions = el('div', { class: 'versions', dataset: { test: 'versions' } });
    u.reportSection.append(u.versions);
    this.root.append(u.reportSection);
  }

  /* ---------------- loading ---------------- */

  async init(worklist) {
    this.worklist = worklist;
    const jobs = [this.loadVersions()];
    if (this.isExpert) jobs.push(this.loadTemplates());
    await Promise.allSettled(jobs);
    if (this.isExpert) this.fillEditor();
    this.render();
    if (this.claimedByMe()) this.startRenew();
  }

  async loadVersions() {
    try {
      const r = await api(`/api/studies/${this.enc}/reports`);
      this.versions = Array.isArray(r?.versions) ? r.versions : [];
      this.delivery = Array.isArray(r?.delivery) ? r.delivery : [];
    } catch (e) {
      this.fail('report.fail.versions', e);
    }
  }

  async loadTemplates() {
    const mod = encodeURIComponent(this.modality || '');
    try {
      const r = await api(`/api/report-templates?modality=${mod}`);
      this.templates = Array.isArray(r?.templates) ? r.templates : [];
    } catch (e) {
      this.fail('report.fail.templates', e);
    }
    // The page language's templates first, each language in its own group
    // (named in that language, so the label needs no translation).
    const page = (document.documentElement.lang || navigator.language || 'en').toLowerCase().split('-')[0];
    const langs = [...new Set(this.templates.map((tp) => tp.language || 'en'))];
    langs.sort((a, b) => (b === page) - (a === page));
    const sel = this.ui.template;
    sel.replaceChildren(
      el('option', { value: '', i18n: this.templates.length ? 'report.template_choose' : 'report.no_templates' }),
      // Template names are content (a Chinese template is named in Chinese).
      ...langs.map((lang) =>
        el(
          'optgroup',
          { label: LANGUAGE_NAMES[lang] || lang, lang, dataset: { language: lang } },
          ...this.templates.flatMap((tp, i) =>
            (tp.language || 'en') === lang ? [el('option', { value: String(i), lang, translate: 'no' }, tp.name)] : [],
          ),
        ),
      ),
    );
  }

  /** Editor text at load: the server's draft (or signed text), unless this browser holds newer unsaved text. */
  fillEditor() {
    const latest = this.versions[0];
    const base = latest && (latest.status === 'draft' || latest.status === 'signed') ? latest : null;
    const f = this.ui.findings;
    const i = this.ui.impression;
    f.value = base?.findings || '';
    i.value = base?.impression || '';
    const kept = this.stashed();
    if (kept && (kept.findings !== f.value || kept.impression !== i.value)) {
      f.value = kept.findings;
      i.value = kept.impression;
      this.dirty = true;
      if (latest?.status === 'signed' && latest.author === this.user.username) this.amending = true;
      toast(el('span', { i18n: 'report.restored' }), 'info');
      if (this.editable()) this.scheduleSave(500);
    }
  }

  async loadHistory() {
    try {
      const r = await api(`/api/worklist/${this.enc}/history`);
      const rows = Array.isArray(r?.transitions) ? r.transitions : [];
      this.ui.history.replaceChildren(
        ...rows.map((tr) =>
          el(
            'li',
            {},
            `${fmtTime(tr.at_ms)} · `,
            tr.from ? coded('report.badge', STATES, tr.from) : '—',
            ' → ',
            coded('report.badge', STATES, tr.to),
            ' · ',
            tr.actor === 'system'
              ? el('span', { i18n: 'report.hist.system' })
              : el('span', { translate: 'no' }, tr.actor_name || tr.actor || ''),
            tr.detail ? el('div', { class: 'muted' }, historyDetail(tr.detail)) : null,
          ),
        ),
      );
      if (!rows.length) this.ui.history.replaceChildren(el('li', { class: 'muted', i18n: 'report.no_history' }));
    } catch (e) {
      this.fail('report.fail.history', e);
    }
  }

  /** New worklist facts (claim answer, or the page's periodic refresh). */
  setWorklist(wl) {
    const wasMine = this.claimedByMe();
    this.worklist = wl || null;
    if (this.claimedByMe()) {
      this.holder = null;
      if (!wasMine) this.startRenew();
      if (this.dirty) this.scheduleSave(300);
    } else if (wasMine) {
      this.stopRenew();
    }
    this.render();
  }

  async refresh() {
    try {
      const r = await this.reloadStudy();
      this.setWorklist(r?.worklist || null);
    } catch (e) {
      this.fail('report.fail.refresh', e);
    }
  }

  /* ---------------- rendering ---------------- */

  render() {
    const u = this.ui;
    const wl = this.worklist;
    if (u.state) {
      const parts = [];
      if (!wl) parts.push(el('span', { i18n: 'report.not_on_worklist' }));
      else {
        parts.push(coded('report.badge', STATES, wl.state, { class: `badge st-${wl.state}` }));
        if (STATES.includes(wl.state)) parts.push(' ', el('span', { i18n: `report.state.${wl.state}` }));
        if (wl.state === 'claimed') {
          parts.push(el('br'));
          if (wl.claimed_by === this.user.username) parts.push(el('span', { i18n: 'report.claimed_by_you' }));
          else parts.push(el('span', { i18n: 'report.claimed_by' }), ' ', el('span', { translate: 'no' }, wl.claimed_by));
          if (wl.lease_until_ms) parts.push(' ', el('span', { i18n: 'report.until', i18nArgs: { time: hhmm(wl.lease_until_ms) } }));
        }
      }
      if (this.holder) {
        // Names who holds the claim (data): rebuilt on a language switch (render()).
        parts.push(el('br'), el('span', { class: 'warn', dataset: { test: 'claim-holder' } }, errNodes(this.holder)));
      }
      u.state.replaceChildren(...parts);
    }
    if (this.isExpert) {
      const mine = this.claimedByMe();
      const st = wl?.state;
      u.claim.hidden = mine || !wl || !['new', 'claimed', 'returned'].includes(st);
      u.release.hidden = !mine;
      u.ret.hidden = !mine;
      const signed = this.latestSigned();
      const reported = st === 'reported' || st === 'delivered';
      const canAmend = reported && !!signed && signed.author === this.user.username;
      u.amend.hidden = !canAmend || this.amending;
      u.cancelAmend.hidden = !this.amending || mine;
      const edit = this.editable();
      for (const t of [u.findings, u.impression]) {
        t.readOnly = !edit;
        t.setAttribute('aria-readonly', String(!edit));
      }
      u.template.disabled = !edit;
      u.templateField.hidden = !edit;
      u.sign.hidden = !edit;
      say(u.sign, this.amending && !mine ? 'report.sign_amend' : 'report.sign');
      const hint = edit ? '' : reported ? (canAmend ? 'report.hint.amend' : 'report.hint.other') : mine ? '' : 'report.hint.claim';
      if (hint) say(u.hint, hint);
      else blank(u.hint);
      this.showSaved();
    } else {
      this.renderReadOnly();
    }
    this.renderVersions();
    this.onChange();
  }

  showSaved(text) {
    const s = this.ui.saved;
    if (!s) return;
    if (text !== undefined) say(s, text);
    else if (this.saving) say(s, 'report.saving');
    else if (this.dirty && this.retryTimer) say(s, 'report.save_retry');
    else if (this.dirty) say(s, this.editable() ? 'report.unsaved' : 'report.kept');
    else if (this.reportSaved) say(s, 'report.saved', { time: hhmm(this.reportSaved) });
    else blank(s);
    s.classList.toggle('warn', this.dirty && !this.saving);
  }

  renderReadOnly() {
    const v = this.ui.view;
    const signed = this.versions.filter((r) => r.status === 'signed');
    const latest = signed[0];
    if (!latest) {
      v.replaceChildren(el('p', { class: 'muted', i18n: 'report.none' }));
      return;
    }
    v.replaceChildren(reportBlock(latest, true));
  }

  renderVersions() {
    const box = this.ui.versions;
    // Re-render only on change: a periodic refresh must not fold what the reader unfolded.
    const sig = JSON.stringify([this.versions.map((v) => [v.version, v.status, v.updated_ms, v.signed_ms]), this.delivery]);
    if (sig === this.versionsSig) return;
    this.versionsSig = sig;
    const list = this.isExpert || this.user.role === 'admin' ? this.versions : this.versions.filter((r) => r.status === 'signed').slice(1);
    if (!list.length) {
      box.replaceChildren();
      return;
    }
    const title = this.isExpert || this.user.role === 'admin' ? 'report.versions' : 'report.older';
    const items = list.map((r) => {
      const del = this.delivery.filter((d) => d.version === r.version);
      // A signed version with a newer signed one after it was amended (it stays on record).
      const newer = this.versions.filter((v) => v.status === 'signed' && v.version > r.version).pop();
      const amendedBy = r.amended_by ?? newer?.version;
      const status =
        r.status === 'signed' && amendedBy
          ? el('span', { i18n: 'report.status.amended_by', i18nArgs: { v: amendedBy } })
          : coded('report.status', STATUSES, r.status);
      const author = r.author_name || r.author;
      const line = [
        el('span', { i18n: 'report.version_n', i18nArgs: { n: r.version } }),
        ' · ',
        status,
        author ? [' · ', el('span', { translate: 'no' }, author)] : '',
        r.signed_ms
          ? [' · ', el('span', { i18n: 'report.signed_at', i18nArgs: { time: fmtTime(r.signed_ms) } })]
          : r.updated_ms
            ? ` · ${fmtTime(r.updated_ms)}`
            : '',
      ];
      return el(
        'li',
        { dataset: { version: String(r.version), status: r.status } },
        el('details', {}, el('summary', {}, line.flat(), ...del.map(deliveryBadge)), reportBlock(r, false)),
      );
    });
    const open = !this.isExpert && this.user.role !== 'admin' ? false : undefined;
    box.replaceChildren(
      el(
        'details',
        { class: 'version-list', open },
        el('summary', { i18n: title, i18nArgs: { n: list.length } }),
        el('ol', {}, items),
      ),
    );
  }

  /* ---------------- worklist actions ---------------- */

  async claim() {
    this.ui.claim.disabled = true;
    try {
      const r = await api(`/api/worklist/${this.enc}/claim`, { method: 'POST' });
      this.holder = null;
      toast(el('span', { i18n: 'report.toast.claimed' }), 'info');
      if (r?.worklist) this.setWorklist(r.worklist);
      else await this.refresh();
    } catch (e) {
      if (e.status === 409) {
        this.holder = errMessage(e);
        this.fail('report.fail.claim', e);
        await this.refresh();
      } else this.fail('report.fail.claim', e);
    } finally {
      this.ui.claim.disabled = false;
      this.render();
    }
  }

  startRenew() {
    this.stopRenew();
    this.lastRenew = Date.now();
    this.renewTimer = setInterval(() => this.renew(), RENEW_MS);
  }

  stopRenew() {
    clearInterval(this.renewTimer);
    this.renewTimer = 0;
  }

  async renew() {
    if (!this.claimedByMe()) return this.stopRenew();
    try {
      const r = await api(`/api/worklist/${this.enc}/renew`, { method: 'POST' });
      this.lastRenew = Date.now();
      if (r?.worklist) this.setWorklist(r.worklist);
    } catch (e) {
      this.fail('report.fail.renew', e);
      if (e.status === 409 || e.status === 403) await this.refresh();
    }
  }

  async release() {
    if (this.dirty) await this.save();
    this.ui.release.disabled = true;
    try {
      const r = await api(`/api/worklist/${this.enc}/release`, { method: 'POST' });
      toast(el('span', { i18n: 'report.toast.released' }), 'info');
      if (r?.worklist) this.setWorklist(r.worklist);
      else await this.refresh();
    } catch (e) {
      this.fail('report.fail.release', e);
    } finally {
      this.ui.release.disabled = false;
    }
  }

  async returnStudy() {
    const d = this.dialogs.ret;
    const reason = d.querySelector('textarea');
    reason.value = '';
    const ok = await confirmDialog(d);
    const text = reason.value.trim();
    if (!ok) return;
    if (!text) {
      toast(el('span', { i18n: 'report.toast.reason_needed' }), 'error');
      return;
    }
    if (this.dirty) await this.save();
    try {
      const r = await api(`/api/worklist/${this.enc}/return`, { method: 'POST', body: { reason: text } });
      toast(el('span', { i18n: 'report.toast.returned' }), 'info');
      if (r?.worklist) this.setWorklist(r.worklist);
      else await this.refresh();
    } catch (e) {
      this.fail('report.fail.return', e);
    }
  }

  /* ---------------- editor ---------------- */

  text() {
    return { findings: this.ui.findings.value, impression: this.ui.impression.value };
  }

  onInput() {
    this.dirty = true;
    this.stash();
    this.scheduleSave(AUTOSAVE_MS);
    this.showSaved();
  }

  stash() {
    if (!this.isExpert || !this.dirty) return;
    try {
      sessionStorage.setItem(this.storeKey, JSON.stringify({ ...this.text(), at: Date.now() }));
    } catch {
      /* storage full or disabled: the server copy is all there is */
    }
  }

  stashed() {
    try {
      const v = JSON.parse(sessionStorage.getItem(this.storeKey) || 'null');
      return v && typeof v.findings === 'string' && typeof v.impression === 'string' ? v : null;
    } catch {
      return null;
    }
  }

  unstash() {
    try {
      sessionStorage.removeItem(this.storeKey);
    } catch {
      /* ignore */
    }
  }

  scheduleSave(ms) {
    clearTimeout(this.saveTimer);
    if (!this.editable()) {
      this.showSaved();
      return;
    }
    this.saveTimer = setTimeout(() => this.save(), ms);
  }

  /** Autosave the draft; resolves when done (or failed, text kept). */
  async save() {
    clearTimeout(this.saveTimer);
    if (!this.dirty || !this.editable()) return;
    if (this.saving) {
      this.saveAgain = true;
      return this.saving;
    }
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    const sent = this.text();
    this.saving = (async () => {
      this.showSaved();
      try {
        const r = await api(`/api/studies/${this.enc}/report/draft`, { method: 'PUT', body: sent });
        this.retryCount = 0;
        this.reportSaved = Date.now();
        const now = this.text();
        if (now.findings === sent.findings && now.impression === sent.impression) {
          this.dirty = false;
          this.unstash();
        }
        if (r?.report) this.mergeVersion(r.report);
      } catch (e) {
        this.fail('report.fail.save', e);
        if (e.status === 409 || e.status === 403) {
          // The claim is gone: retrying will not help until it is claimed again.
          await this.refresh();
        } else {
          const wait = RETRY_MS[Math.min(this.retryCount, RETRY_MS.length - 1)];
          this.retryCount += 1;
          this.retryTimer = setTimeout(() => {
            this.retryTimer = 0;
            this.save();
          }, wait);
        }
      }
    })();
    try {
      await this.saving;
    } finally {
      this.saving = null;
      this.showSaved();
      this.onChange();
    }
    if (this.saveAgain) {
      this.saveAgain = false;
      if (this.dirty) await this.save();
    }
  }

  mergeVersion(rep) {
    const i = this.versions.findIndex((v) => v.version === rep.version);
    if (i >= 0) this.versions[i] = rep;
    else this.versions.unshift(rep);
    this.versions.sort((a, b) => b.version - a.version);
    this.renderVersions();
  }

  async applyTemplate() {
    const sel = this.ui.template;
    const tp = this.templates[Number(sel.value)];
    sel.value = '';
    if (!tp || !this.editable()) return;
    const cur = this.text();
    if (cur.findings.trim() || cur.impression.trim()) {
      const ok = await confirmDialog(this.dialogs.template, {
        text: [
          el('span', { i18n: 'report.template_text' }),
          el('span', { translate: 'no' }, tp.name),
          el('span', { i18n: 'report.template_text_end' }),
        ],
      });
      if (!ok) return;
    }
    this.ui.findings.value = tp.findings || '';
    this.ui.impression.value = tp.impression || '';
    this.onInput();
    this.ui.findings.focus();
  }

  startAmend() {
    const signed = this.latestSigned();
    if (!signed) return;
    this.amending = true;
    // Start from the newest text: a draft amendment if one was saved, else the signed text.
    const latest = this.versions[0];
    if (!this.dirty) {
      this.ui.findings.value = latest?.findings ?? signed.findings ?? '';
      this.ui.impression.value = latest?.impression ?? signed.impression ?? '';
    }
    this.render();
    this.ui.findings.focus();
  }

  stopAmend() {
    if (this.dirty) this.save();
    this.amending = false;
    this.render();
  }

  async sign() {
    const { findings, impression } = this.text();
    if (!findings.trim() && !impression.trim()) {
      toast(el('span', { i18n: 'report.toast.empty' }), 'error');
      return;
    }
    const next = (this.signedVersion || 0) + 1;
    const ok = await confirmDialog(this.dialogs.sign, {
      text: [el('span', { i18n: this.amending ? 'report.sign_text_amend' : 'report.sign_text' })],
      ok: next > 1 ? 'report.sign_amend' : 'report.sign_ok',
    });
    if (!ok) return;
    clearTimeout(this.saveTimer);
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    this.ui.sign.disabled = true;
    try {
      const r = await api(`/api/studies/${this.enc}/report/sign`, { method: 'POST', body: { findings, impression } });
      const now = this.text();
      if (now.findings === findings && now.impression === impression) {
        this.dirty = false;
        this.unstash();
      }
      this.amending = false;
      if (r?.report) this.mergeVersion(r.report);
      toast(el('span', { i18n: 'report.toast.signed', i18nArgs: { n: r?.report?.version ?? '' } }), 'info');
      this.stopRenew();
      if (this.worklist) this.worklist = { ...this.worklist, state: 'reported' };
      await this.loadVersions();
      await this.refresh();
    } catch (e) {
      this.fail('report.fail.sign', e);
    } finally {
      this.ui.sign.disabled = false;
      this.render();
    }
  }
}

function reportBlock(r, withMeta) {
  return el(
    'div',
    { class: 'report-block' },
    withMeta
      ? el(
          'p',
          { class: 'muted' },
          el('span', { i18n: 'report.signed_version', i18nArgs: { n: r.version } }),
          ' ',
          el('span', { translate: 'no' }, r.author_name || r.author || '?'),
          r.signed_ms ? ` · ${fmtTime(r.signed_ms)}` : '',
        )
      : null,
    el('h3', { i18n: 'report.findings' }),
    el('p', { class: 'report-text', translate: 'no' }, r.findings || '—'),
    el('h3', { i18n: 'report.impression' }),
    el('p', { class: 'report-text', translate: 'no' }, r.impression || '—'),
  );
}

/** A delivery's state: the PACS target and the transport's error are data (technical, untranslated). */
function deliveryBadge(d) {
  const target = el('span', { translate: 'no' }, d.target);
  const parts =
    d.state === 'sent'
      ? [el('span', { i18n: 'report.delivery.sent' }), ' ', target, d.sent_ms ? ' ' + fmtTime(d.sent_ms) : '']
      : d.state === 'failing'
        ? [
            el('span', { i18n: 'report.delivery.failing' }),
            ' ',
            target,
            ' (',
            el('span', { i18n: 'report.delivery.attempts', i18nArgs: { n: d.attempts } }),
            d.last_error ? [': ', el('span', { translate: 'no' }, d.last_error)] : '',
            ')',
          ]
        : [el('span', { i18n: 'report.delivery.pending' }), ' ', target];
  return el('span', { class: `badge st-${d.state}`, dataset: { state: d.state } }, parts.flat());
}
