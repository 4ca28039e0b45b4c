// Video tiles: one per participant (camera + mic), plus one per active
// screen share. Names are always set through textContent, marked
// translate="no" (data); the words around them are message keys.

import { el, initials, setData, setMsg, setRich } from './consult-util.js';
import { ICONS } from './consult-icons.js';

export class Tiles {
  /**
   * @param {HTMLElement} grid the container of the tiles
   * @param {{onAudioBlocked(): void}} hooks
   */
  constructor(grid, hooks) {
    this.grid = grid;
    this.hooks = hooks;
    /** participant id -> tile record */
    this.tiles = new Map();
    this.local = null;
  }

  /* ---- self view ---- */

  setLocal(stream, name) {
    if (!this.local) {
      this.local = this.makeTile('me', name, 'self');
      this.local.el.classList.add('self');
      this.grid.prepend(this.local.el);
    }
    this.local.video.srcObject = stream;
    if (name) setRich(this.local.name, 'consult.tile.self', { name });
    else setMsg(this.local.name, 'consult.you');
    this.local.displayName = name;
    this.local.hasVideo = stream.getVideoTracks().length > 0;
    this.refresh(this.local);
  }

  removeLocal() {
    if (!this.local) return;
    this.local.video.srcObject = null;
    this.local.el.remove();
    this.local = null;
  }

  setLocalMuted(source, muted) {
    if (!this.local) return;
    this.local.muted[source] = muted;
    this.refresh(this.local);
  }

  setLocalScreen(stream) {
    if (this.local) this.setScreen(this.local, stream ? stream.getVideoTracks()[0] : null, null);
  }

  /* ---- remote participants ---- */

  upsert(p) {
    let tile = this.tiles.get(p.id);
    if (!tile) {
      tile = this.makeTile(p.id, p.name, p.role);
      this.tiles.set(p.id, tile);
      this.grid.append(tile.el);
    }
    setData(tile.name, p.name, 'consult.participant');
    tile.displayName = p.name;
    setMsg(tile.role, p.role === 'clinic' ? 'common.role.clinic' : p.role === 'expert' ? 'common.role.expert' : null);
    tile.avatar.textContent = initials(p.name);
    for (const s of Array.isArray(p.sources) ? p.sources : []) {
      if (s && typeof s.source === 'string') tile.muted[s.source] = !!s.muted;
    }
    this.refresh(tile);
    return tile;
  }

