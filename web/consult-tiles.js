// Video tiles: one per participant (camera + mic), plus one per active
// screen share. Names are always set through textContent.

import { el, initials } from './consult-util.js';
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
      this.local = this.makeTile('me', name || 'You', 'self');
      this.local.el.classList.add('self');
      this.grid.prepend(this.local.el);
    }
    this.local.video.srcObject = stream;
    this.local.name.textContent = `${name || 'You'} (you)`;
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
    if (this.local) this.setScreen(this.local, stream ? stream.getVideoTracks()[0] : null, 'Your screen');
  }

  /* ---- remote participants ---- */

  upsert(p) {
    let tile = this.tiles.get(p.id);
    if (!tile) {
      tile = this.makeTile(p.id, p.name, p.role);
      this.tiles.set(p.id, tile);
      this.grid.append(tile.el);
    }
    tile.name.textContent = p.name || 'Participant';
    tile.role.textContent = p.role === 'clinic' ? 'clinic' : p.role === 'expert' ? 'expert' : '';
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
      this.setScreen(tile, track, `${tile.name.textContent} — screen`);
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
    const avatar = el('div', { class: 'avatar', 'aria-hidden': 'true', text: initials(name) });
    const nameEl = el('span', { class: 'name', text: name || 'Participant' });
    const roleEl = el('span', { class: 'role', text: role === 'self' ? '' : role || '' });
    const micOff = el('span', { class: 'badge mic-off', role: 'img', 'aria-label': 'microphone muted', title: 'Microphone muted' });
    micOff.innerHTML = ICONS.micOff; // static markup, no user data
    const camOff = el('span', { class: 'badge cam-off', role: 'img', 'aria-label': 'camera off', title: 'Camera off' });
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

  setScreen(tile, track, label) {
    if (tile.screen && (!track || tile.screen.track !== track)) {
      tile.screen.el.remove();
      tile.screen = null;
    }
    if (!track || tile.screen) return;
    const video = el('video', { autoplay: true, playsinline: true, muted: true });
    video.muted = true;
    setSingleTrack(video, track);
    const fig = el('figure', { class: 'tile screen', 'data-pid': tile.id }, video, el('figcaption', {}, el('span', { class: 'name', text: label || 'Screen' })));
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
