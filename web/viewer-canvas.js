// The image canvas: drawing with zoom and pan, an instant approximate
// window/level on the image already shown, pointer tools (scroll, W/L,
// zoom, pan, length, angle), pinch on touch screens, and the measurements
// of the image on screen.
//
// Coordinates: measurements live in *image space* (the instance's columns x
// rows), so a preview (<= 1024 px) and a full-size render of the same slice
// are interchangeable underneath them.

import { t } from './i18n.js';

const DRAG_SLOP = 4; // px before a press becomes a drag
const SCROLL_PX = 8; // px of drag per image with the scroll tool
const MIN_ZOOM = 0.1;
const MAX_ZOOM = 40;

export const TOOLS = ['scroll', 'wl', 'zoom', 'pan', 'length', 'angle'];

const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

/**
 * A lookup table re-mapping 8-bit grey levels rendered with window `src`
 * to what window `dst` would give. Exact inside the source window; values
 * the source clipped stay clipped until the server's render arrives.
 */
export function windowLut(src, dst, invert = false) {
  const lut = new Uint8ClampedArray(256);
  for (let v = 0; v < 256; v += 1) {
    const s = v / 255 - 0.5;
    const x = invert ? src.wc - s * src.ww : src.wc + s * src.ww;
    let t = (x - dst.wc) / Math.max(1, dst.ww) + 0.5;
    if (invert) t = 1 - t;
    lut[v] = Math.round(t * 255);
  }
  return lut;
}

export class ImageView {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {object} hooks
   * @param {(steps: number) => void} hooks.onScroll
   * @param {(phase: 'start'|'move'|'end', dx: number, dy: number) => void} hooks.onWindowDrag
   * @param {() => void} hooks.onViewChange zoom or pan changed
   * @param {() => void} hooks.onMeasure a measurement was added or removed
   */
  constructor(canvas, hooks) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.hooks = hooks;
    this.tool = 'scroll';
    this.zoom = 1; // relative to "fit"
    this.pan = { x: 0, y: 0 }; // CSS px offset of the image centre from the canvas centre
    this.img = null; // {bitmap, key, space:{w,h}, srcWin, dstWin, invert}
    this.measures = []; // the current image's list (owned by the page)
    this.spacing = null; // {row, col, unit}
    this.pending = null; // measurement being placed
    this.pointers = new Map(); // active pointers (for pinch)
    this.drag = null;
    this.pinch = null;
    this.wheelAcc = 0;
    this.mapper = null; // {key, canvas, ctx, data, out, lutKey}
    this.drawQueued = false;
    this.dpr = window.devicePixelRatio || 1;
    this.message = '';