  remove(id) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    this.setScreen(tile, null);
    tile.audio.srcObject = null;
    tile.video.srcObject = null;
    tile.el.remove();
    this.tiles.delete(id);
  }

  setMuted(id, source, muted) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    tile.muted[source] = muted;
    this.refresh(tile);
  }

  /** Show a received track on its participant's tile. */
  attach({ participant, source, track }) {
    const tile = this.tiles.get(participant) || this.upsert({ id: participant, name: '…', role: '', sources: [] });
    if (source === 'screen') {
      this.setScreen(tile, track, tile.displayName || '');
    } else if (track.kind === 'audio') {
      setSingleTrack(tile.audio, track);
      this.play(tile.audio);
    } else {
      setSingleTrack(tile.video, track);
      tile.hasVideo = true;
      tile.videoTrack = track;
      // A paused (audio_only) or stalled video shows the avatar instead of a frozen frame.
      track.onmute = () => this.refresh(tile);
      track.onunmute = () => this.refresh(tile);
      this.refresh(tile);
    }
  }

  /** Detach every remote track that is not in `list` (after a sub renegotiation). */
  settle(list) {
    const keep = new Set(list.map((i) => i.track.id));
    for (const tile of this.tiles.values()) {
      if (tile.audio.srcObject && !hasAny(tile.audio.srcObject, keep)) tile.audio.srcObject = null;
      if (tile.video.srcObject && !hasAny(tile.video.srcObject, keep)) {
        tile.video.srcObject = null;
        tile.hasVideo = false;
        tile.videoTrack = null;
      }
      if (tile.screen && !keep.has(tile.screen.track.id)) this.setScreen(tile, null);
      this.refresh(tile);
    }
    for (const info of list) this.attach(info);
  }

  clearRemote() {
    for (const id of [...this.tiles.keys()]) this.remove(id);
  }

  /* ---- internals ---- */

  makeTile(id, name, role) {
    const video = el('video', { autoplay: true, playsinline: true, muted: true, 'aria-hidden': 'true' });
    video.muted = true; // the attribute alone does not mute in every browser
    const audio = el('audio', { autoplay: true });
    // Initials are the name's: data.
    const avatar = el('div', { class: 'avatar', 'aria-hidden': 'true', translate: 'no', text: initials(name) });
    const nameEl = setData(el('span', { class: 'name' }), name, id === 'me' ? 'consult.you' : 'consult.participant');
    const roleEl = el('span', { class: 'role' });
    const micOff = el('span', { class: 'badge mic-off', role: 'img', i18nAriaLabel: 'consult.tile.mic_muted', i18nTitle: 'consult.tile.mic_muted' });
    micOff.innerHTML = ICONS.micOff; // static markup, no user data
    const camOff = el('span', { class: 'badge cam-off', role: 'img', i18nAriaLabel: 'consult.camera_off', i18nTitle: 'consult.camera_off' });
    camOff.innerHTML = ICONS.camOff;
    const caption = el('figcaption', {}, nameEl, roleEl, micOff, camOff);
    const fig = el('figure', { class: 'tile', 'data-pid': id }, video, avatar, caption, audio);
    return { id, el: fig, video, audio, avatar, name: nameEl, role: roleEl, micOff, camOff, muted: {}, hasVideo: false, screen: null };
  }

  /** Show or hide the mute badges and the avatar. */
  refresh(tile) {
    tile.micOff.hidden = !tile.muted.mic;
    tile.camOff.hidden = !tile.muted.camera;
    const stalled = tile.videoTrack ? tile.videoTrack.muted : false;
    const showVideo = tile.hasVideo && !tile.muted.camera && !stalled;
    tile.el.classList.toggle('no-video', !showVideo);
  }

  /** A screen share beside `tile`, captioned "{name} — screen" (`name` null: our own screen). */
  setScreen(tile, track, name) {
    if (tile.screen && (!track || tile.screen.track !== track)) {
      tile.screen.el.remove();
      tile.screen = null;
    }
    if (!track || tile.screen) return;
    const video = el('video', { autoplay: true, playsinline: true, muted: true });
    video.muted = true;
    setSingleTrack(video, track);
    const caption = el('span', { class: 'name' });
    if (name === null) setMsg(caption, 'consult.tile.my_screen');
    else if (name) setRich(caption, 'consult.tile.screen_of', { name });
    else setMsg(caption, 'consult.tile.screen');
    const fig = el('figure', { class: 'tile screen', 'data-pid': tile.id }, video, el('figcaption', {}, caption));
    tile.el.after(fig);
    tile.screen = { el: fig, track };
  }

  play(media) {
    const p = media.play?.();
    if (p && typeof p.catch === 'function') {
      p.catch((err) => {
        if (err && err.name === 'NotAllowedError') this.hooks.onAudioBlocked();
      });
    }
  }

  /** After a user gesture: retry every remote audio element. */
  resumeAudio() {
    for (const tile of this.tiles.values()) if (tile.audio.srcObject) this.play(tile.audio);
  }
}

function setSingleTrack(media, track) {
  const cur = media.srcObject;
  if (cur && cur.getTracks().length === 1 && cur.getTracks()[0] === track) return;
  media.srcObject = new MediaStream([track]);
}

function hasAny(stream, ids) {
  return stream.getTracks().some((t) => ids.has(t.id));
}
