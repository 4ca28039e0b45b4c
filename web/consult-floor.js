// The floor of a teaching broadcast (PROTOCOL.md, "Broadcast floor"):
// presenters go on and off air and work the queue of raised hands and
// questions; viewers raise a hand, ask, and speak when they are let.
// This module only renders and sends; what speaking does to the media
// (opening the microphone, publishing it) is the page's (`hooks`).

import { clockTime, el, setMsg } from './consult-util.js';

export const QUESTION_MAX_CHARS = 500;

const STATE_KEYS = { open: 'consult.floor.q.open', answered: 'consult.floor.q.answered', dismissed: 'consult.floor.q.dismissed' };

export class FloorPanel {
  /**
   * @param {HTMLElement} root `#panel-floor`
   * @param {{send(msg): boolean, toast(key, args): void, stopSpeaking(): void}} hooks
   */
  constructor(root, hooks) {
    this.root = root;
    this.hooks = hooks;
    this.live = false;
    this.hand = false;
    this.speaking = null; // {video} while we have the floor
    this.queue = { hands: [], hands_total: 0, questions: [], speakers: [] };
    this.mine = new Map(); // question id -> {text, state}
    const $ = (s) => root.querySelector(s);
    this.ui = {
      liveToggle: $('#live-toggle'),
      speakers: $('#floor-speakers'),
      hands: $('#floor-hands'),
      questions: $('#floor-questions'),
      handToggle: $('#hand-toggle'),
      speakStop: $('#speak-stop'),
      form: $('#question-form'),
      input: $('#question-input'),
      myQuestions: $('#my-questions'),
    };
    this.ui.liveToggle.addEventListener('click', () => this.hooks.send({ type: 'live', live: !this.live }));
    this.ui.handToggle.addEventListener('click', () => this.hooks.send({ type: 'hand', raised: !this.hand }));
    this.ui.speakStop.addEventListener('click', () => this.hooks.stopSpeaking());
    this.ui.form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.ask(this.ui.input.value);
    });
    this.render();
  }

  /** Sends a question; false (and a toast) if it cannot go. */
  ask(text) {
    const t = String(text ?? '').trim();
    if (!t) return false;
    if ([...t].length > QUESTION_MAX_CHARS) {
      this.hooks.toast('consult.floor.too_long', { max: QUESTION_MAX_CHARS });
      return false;
    }
    if (!this.hooks.send({ type: 'question', text: t })) {
      this.hooks.toast('consult.floor.not_sent');
      return false;
    }
    this.ui.input.value = '';
    return true;
  }

  /** After a (re)join: the server resends our open questions. */
  reset(live) {
    this.live = !!live;
    this.hand = false;
    this.mine.clear();
    this.render();
  }

  onLive(live) {
    this.live = !!live;
    if (!live) this.hand = false;
    this.render();
  }

  onHand(raised) {
    this.hand = !!raised;
    this.render();
  }

  onQueue(msg) {
    const list = (v) => (Array.isArray(v) ? v : []);
    this.queue = {
      hands: list(msg.hands),
      hands_total: Number.isFinite(msg.hands_total) ? msg.hands_total : list(msg.hands).length,
      questions: list(msg.questions),
      speakers: list(msg.speakers),
    };
    this.render();
  }

  onQuestionState(msg) {
    if (!Number.isFinite(msg.id)) return;
    this.mine.set(msg.id, { text: String(msg.text ?? ''), state: String(msg.state ?? 'open') });
    // Keep the list short on a small screen: the last 20 questions.
    while (this.mine.size > 20) this.mine.delete(this.mine.keys().next().value);
    this.render();
  }

  setSpeaking(grant) {
    this.speaking = grant;
    this.render();
  }

  /** Waiting items for the tab badge: hands and questions for a presenter. */
  get waiting() {
    return this.queue.hands_total + this.queue.questions.length;
  }

  render() {
    const u = this.ui;
    setMsg(u.liveToggle, this.live ? 'consult.floor.stop' : 'consult.floor.start');
    u.liveToggle.classList.toggle('primary', !this.live);
    u.liveToggle.setAttribute('aria-pressed', String(this.live));
    setMsg(u.handToggle, this.hand ? 'consult.floor.lower_hand' : 'consult.floor.raise');
    u.handToggle.setAttribute('aria-pressed', String(this.hand));
    u.handToggle.disabled = !this.live || !!this.speaking;
    u.speakStop.hidden = !this.speaking;
    const q = this.queue;
    // A panel button (its label a message key) that sends one floor message.
    const button = (label, msg, primary = false) =>
      el('button', { type: 'button', class: primary ? 'primary' : undefined, i18n: label, onclick: () => this.hooks.send(msg) });
    // A viewer's name: data, or "Viewer" when it has none.
    const who = (name) =>
      name ? el('span', { class: 'who', translate: 'no' }, name) : el('span', { class: 'who', i18n: 'consult.floor.viewer' });
    fill(
      u.speakers,
      q.speakers.map((s) =>
        el(
          'li',
          { 'data-id': s.id },
          who(s.name),
          s.video ? el('span', { class: 'state', i18n: 'consult.floor.with_video' }) : null,
          button('consult.floor.end', { type: 'demote', participant: s.id }),
        ),
      ),
      'consult.floor.no_speakers',
    );
    fill(
      u.hands,
      q.hands.map((h) =>
        el(
          'li',
          { 'data-id': h.id },
          who(h.name),
          el('time', { class: 'state' }, clockTime(h.since)),
          button('consult.floor.let_speak', { type: 'promote', participant: h.id, video: false }, true),
          button('consult.floor.let_speak_video', { type: 'promote', participant: h.id, video: true }),
          button('consult.floor.lower', { type: 'hand', raised: false, participant: h.id }),
        ),
      ),
      'consult.floor.no_hands',
    );
    const more = q.hands_total - q.hands.length;
    if (more > 0) u.hands.append(el('li', { class: 'empty', i18n: 'consult.floor.more', i18nArgs: { n: more } }));
    fill(
      u.questions,
      q.questions.map((x) =>
        el(
          'li',
          { 'data-id': String(x.id) },
          who(x.name),
          el('time', { class: 'state' }, clockTime(x.ts)),
          el('p', { class: 'text', translate: 'no' }, x.text),
          button('consult.floor.answered', { type: 'question_done', id: x.id, answered: true }, true),
          button('consult.floor.dismiss', { type: 'question_done', id: x.id, answered: false }),
        ),
      ),
      'consult.floor.no_questions',
    );
    this.root.querySelector('#speakers-count').textContent = q.speakers.length ? `(${q.speakers.length})` : '';
    this.root.querySelector('#hands-count').textContent = q.hands_total ? `(${q.hands_total})` : '';
    this.root.querySelector('#questions-count').textContent = q.questions.length ? `(${q.questions.length})` : '';
    fill(
      u.myQuestions,
      [...this.mine].reverse().map(([id, m]) =>
        el(
          'li',
          { 'data-id': String(id), 'data-state': m.state },
          el('p', { class: 'text', translate: 'no' }, m.text),
          el('span', { class: 'state', i18n: STATE_KEYS[m.state] || STATE_KEYS.open }),
        ),
      ),
      'consult.floor.no_mine',
    );
  }
}

function fill(list, items, emptyKey) {
  list.replaceChildren(...(items.length ? items : [el('li', { class: 'empty', i18n: emptyKey })]));
}
