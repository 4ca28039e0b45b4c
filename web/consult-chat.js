// Chat panel over the `room` data channel: {"t":"chat","text"} out,
// {"t":"chat","text","from","ts"} in.

import { clockTime, el, setRich, utf8Length } from './consult-util.js';

export const CHAT_MAX_CHARS = 2000;
// Data-channel messages are limited to 4 KiB; leave room for the JSON wrapper.
const CHAT_MAX_BYTES = 4096 - 64;
const MAX_SHOWN = 500;

/**
 * Split a long text into pieces that each fit the protocol limits (2000
 * characters and 4 KiB of JSON). Chinese text is 3 bytes a character in
 * UTF-8, so the byte limit bites first. Splits on code points, never inside
 * a surrogate pair.
 */
export function chunkChatText(text) {
  const chunks = [];
  let cur = '';
  let chars = 0;
  let bytes = 0;
  for (const ch of text) {
    const b = utf8Length(JSON.stringify(ch)) - 2; // escaped size inside the JSON string
    if (chars + 1 > CHAT_MAX_CHARS || bytes + b > CHAT_MAX_BYTES) {
      chunks.push(cur);
      cur = '';
      chars = 0;
      bytes = 0;
    }
    cur += ch;
    chars += 1;
    bytes += b;
  }
  if (cur) chunks.push(cur);
  return chunks;
}

export class ChatPanel {
  /**
   * @param {HTMLElement} root the chat panel
   * @param {{submit(text): boolean}} hooks
   */
  constructor(root, hooks) {
    this.hooks = hooks;
    this.list = root.querySelector('[data-chat-list]');
    this.form = root.querySelector('[data-chat-form]');
    this.input = root.querySelector('[data-chat-input]');
    this.counter = root.querySelector('[data-chat-count]');
    this.form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.submit();
    });
    // Enter sends, Shift+Enter makes a new line (and IME composition is left alone).
    this.input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        this.submit();
      }
    });
    this.input.addEventListener('input', () => this.updateCounter());
  }

  submit() {
    const text = this.input.value;
    if (!text.trim()) return;
    // Keep the text in the box if it could not be taken (not in the room).
    if (this.hooks.submit(text) === false) return;
    this.input.value = '';
    this.updateCounter();
  }

  updateCounter() {
    const n = Array.from(this.input.value).length;
    this.counter.textContent = n > CHAT_MAX_CHARS * 0.8 ? `${n}/${CHAT_MAX_CHARS}` : ''; // digits only
  }

  /** Append one message. `entry`: {name, text, ts, mine, pending} */
  add(entry) {
    const item = el(
      'li',
      { class: entry.mine ? 'mine' : '' },
      entry.mine || !entry.name
        ? el('span', { class: 'who', i18n: entry.mine ? 'consult.you' : 'consult.participant' })
        : el('span', { class: 'who', translate: 'no', text: entry.name }),
      el('time', { datetime: new Date(entry.ts).toISOString(), text: clockTime(entry.ts) }),
      el('p', { translate: 'no', text: entry.text }),
    );
    if (entry.pending) item.classList.add('pending');
    const atBottom = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
    this.list.append(item);
    while (this.list.children.length > MAX_SHOWN) this.list.firstElementChild.remove();
    if (atBottom || entry.mine) this.list.scrollTop = this.list.scrollHeight;
    return item;
  }

  /** A system line (someone joined/left): the message `key` with the participant's `name`. */
  note(key, name) {
    this.list.append(setRich(el('li', { class: 'note' }), key, { name }));
    this.list.scrollTop = this.list.scrollHeight;
  }
}