    this.bind();
    this.resize(false);
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement || canvas);
  }

  /* ---------------- state from the page ---------------- */

  /** What to draw. `dstWin` differing from `srcWin` applies the approximate window. */
  show(img) {
    this.img = img;
    this.requestDraw();
  }

  setMeasurements(list, spacing) {
    this.measures = list;
    this.spacing = spacing;
    if (this.pending && this.pending.list !== list) this.pending = null;
    this.requestDraw();
  }

  setTool(tool) {
    if (!TOOLS.includes(tool)) return;
    this.tool = tool;
    this.pending = null;
    this.canvas.dataset.tool = tool;
    this.requestDraw();
  }

  fit() {
    this.zoom = 1;
    this.pan = { x: 0, y: 0 };
    this.requestDraw();
    this.hooks.onViewChange();
  }

  cancelPending() {
    if (!this.pending) return false;
    this.pending = null;
    this.requestDraw();
    return true;
  }

  /* ---------------- geometry ---------------- */

  size() {
    return { w: this.canvas.clientWidth || 1, h: this.canvas.clientHeight || 1 };
  }

  space() {
    return this.img?.space || { w: 1, h: 1 };
  }

  /** CSS px per image pixel. */
  scale() {
    const { w, h } = this.size();
    const sp = this.space();
    return Math.min(w / sp.w, h / sp.h) * this.zoom;
  }

  toScreen(p) {
    const { w, h } = this.size();
    const sp = this.space();
    const s = this.scale();
    return { x: w / 2 + this.pan.x + (p.x - sp.w / 2) * s, y: h / 2 + this.pan.y + (p.y - sp.h / 2) * s };
  }

  toImage(sx, sy) {
    const { w, h } = this.size();
    const sp = this.space();
    const s = this.scale();
    return { x: (sx - w / 2 - this.pan.x) / s + sp.w / 2, y: (sy - h / 2 - this.pan.y) / s + sp.h / 2 };
  }

  local(ev) {
    const r = this.canvas.getBoundingClientRect();
    return { x: ev.clientX - r.left, y: ev.clientY - r.top };
  }

  /** Zoom by `factor` keeping the image point under (sx, sy) in place. */
  zoomAt(factor, sx, sy) {
    const before = this.toImage(sx, sy);
    this.zoom = clamp(this.zoom * factor, MIN_ZOOM, MAX_ZOOM);
    const after = this.toScreen(before);
    this.pan.x += sx - after.x;
    this.pan.y += sy - after.y;
    this.requestDraw();
    this.hooks.onViewChange();
  }

  /** Device pixels the image covers on screen (long side): how much resolution is worth fetching. */
  devicePixelsNeeded() {
    const sp = this.space();
    return Math.max(sp.w, sp.h) * this.scale() * this.dpr;
  }

  resize(notify = true) {
    const { w, h } = this.size();
    this.dpr = window.devicePixelRatio || 1;
    const W = Math.max(1, Math.round(w * this.dpr));
    const H = Math.max(1, Math.round(h * this.dpr));
    if (this.canvas.width !== W || this.canvas.height !== H) {
      this.canvas.width = W;
      this.canvas.height = H;
      this.draw();
      if (notify) this.hooks.onViewChange();
    }
  }

  /* ---------------- drawing ---------------- */

  requestDraw() {
    if (this.drawQueued) return;
    this.drawQueued = true;
    requestAnimationFrame(() => {
      this.drawQueued = false;
      this.draw();
    });
  }

  /** The source to draw: the bitmap itself, or a window-remapped copy of it. */
  source() {
    const im = this.img;
    if (!im?.bitmap) return null;
    const { srcWin, dstWin } = im;
    if (!srcWin || !dstWin || (Math.abs(srcWin.wc - dstWin.wc) < 0.01 && Math.abs(srcWin.ww - dstWin.ww) < 0.01)) {
      return im.bitmap;
    }
    try {
      let m = this.mapper;
      if (!m || m.key !== im.key || m.bitmap !== im.bitmap) {
        const c = document.createElement('canvas');
        c.width = im.bitmap.width;
        c.height = im.bitmap.height;
        const ctx = c.getContext('2d', { willReadFrequently: true });
        ctx.drawImage(im.bitmap, 0, 0);
        const data = ctx.getImageData(0, 0, c.width, c.height);
        m = { key: im.key, bitmap: im.bitmap, canvas: c, ctx, data, out: new ImageData(c.width, c.height), lutKey: '' };
        this.mapper = m;
      }
      const lutKey = `${srcWin.wc}|${srcWin.ww}|${dstWin.wc}|${dstWin.ww}|${im.invert ? 1 : 0}`;
      if (m.lutKey !== lutKey) {
        const lut = windowLut(srcWin, dstWin, im.invert);
        const d = m.data.data;
        const o = m.out.data;
        for (let i = 0; i < d.length; i += 4) {
          o[i] = lut[d[i]];
          o[i + 1] = lut[d[i + 1]];
          o[i + 2] = lut[d[i + 2]];
          o[i + 3] = 255;
        }
        m.ctx.putImageData(m.out, 0, 0);
        m.lutKey = lutKey;
      }
      return m.canvas;
    } catch {
      return im.bitmap; // e.g. a tainted canvas: show the image unadjusted
    }
  }

  draw() {
    const ctx = this.ctx;
    const dpr = this.dpr;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    const src = this.source();
    if (!src) return;
    const sp = this.space();
    const tl = this.toScreen({ x: 0, y: 0 });
    const s = this.scale();
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    // Smooth at "fit" (a 64 px MR shown large stays readable); zoomed in far, show the real pixels.
    ctx.imageSmoothingEnabled = !(this.zoom > 1.01 && s * dpr >= 4);
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(src, 0, 0, src.width, src.height, tl.x, tl.y, sp.w * s, sp.h * s);
    this.drawMeasures(ctx);
  }

  drawMeasures(ctx) {
    const all = [...this.measures];
    if (this.pending) {
      const pts = [...this.pending.pts];
      if (this.pending.hover) pts.push(this.pending.hover);
      all.push({ type: this.pending.type, pts, pending: true });
    }
    for (const m of all) {
      const pts = m.pts.map((p) => this.toScreen(p));
      if (!pts.length) continue;
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = m.pending ? '#ffd54a' : '#5be37a';
      ctx.fillStyle = ctx.strokeStyle;
      ctx.beginPath();
      ctx.moveTo(pts[0].x, pts[0].y);
      for (const p of pts.slice(1)) ctx.lineTo(p.x, p.y);
      ctx.stroke();
      for (const p of pts) {
        ctx.beginPath();
        ctx.arc(p.x, p.y, 3, 0, Math.PI * 2);
        ctx.fill();
      }
      const label = this.label(m);
      if (label) {
        const at = m.type === 'angle' && pts.length >= 2 ? pts[1] : pts[pts.length - 1];
        drawLabel(ctx, label, at.x + 8, at.y - 8);
      }
    }
  }

  /** The text of a measurement: mm when the pixel spacing is known, else px. */
  label(m) {
    const sp = this.spacing && this.spacing.unit === 'mm' ? this.spacing : null;
    const sx = sp ? sp.col : 1;
    const sy = sp ? sp.row : 1;
    if (m.type === 'length' && m.pts.length >= 2) {
      const [a, b] = m.pts;
      const d = Math.hypot((b.x - a.x) * sx, (b.y - a.y) * sy);
      return sp ? `${d.toFixed(1)} mm${sp.note ? ' ' + t(`viewer.measure.${sp.note}`) : ''}` : `${d.toFixed(1)} px`;
    }
    if (m.type === 'angle' && m.pts.length >= 3) {
      const [a, v, b] = m.pts;
      const u1 = { x: (a.x - v.x) * sx, y: (a.y - v.y) * sy };
      const u2 = { x: (b.x - v.x) * sx, y: (b.y - v.y) * sy };
      const n = Math.hypot(u1.x, u1.y) * Math.hypot(u2.x, u2.y);
      if (!n) return '';
      const deg = (Math.acos(clamp((u1.x * u2.x + u1.y * u2.y) / n, -1, 1)) * 180) / Math.PI;
      return `${deg.toFixed(1)}°`;
    }
    return '';
  }

  /* ---------------- input ---------------- */

  bind() {
    const c = this.canvas;
    c.addEventListener('contextmenu', (ev) => ev.preventDefault());
    c.addEventListener('wheel', (ev) => this.onWheel(ev), { passive: false });
    c.addEventListener('pointerdown', (ev) => this.onDown(ev));
    c.addEventListener('pointermove', (ev) => this.onMove(ev));
    c.addEventListener('pointerup', (ev) => this.onUp(ev));
    c.addEventListener('pointercancel', (ev) => this.onCancel(ev));
    c.addEventListener('dblclick', (ev) => {
      if (this.tool === 'length' || this.tool === 'angle') return;
      ev.preventDefault();
      this.fit();
    });
  }

  onWheel(ev) {
    ev.preventDefault();
    const dy = ev.deltaMode === 1 ? ev.deltaY * 16 : ev.deltaMode === 2 ? ev.deltaY * 400 : ev.deltaY;
    if (ev.ctrlKey || ev.metaKey) {
      const p = this.local(ev);
      this.zoomAt(Math.exp(-dy / 300), p.x, p.y);
      return;
    }
    // A mouse notch (~100 px) is one image; a touchpad's small deltas add up.
    if (Math.abs(dy) >= 50) {
      this.wheelAcc = 0;
      this.hooks.onScroll(Math.sign(dy));
      return;
    }
    this.wheelAcc += dy;
    if (Math.abs(this.wheelAcc) >= 40) {
      this.hooks.onScroll(Math.sign(this.wheelAcc));
      this.wheelAcc = 0;
    }
  }

  onDown(ev) {
    this.canvas.focus({ preventScroll: true });
    this.canvas.setPointerCapture?.(ev.pointerId);
    const p = this.local(ev);
    this.pointers.set(ev.pointerId, p);
    if (this.pointers.size === 2) {
      // Second finger: pinch zoom/pan replaces whatever the first one started.
      if (this.drag?.mode === 'wl') this.hooks.onWindowDrag('end', 0, 0);
      this.drag = null;
      const [a, b] = [...this.pointers.values()];
      const mid = { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
      this.pinch = { dist: Math.hypot(a.x - b.x, a.y - b.y) || 1, zoom: this.zoom, anchor: this.toImage(mid.x, mid.y) };
      return;
    }
    if (this.pointers.size > 2) return;
    ev.preventDefault();
    let mode = this.tool;
    if (ev.button === 2) mode = 'wl';
    else if (ev.button === 1) mode = 'pan';
    else if (ev.button !== 0) return;
    else if (ev.shiftKey && (mode === 'scroll' || mode === 'wl')) mode = 'pan';
    this.drag = { mode, id: ev.pointerId, x0: p.x, y0: p.y, lastY: p.y, moved: false, zoom0: this.zoom, pan0: { ...this.pan } };
    if (mode === 'wl') this.hooks.onWindowDrag('start', 0, 0);
    if (mode === 'length' || mode === 'angle') this.measureDown(mode, p);
  }

  onMove(ev) {
    const p = this.local(ev);
    if (this.pointers.has(ev.pointerId)) this.pointers.set(ev.pointerId, p);
    if (this.pinch && this.pointers.size >= 2) {
      const [a, b] = [...this.pointers.values()];
      const mid = { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
      this.zoom = clamp((this.pinch.zoom * Math.hypot(a.x - b.x, a.y - b.y)) / this.pinch.dist, MIN_ZOOM, MAX_ZOOM);
      const at = this.toScreen(this.pinch.anchor);
      this.pan.x += mid.x - at.x;
      this.pan.y += mid.y - at.y;
      this.requestDraw();
      this.hooks.onViewChange();
      return;
    }
    const d = this.drag;
    if (this.pending && (!d || d.id === ev.pointerId)) {
      this.pending.hover = this.toImage(p.x, p.y);
      this.requestDraw();
    }
    if (!d || d.id !== ev.pointerId) return;
    const dx = p.x - d.x0;
    const dy = p.y - d.y0;
    if (!d.moved && Math.hypot(dx, dy) > DRAG_SLOP) d.moved = true;
    if (!d.moved) return;
    switch (d.mode) {
      case 'wl':
        this.hooks.onWindowDrag('move', dx, dy);
        break;
      case 'zoom':
        this.zoom = d.zoom0;
        this.pan = { ...d.pan0 };
        this.zoomAt(Math.exp(-dy / 150), d.x0, d.y0);
        break;
      case 'pan':
        this.pan = { x: d.pan0.x + dx, y: d.pan0.y + dy };
        this.requestDraw();
        this.hooks.onViewChange();
        break;
      case 'scroll': {
        const steps = Math.trunc((p.y - d.lastY) / SCROLL_PX);
        if (steps) {
          d.lastY += steps * SCROLL_PX;
          this.hooks.onScroll(steps);
        }
        break;
      }
      default:
        break;
    }
  }

  onUp(ev) {
    this.pointers.delete(ev.pointerId);
    if (this.pinch) {
      if (this.pointers.size < 2) this.pinch = null;
      return;
    }
    const d = this.drag;
    if (!d || d.id !== ev.pointerId) return;
    this.drag = null;
    if (d.mode === 'wl') this.hooks.onWindowDrag('end', 0, 0);
    if ((d.mode === 'length' || d.mode === 'angle') && d.moved) this.measureUp(this.local(ev));
  }

  onCancel(ev) {
    this.pointers.delete(ev.pointerId);
    if (this.pointers.size < 2) this.pinch = null;
    if (this.drag?.id === ev.pointerId) {
      if (this.drag.mode === 'wl') this.hooks.onWindowDrag('end', 0, 0);
      this.drag = null;
    }
  }

  /* ---------------- measurements ---------------- */

  measureDown(type, p) {
    if (!this.img) return;
    const ip = this.toImage(p.x, p.y);
    if (!this.pending || this.pending.type !== type) {
      this.pending = { type, pts: [ip], hover: ip, list: this.measures };
    } else {
      this.pending.pts.push(ip);
      this.pending.hover = ip;
    }
    this.maybeFinish();
    this.requestDraw();
  }

  /** A press that was dragged places a point where it was released. */
  measureUp(p) {
    if (!this.pending) return;
    this.pending.pts.push(this.toImage(p.x, p.y));
    this.maybeFinish();
    this.requestDraw();
  }

  maybeFinish() {
    const m = this.pending;
    const need = m.type === 'length' ? 2 : 3;
    if (m.pts.length < need) return;
    this.pending = null;
    m.list.push({ type: m.type, pts: m.pts.slice(0, need) });
    this.hooks.onMeasure();
  }

  /** Remove the newest measurement of the current image. */
  undoMeasure() {
    if (this.cancelPending()) return true;
    if (!this.measures.length) return false;
    this.measures.pop();
    this.requestDraw();
    this.hooks.onMeasure();
    return true;
  }
}

function drawLabel(ctx, text, x, y) {
  ctx.font = '13px system-ui, sans-serif';
  const w = ctx.measureText(text).width;
  ctx.fillStyle = 'rgba(0, 0, 0, 0.65)';
  ctx.fillRect(x - 3, y - 13, w + 6, 18);
  ctx.fillStyle = '#ffffff';
  ctx.fillText(text, x, y);
}
