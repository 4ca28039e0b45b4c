// The reading side panel: worklist claim (experts), the report editor with
// autosave, signing and amendments, the version list with delivery state;
// the read-only report for clinic doctors and admins.
//
// Nothing typed is ever lost: every keystroke is copied to sessionStorage
// (keyed by study) until the server has the same text, a failed autosave is
// retried with back-off, and a reload restores the unsaved text.
//
// PHI rule: report text and patient data are never logged.

import { api, el, fmtTime, toast } from './app-common.js';

/** Template languages, each named in itself. */
const LANGUAGE_NAMES = { en: 'English', zh: '中文' };

const AUTOSAVE_MS = 2000;
const RENEW_MS = 5 * 60 * 1000;
const RETRY_MS = [5000, 10000, 20000, 40000, 60000];

const STATE_TEXT = {
  new: 'New — waiting for a reader',
  claimed: 'Being read',
  reported: 'Reported',
  delivered: 'Reported and delivered',
  returned: 'Returned for more images',
  cancelled: 'Cancelled',
};

const hhmm = (ms) => {
  const d = new Date(ms);
  return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
};

/** An in-page confirmation (WebDriver can click it; window.confirm it cannot). */
export function confirmDialog(dialog, { title, text, ok } = {}) {
  return new Promise((resolve) => {
    if (title) dialog.querySelector('[data-title]').textContent = title;
    if (text !== undefined) dialog.querySelector('[data-text]').textContent = text;
    if (ok) dialog.querySelector('[data-ok]').textContent = ok;
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
   * @param {(ctx: string, err: any) => void} o.fail reports an error (toast + test hook)
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
    this.holder = null; // who holds the claim, from a 409
    this.isExpert = o.user.role === 'expert';
    this.build();
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
      u.claim = el('button', { type: 'button', class: 'primary', dataset: { test: 'claim' } }, 'Claim');
      u.release = el('button', { type: 'button', dataset: { test: 'release' } }, 'Release');
      u.ret = el('button', { type: 'button', dataset: { test: 'return' } }, 'Return for more images');
      u.claim.addEventListener('click', () => this.claim());
      u.release.addEventListener('click', () => this.release());
      u.ret.addEventListener('click', () => this.returnStudy());
      u.history = el('ol', { class: 'history-list' });
      const hist = el('details', { class: 'history' }, el('summary', {}, 'History'), u.history);
      hist.addEventListener('toggle', () => hist.open && this.loadHistory());
      const actions = this.isExpert ? el('div', { class: 'row-actions' }, u.claim, u.release, u.ret) : null;
      this.root.append(el('section', { class: 'panel', 'aria-labelledby': 'wl-h' }, el('h2', { id: 'wl-h' }, 'Worklist'), u.state, actions, hist));
    }

    u.reportSection = el('section', { class: 'panel report', 'aria-labelledby': 'rep-h' });
    u.saved = el('span', { class: 'saved', role: 'status', 'aria-live': 'polite', dataset: { test: 'report-saved' } });
    u.reportSection.append(el('h2', { id: 'rep-h' }, 'Report ', u.saved));
    if (this.isExpert) {
      u.template = el('select', { dataset: { test: 'template' }, 'aria-label': 'Report template' }, el('option', { value: '' }, 'Template…'));
      u.template.addEventListener('change', () => this.applyTemplate());
      u.findings = el('textarea', { id: 'findings', rows: 8, dataset: { test: 'findings' }, spellcheck: 'true' });
      u.impression = el('textarea', { id: 'impression', rows: 3, dataset: { test: 'impression' }, spellcheck: 'true' });
      for (const t of [u.findings, u.impression]) {
        t.addEventListener('input', () => this.onInput());
        t.addEventListener('blur', () => this.dirty && this.save());
      }
      u.sign = el('button', { type: 'button', class: 'primary', dataset: { test: 'sign' } }, 'Sign report');
      u.amend = el('button', { type: 'button', dataset: { test: 'amend' } }, 'Amend report');
      u.cancelAmend = el('button', { type: 'button', dataset: { test: 'amend-cancel' } }, 'Stop amending');
      u.sign.addEventListener('click', () => this.sign());
      u.amend.addEventListener('click', () => this.startAmend());
      u.cancelAmend.addEventListener('click', () => this.stopAmend());
      u.hint = el('p', { class: 'hint', role: 'note' });
      u.reportSection.append(
        (u.templateField = el('label', { class: 'field' }, 'Template', u.template)),
        el('label', { class: 'field', for: 'findings' }, 'Findings'),
        u.findings,
        el('label', { class: 'field', for: 'impression' }, 'Impression'),
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
              { class: 'button', href: `/requests?new=1&study=${encodeURIComponent(this.uid)}`, dataset: { test: 'request-consult' } },
              'Request consultation',
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
      this.fail('Loading the report versions', e);
    }
  }

  async loadTemplates() {
    const mod = encodeURIComponent(this.modality || '');
    try {
      const r = await api(`/api/report-templates?modality=${mod}`);
      this.templates = Array.isArray(r?.templates) ? r.templates : [];
    } catch (e) {
      this.fail('Loading the report templates', e);
    }
    // The page language's templates first, each language in its own group
    // (named in that language, so the label needs no translation).
    const page = (document.documentElement.lang || navigator.language || 'en').toLowerCase().split('-')[0];
    const langs = [...new Set(this.templates.map((t) => t.language || 'en'))];
    langs.sort((a, b) => (b === page) - (a === page));
    const sel = this.ui.template;
    sel.replaceChildren(
      el('option', { value: '' }, this.templates.length ? 'Template…' : 'No templates'),
      ...langs.map((lang) =>
        el(
          'optgroup',
          { label: LANGUAGE_NAMES[lang] || lang, lang, dataset: { language: lang } },
          ...this.templates.flatMap((t, i) =>
            (t.language || 'en') === lang ? [el('option', { value: String(i), lang }, t.name)] : [],
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
      toast('Restored report text that was not saved yet.', 'info');
      if (this.editable()) this.scheduleSave(500);
    }
  }

  async loadHistory() {
    try {
      const r = await api(`/api/worklist/${this.enc}/history`);
      const rows = Array.isArray(r?.transitions) ? r.transitions : [];
      this.ui.history.replaceChildren(
        ...rows.map((t) =>
          el('li', {}, `${fmtTime(t.at_ms)} · ${t.from || '—'} → ${t.to} · ${t.actor || ''}`, t.detail ? el('div', { class: 'muted' }, t.detail) : null),
        ),
      );
      if (!rows.length) this.ui.history.replaceChildren(el('li', { class: 'muted' }, 'No transitions yet'));
    } catch (e) {
      this.fail('Loading the worklist history', e);
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
      this.fail('Refreshing the worklist state', e);
    }
  }

  /* ---------------- rendering ---------------- */

  render() {
    const u = this.ui;
    const wl = this.worklist;
    if (u.state) {
      const parts = [];
      if (!wl) parts.push('Not on the worklist (study still arriving?)');
      else {
        parts.push(el('span', { class: `badge st-${wl.state}` }, wl.state));
        parts.push(' ', STATE_TEXT[wl.state] || '');
        if (wl.state === 'claimed') {
          const who = wl.claimed_by === this.user.username ? 'you' : wl.claimed_by;
          parts.push(el('br'), `Claimed by ${who}`);
          if (wl.lease_until_ms) parts.push(` until ${hhmm(wl.lease_until_ms)}`);
        }
      }
      if (this.holder) parts.push(el('br'), el('span', { class: 'warn', dataset: { test: 'claim-holder' } }, this.holder));
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
      u.sign.textContent = this.amending && !mine ? 'Sign amendment' : 'Sign report';
      u.hint.textContent = edit
        ? ''
        : reported
          ? canAmend
            ? 'Signed. Use "Amend report" to issue a corrected version.'
            : 'Signed by another reader.'
          : mine
            ? ''
            : 'Claim the study to write the report.';
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
    if (text !== undefined) s.textContent = text;
    else if (this.saving) s.textContent = 'saving…';
    else if (this.dirty && this.retryTimer) s.textContent = 'not saved — will retry';
    else if (this.dirty) s.textContent = this.editable() ? 'unsaved changes' : 'kept in this browser';
    else if (this.reportSaved) s.textContent = `saved ${hhmm(this.reportSaved)}`;
    else s.textContent = '';
    s.classList.toggle('warn', this.dirty && !this.saving);
  }

  renderReadOnly() {
    const v = this.ui.view;
    const signed = this.versions.filter((r) => r.status === 'signed');
    const latest = signed[0];
    if (!latest) {
      v.replaceChildren(el('p', { class: 'muted' }, 'No signed report yet.'));
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
    const title = this.isExpert || this.user.role === 'admin' ? `Versions (${list.length})` : `Older versions (${list.length})`;
    const items = list.map((r) => {
      const del = this.delivery.filter((d) => d.version === r.version);
      // A signed version with a newer signed one after it was amended (it stays on record).
      const newer = this.versions.filter((v) => v.status === 'signed' && v.version > r.version).pop();
      const amendedBy = r.amended_by ?? newer?.version;
      const status = r.status === 'signed' && amendedBy ? `signed, amended by v${amendedBy}` : r.status;
      const line = [
        `v${r.version} · ${status}`,
        r.author_name || r.author ? ` · ${r.author_name || r.author}` : '',
        r.signed_ms ? ` · signed ${fmtTime(r.signed_ms)}` : r.updated_ms ? ` · ${fmtTime(r.updated_ms)}` : '',
      ].join('');
      return el(
        'li',
        { dataset: { version: String(r.version), status: r.status } },
        el('details', {}, el('summary', {}, line, ...del.map(deliveryBadge)), reportBlock(r, false)),
      );
    });
    const open = !this.isExpert && this.user.role !== 'admin' ? false : undefined;
    box.replaceChildren(el('details', { class: 'version-list', open }, el('summary', {}, title), el('ol', {}, items)));
  }

  /* ---------------- worklist actions ---------------- */

  async claim() {
    this.ui.claim.disabled = true;
    try {
      const r = await api(`/api/worklist/${this.enc}/claim`, { method: 'POST' });
      this.holder = null;
      toast('Study claimed.', 'info');
      if (r?.worklist) this.setWorklist(r.worklist);
      else await this.refresh();
    } catch (e) {
      if (e.status === 409) {
        this.holder = e.message;
        this.fail('Claim', e);
        await this.refresh();
      } else this.fail('Claim', e);
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
      this.fail('Renewing the claim', e);
      if (e.status === 409 || e.status === 403) await this.refresh();
    }
  }

  async release() {
    if (this.dirty) await this.save();
    this.ui.release.disabled = true;
    try {
      const r = await api(`/api/worklist/${this.enc}/release`, { method: 'POST' });
      toast('Claim released.', 'info');
      if (r?.worklist) this.setWorklist(r.worklist);
      else await this.refresh();
    } catch (e) {
      this.fail('Release', e);
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
      toast('A reason is needed to return the study.', 'error');
      return;
    }
    if (this.dirty) await this.save();
    try {
      const r = await api(`/api/worklist/${this.enc}/return`, { method: 'POST', body: { reason: text } });
      toast('Returned to the clinic for more images.', 'info');
      if (r?.worklist) this.setWorklist(r.worklist);
      else await this.refresh();
    } catch (e) {
      this.fail('Return for more images', e);
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
        this.fail('Saving the draft (your text is kept)', e);
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
    const t = this.templates[Number(sel.value)];
    sel.value = '';
    if (!t || !this.editable()) return;
    const cur = this.text();
    if (cur.findings.trim() || cur.impression.trim()) {
      const ok = await confirmDialog(this.dialogs.template, {
        text: `Replace the current findings and impression with the template "${t.name}"?`,
      });
      if (!ok) return;
    }
    this.ui.findings.value = t.findings || '';
    this.ui.impression.value = t.impression || '';
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
      toast('The report is empty.', 'error');
      return;
    }
    const next = (this.signedVersion || 0) + 1;
    const ok = await confirmDialog(this.dialogs.sign, {
      text: this.amending
        ? 'Sign this amendment? It becomes the valid report and replaces the earlier signed version, which stays on record.'
        : 'Sign this report? It will be sent to the clinic and cannot be edited afterwards (only amended).',
      ok: next > 1 ? 'Sign amendment' : 'Sign',
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
      toast(`Report version ${r?.report?.version ?? ''} signed.`, 'info');
      this.stopRenew();
      if (this.worklist) this.worklist = { ...this.worklist, state: 'reported' };
      await this.loadVersions();
      await this.refresh();
    } catch (e) {
      this.fail('Signing (your text is kept)', e);
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
          `Version ${r.version} · signed by ${r.author_name || r.author || '?'}${r.signed_ms ? ' · ' + fmtTime(r.signed_ms) : ''}`,
        )
      : null,
    el('h3', {}, 'Findings'),
    el('p', { class: 'report-text' }, r.findings || '—'),
    el('h3', {}, 'Impression'),
    el('p', { class: 'report-text' }, r.impression || '—'),
  );
}

function deliveryBadge(d) {
  const text =
    d.state === 'sent'
      ? `sent to ${d.target}${d.sent_ms ? ' ' + fmtTime(d.sent_ms) : ''}`
      : d.state === 'failing'
        ? `failing to ${d.target} (${d.attempts} attempts${d.last_error ? ': ' + d.last_error : ''})`
        : `pending to ${d.target}`;
  return el('span', { class: `badge st-${d.state}`, title: text }, text);
}
