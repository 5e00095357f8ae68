// xanes-dashboard page: live maps from the relay's WebSocket (binary maps: float32, the mask
// and labels uint8, counts uint16; JSON events), the scan and health panel, and a pixel
// inspector (uPlot). Maps zoom (drag a rectangle or turn the wheel on one): the relay then sends
// every map of the region, at full resolution up to its --max-display. State the tests read is
// kept in window.xanesDash.
"use strict";

const dash = (window.xanesDash = {
  versions: {},      // topic -> newest version received
  drawn: 0,          // map panels drawn (frames), for the keep-up measure
  draws: {},         // panel id -> times drawn
  mapsReceived: {},  // topic -> map messages received
  received: 0,       // map messages received
  daemon: "connecting",
  relay: "connecting",
  scanId: null,
  state: null,
  final: false,
  referenceNames: [],
  pixel: null,       // the last pixel reply shown
  health: null,
  errors: [],
  allowControl: false,
  view: null,        // the region asked of the relay, [x0, y0, x1, y1] in pixels; null: the full image
  shape: null,       // [rows, cols] of the last map
  renderer: "2d",    // how maps are coloured: one lookup per pixel into an ImageData kept per panel
  drawMs: 0,         // time spent colouring and putting maps (ms), for the keep-up measure
});

const MASKED = [154, 165, 177];   // grey: masked / no material
const UNMEASURED = [228, 231, 235];
const PANEL_SIZE = 240;  // CSS pixels of a map's longer side
const DRAG_MIN = 4;      // CSS pixels a press must move to be a zoom rectangle, not a click
const WHEEL_ZOOM = 1.5;  // the region's size changes by this factor per wheel step
const ZOOM_MIN = 4;      // image pixels of the smallest region's longer side

// --- colour ---------------------------------------------------------------------------
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (VIRIDIS.length - 1), k = Math.min(Math.floor(t), VIRIDIS.length - 2), f = t - k;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = VIRIDIS[k][c] + f * (VIRIDIS[k + 1][c] - VIRIDIS[k][c]);
  }
  return lut;
})();

const rgba32 = (rgb) => (rgb[0] | (rgb[1] << 8) | (rgb[2] << 16) | (255 << 24)) >>> 0;
const LUT32 = Uint32Array.from({ length: 256 }, (_, i) => rgba32([LUT[i * 3], LUT[i * 3 + 1], LUT[i * 3 + 2]]));
const MASKED32 = rgba32(MASKED);

// A distinct colour per cluster id that never changes with the others present: golden-angle
// hues, three lightness levels so that more than ten ids stay apart.
function segmentColour(id) {
  if (id === 0) return MASKED;
  if (id === 255) return UNMEASURED;
  const h = (id * 137.508) % 360, l = [0.5, 0.35, 0.65][id % 3], s = 0.7;
  const a = s * Math.min(l, 1 - l), f = (n) => {
    const k = (n + h / 30) % 12;
    return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}

const SEGMENT32 = Uint32Array.from({ length: 256 }, (_, id) => rgba32(segmentColour(id)));

function drawColourbar() {
  const c = document.getElementById("colorbar"), ctx = c.getContext("2d"), img = ctx.createImageData(c.width, c.height);
  for (let x = 0; x < c.width; x++) {
    const i = Math.round((x / (c.width - 1)) * 255);
    for (let y = 0; y < c.height; y++) img.data.set([LUT[i * 3], LUT[i * 3 + 1], LUT[i * 3 + 2], 255], (y * c.width + x) * 4);
  }
  ctx.putImageData(img, 0, 0);
}

// The value below which 99 % of the finite, positive-mask values lie (robust colour scale), from
// about 20000 samples (a typed array: sorted natively, no comparator call per pair).
function upperScale(values, mask) {
  const stride = Math.max(1, Math.floor(values.length / 20000));
  const v = new Float64Array(Math.ceil(values.length / stride));
  let n = 0;
  for (let i = 0; i < values.length; i += stride) if (Number.isFinite(values[i]) && (!mask || mask[i])) v[n++] = values[i];
  if (!n) return 1;
  const s = v.subarray(0, n).sort();
  return s[Math.min(n - 1, Math.floor(n * 0.99))] || 1;
}

// --- map panels -----------------------------------------------------------------------
const panels = new Map();  // id -> {canvas, title, range, data, mask, sigma, kind, h, w, header, dirty, img}
dash.panels = panels;
let dirtyFrame = false;

function panel(id, title, kind, order) {
  let p = panels.get(id);
  if (p) return p;
  const div = document.createElement("div");
  div.className = "panel";
  div.dataset.order = order;
  div.id = "panel-" + id.replace(/[^A-Za-z0-9_-]/g, "_");
  const h = document.createElement("h3");
  const name = document.createElement("span");
  name.textContent = title;
  const range = document.createElement("span");
  range.className = "range";
  h.append(name, range);
  const canvas = document.createElement("canvas");
  canvas.dataset.panel = id;
  const marker = document.createElement("div");  // the inspected pixel, in CSS pixels: thin at any zoom
  marker.className = "pixel-marker";
  marker.hidden = true;
  div.append(h, canvas, marker);
  const grid = document.getElementById("map-grid");
  const after = [...grid.children].find((c) => c.dataset.order > order);
  grid.insertBefore(div, after || null);
  p = { id, div, canvas, marker, range, kind, title };
  canvas.addEventListener("mousedown", (e) => startDrag(p, e));
  canvas.addEventListener("mousemove", (e) => hover(p, e));
  canvas.addEventListener("mouseleave", () => { hovered = null; });
  canvas.addEventListener("wheel", (e) => wheelZoom(p, e), { passive: false });
  if (kind === "fraction") {  // the relay sends the σ maps (hover text only) while the mouse is over one
    canvas.addEventListener("mouseenter", () => wantSigma(true));
    canvas.addEventListener("mouseleave", () => wantSigma(false));
  }
  panels.set(id, p);
  return p;
}

function dropPanels(keep) {
  for (const [id, p] of panels) if (!keep(id)) { p.div.remove(); panels.delete(id); }
}

function setPanel(p, header, data, extra) {
  Object.assign(p, { header, data, h: header.h, w: header.w, dirty: true }, extra);
  if (!dirtyFrame) { dirtyFrame = true; requestAnimationFrame(drawDirty); }
}

function drawDirty() {
  dirtyFrame = false;
  const t0 = performance.now();
  for (const p of panels.values()) if (p.dirty) {
    drawPanel(p);
    if (hovered && hovered.p === p) hover(p, hovered.e);
    p.dirty = false;
    dash.drawn++;
    dash.draws[p.id] = (dash.draws[p.id] || 0) + 1;
  }
  dash.drawMs += performance.now() - t0;
}

function drawPanel(p) {
  const { h, w, data } = p;
  if (!h || !w) return;
  if (p.canvas.width !== w || p.canvas.height !== h) {
    p.canvas.width = w;
    p.canvas.height = h;
    const scale = PANEL_SIZE / Math.max(w, h);  // a small zoomed region is shown as large as the full image
    p.canvas.style.width = `${w * scale}px`;
    p.canvas.style.height = `${h * scale}px`;
  }
  // The ImageData is kept per panel and size: a new one each draw is a megabyte of fresh pages
  // at 512², which the kernel faults in one by one (most of a draw's time on a VM).
  if (!p.img || p.img.width !== w || p.img.height !== h) {
    p.ctx = p.canvas.getContext("2d");
    p.img = p.ctx.createImageData(w, h);
    p.out = new Uint32Array(p.img.data.buffer);  // one write per pixel (RGBA bytes, little-endian)
  }
  const out = p.out;
  let lo = 0, hi = 1;
  if (p.kind === "scaled") hi = upperScale(data, p.mask);
  if (p.kind === "count") hi = Math.max(1, dash.health?.scan?.energies_planned || upperScale(data));
  const range = p.kind === "segments" ? `${p.header.cluster_ids?.length ?? 0} domains` :
    p.kind === "fraction" ? "0 … 1" : p.kind === "count" ? `0 … ${hi}` : `0 … ${fmt(hi)}`;
  if (p.range.textContent !== range) p.range.textContent = range;  // unchanged text: no relayout
  const n = w * h, mask = p.mask || null;
  if (p.kind === "segments") {
    for (let i = 0; i < n; i++) out[i] = SEGMENT32[data[i] & 255];
  } else {
    // k + 0.5 truncated is Math.round(k) for k >= 0, without the call per pixel.
    const scale = 255 / (hi - lo || 1), off = 0.5 - lo * scale;
    for (let i = 0; i < n; i++) {
      const v = data[i];
      if (v !== v || (mask !== null && mask[i] === 0)) { out[i] = MASKED32; continue; }  // v !== v: NaN
      const k = v * scale + off;
      out[i] = LUT32[k < 1 ? 0 : k >= 255 ? 255 : k | 0];
    }
  }
  p.ctx.putImageData(p.img, 0, 0);
  placeMarker(p);
}

// The inspected pixel's frame on a map that shows it: the map sample it is in, at least 9 CSS
// pixels wide.
function placeMarker(p) {
  const r = dash.pixel, h = p.header;
  p.marker.hidden = !(r && r.scan_id === dash.scanId && r.x >= h.x0 && r.x < h.x1 && r.y >= h.y0 && r.y < h.y1);
  if (p.marker.hidden) return;
  const scale = p.canvas.clientWidth / p.w, size = Math.max(9, scale);  // CSS pixels per map sample
  const cx = p.canvas.offsetLeft + (Math.floor((r.x - h.x0) / h.step) + 0.5) * scale;
  const cy = p.canvas.offsetTop + (Math.floor((r.y - h.y0) / h.step) + 0.5) * scale;
  Object.assign(p.marker.style, { left: `${cx - size / 2}px`, top: `${cy - size / 2}px`, width: `${size}px`, height: `${size}px` });
}

function fmt(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (typeof v !== "number") return String(v);
  if (v !== 0 && (Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3)) return v.toExponential(2);
  return v.toFixed(digits);
}

// The image point under the mouse, in full-resolution pixels (fractional): a map shows the
// region from (x0, y0), every step-th pixel.
function imagePoint(p, e) {
  const r = p.canvas.getBoundingClientRect(), { x0, y0, step } = p.header;
  return { fx: x0 + ((e.clientX - r.left) / r.width) * p.w * step, fy: y0 + ((e.clientY - r.top) / r.height) * p.h * step };
}

// The map sample under the mouse (i row, j column of the data) and its full-resolution pixel.
function pixelAt(p, e) {
  const { fx, fy } = imagePoint(p, e), { x0, y0, step } = p.header;
  const i = Math.min(p.h - 1, Math.max(0, Math.floor((fy - y0) / step)));
  const j = Math.min(p.w - 1, Math.max(0, Math.floor((fx - x0) / step)));
  return { i, j, x: x0 + j * step, y: y0 + i * step };
}

let hovered = null;  // the panel and mouse event of the hover text: it is refreshed when that map is

function hover(p, e) {
  if (!p.data) return;
  hovered = { p, e };
  const { i, j, x, y } = pixelAt(p, e), k = i * p.w + j;
  let text = `${p.title} (x ${x}, y ${y}): ${fmt(p.data[k])}`;
  if (p.sigma) text += ` ± ${fmt(p.sigma[k])}`;
  else if (p.kind === "fraction") text += " ± …";  // σ asked for: it comes with the map sent next
  if (p.mask && !p.mask[k]) text += " (masked)";
  document.getElementById("hover").textContent = text;
}

function wantSigma(want) {
  dash.wantSigma = want;
  if (dash.ws && dash.ws.readyState === 1) dash.ws.send(JSON.stringify({ type: "sigma", want }));
}

// --- zoom (linked: the relay sends every map of the one region) ------------------------
function setView(region) {
  dash.view = region;
  if (dash.ws && dash.ws.readyState === 1) dash.ws.send(JSON.stringify({ type: "view", region }));
  document.getElementById("btn-reset-zoom").disabled = !region;
}

// The region [x0, y0, x1, y1] of at least ZOOM_MIN pixels around the given corners, inside the
// image; null when it is the whole image.
function clampView(ax, ay, bx, by, cols, rows) {
  let x0 = Math.floor(Math.min(ax, bx)), y0 = Math.floor(Math.min(ay, by));
  let x1 = Math.ceil(Math.max(ax, bx)), y1 = Math.ceil(Math.max(ay, by));
  const grow = (lo, hi, n) => {  // widen to ZOOM_MIN, shift inside [0, n]
    const size = Math.min(n, Math.max(ZOOM_MIN, hi - lo)), mid = (lo + hi) / 2;
    lo = Math.min(n - size, Math.max(0, Math.round(mid - size / 2)));
    return [lo, lo + size];
  };
  [x0, x1] = grow(x0, x1, cols);
  [y0, y1] = grow(y0, y1, rows);
  return x0 === 0 && y0 === 0 && x1 === cols && y1 === rows ? null : [x0, y0, x1, y1];
}

// A press on a map: released where it started, it inspects that pixel; dragged, it draws the
// rectangle to zoom into.
function startDrag(p, down) {
  if (!p.header || down.button !== 0) return;
  down.preventDefault();
  const box = document.createElement("div");
  box.className = "zoom-box";
  p.div.append(box);
  const move = (e) => {
    const r = p.canvas.getBoundingClientRect(), d = p.div.getBoundingClientRect();
    const cx = (v) => Math.min(r.right, Math.max(r.left, v)), cy = (v) => Math.min(r.bottom, Math.max(r.top, v));
    const ax = cx(down.clientX), bx = cx(e.clientX), ay = cy(down.clientY), by = cy(e.clientY);
    Object.assign(box.style, { left: `${Math.min(ax, bx) - d.left}px`, top: `${Math.min(ay, by) - d.top}px`,
      width: `${Math.abs(bx - ax)}px`, height: `${Math.abs(by - ay)}px` });
  };
  const up = (e) => {
    window.removeEventListener("mousemove", move);
    window.removeEventListener("mouseup", up);
    box.remove();
    if (Math.abs(e.clientX - down.clientX) < DRAG_MIN && Math.abs(e.clientY - down.clientY) < DRAG_MIN) {
      inspect(p, down);
      return;
    }
    const a = imagePoint(p, down), b = imagePoint(p, e), { cols, rows } = p.header;
    const clamp = (v, n) => Math.min(n, Math.max(0, v));
    setView(clampView(clamp(a.fx, cols), clamp(a.fy, rows), clamp(b.fx, cols), clamp(b.fy, rows), cols, rows));
  };
  window.addEventListener("mousemove", move);
  window.addEventListener("mouseup", up);
}

// The wheel zooms in (away from you) or out around the point under the mouse.
function wheelZoom(p, e) {
  if (!p.header || !e.deltaY) return;
  e.preventDefault();
  const { fx, fy } = imagePoint(p, e), { cols, rows } = p.header;
  const [x0, y0, x1, y1] = dash.view || [0, 0, cols, rows];
  const f = e.deltaY < 0 ? 1 / WHEEL_ZOOM : WHEEL_ZOOM;
  setView(clampView(fx - (fx - x0) * f, fy - (fy - y0) * f, fx + (x1 - fx) * f, fy + (y1 - fy) * f, cols, rows));
}

function showZoom(h) {
  const full = h.x0 === 0 && h.y0 === 0 && h.x1 === h.cols && h.y1 === h.rows;
  document.getElementById("zoom").textContent =
    (full ? `full image, ${h.rows} × ${h.cols} px` : `x ${h.x0}–${h.x1 - 1}, y ${h.y0}–${h.y1 - 1} of ${h.rows} × ${h.cols} px`) +
    (h.step > 1 ? `, one pixel in ${h.step} each way` : ", full resolution");
}

function onMap(header, arrays) {
  dash.received++;
  dash.mapsReceived[header.topic] = (dash.mapsReceived[header.topic] || 0) + 1;
  if (header.topic === "maps/fractions") {
    dash.fractionVersions = [...(dash.fractionVersions || []).slice(-99), header.version];
    dash.fractionHeader = { version: header.version, final: header.final, rows: header.rows, cols: header.cols, scan_id: header.scan_id };
  }
  dash.versions[header.topic] = header.version;
  dash.final = !!header.final;
  document.getElementById("version").textContent =
    `v${header.version}${header.final ? " final" : ""} · ${header.energies_measured} energies · ${header.frames_applied} frames`;
  if (header.time_unix) dash.latency = Date.now() / 1000 - header.time_unix;
  // The zoom stays for the next scan of the same field of view; an image of another size resets it.
  if (dash.view && dash.shape && (header.rows !== dash.shape[0] || header.cols !== dash.shape[1])) setView(null);
  dash.shape = [header.rows, header.cols];
  showZoom(header);
  if (header.topic === "maps/fractions") {
    dash.referenceNames = header.reference_names || [];
    const mask = arrays.mask;
    dropPanels((id) => !id.startsWith("fraction:") || dash.referenceNames.includes(id.slice(9)));
    dash.referenceNames.forEach((name, k) => {
      const p = panel("fraction:" + name, name, "fraction", `0-${String(k).padStart(3, "0")}`);
      setPanel(p, header, arrays["fractions/" + name], { mask, sigma: arrays["fraction_sigma/" + name] });
    });
  } else if (header.topic === "maps/thickness") {
    setPanel(panel("thickness", "thickness (edge step)", "scaled", "1"), header, arrays.thickness, {});
  } else if (header.topic === "maps/residual") {
    setPanel(panel("residual", "residual (RMS)", "scaled", "2"), header, arrays.residual, {});
  } else if (header.topic === "maps/segments") {
    if (arrays.segments) setPanel(panel("segments", "segments", "segments", "3"), header, arrays.segments, {});
  } else if (header.topic === "maps/nenergies") {
    setPanel(panel("nenergies", "energies measured per pixel", "count", "4"), header, arrays.nenergies, {});
  }
}

// The relay's array types (its pack()): a mask and labels come as uint8, counts as uint16.
const WIRE_TYPES = { f4: Float32Array, u1: Uint8Array, u2: Uint16Array };

function decodeBinary(buf) {
  const n = new DataView(buf).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const base = 4 + n, arrays = {};
  for (const a of header.arrays) {
    const size = a.shape.reduce((x, y) => x * y, 1);
    arrays[a.name] = new WIRE_TYPES[a.dtype || "f4"](buf, base + a.offset, size);  // offset: bytes
  }
  return { header, arrays };
}

// --- scan and health ------------------------------------------------------------------
const etaTrack = { t: null, seen: null, rate: null };

function row(table, k, v, cls) {
  const tr = table.insertRow();
  tr.insertCell().textContent = k;
  const td = tr.insertCell();
  td.textContent = v;
  if (cls) td.className = cls;
}

function onHealth(h) {
  dash.health = h;
  const sc = h.scan || {};
  dash.state = h.state;
  document.getElementById("scan-state").textContent = h.state || "idle";
  if (sc.scan_id) document.getElementById("scan-id").textContent = sc.scan_id;
  const t = document.getElementById("health-table");
  t.innerHTML = "";
  row(t, "state", `${h.state}${sc.stop_reason ? " (" + sc.stop_reason + ")" : ""}`);
  if (sc.shape) row(t, "image", `${sc.shape[0]} × ${sc.shape[1]} px, ${sc.mode}`);
  row(t, "frames applied", sc.frames_applied ?? "–");
  const seen = sc.energies_seen ?? 0, planned = sc.energies_planned ?? 0;
  // ETA from the rate at which energies came in.
  const now = h.time;
  if (etaTrack.seen !== null && seen > etaTrack.seen && now > etaTrack.t) {
    const r = (seen - etaTrack.seen) / (now - etaTrack.t);
    etaTrack.rate = etaTrack.rate === null ? r : 0.7 * etaTrack.rate + 0.3 * r;
  }
  if (etaTrack.seen !== seen) { etaTrack.seen = seen; etaTrack.t = now; }
  const eta = h.state === "running" && etaTrack.rate ? `, ETA ${Math.round((planned - seen) / etaTrack.rate)} s` : "";
  row(t, "energies", `${seen} / ${planned}${eta}`);
  if (dash.latency !== undefined) row(t, "publication latency", `${(dash.latency * 1000).toFixed(0)} ms`);
  const q = h.ingest_queue || {};
  if (q.capacity) row(t, "ingest queue", `${q.size ?? q.depth ?? 0} / ${q.capacity}`);
  row(t, "references", (sc.fit?.references || []).join(", ") || sc.fit?.error || "–");
  if (h.result_file) row(t, "result file", h.result_file);
  if (h.relay_gaps) row(t, "gaps healed", `${h.relay_gaps} (${h.relay_missed_cycles} cycles missed, reloaded by snapshot)`, "gap");
  drawEnergies(sc);
  const rj = document.getElementById("rejects");
  rj.innerHTML = "";
  for (const [k, v] of Object.entries(h.counters || {})) if (k.startsWith("issues.") && v > 0) row(rj, k.slice(7), v);
  if (!rj.rows.length) row(rj, "none", "");
  const ul = document.getElementById("errors");
  ul.innerHTML = "";
  for (const e of (h.errors || []).slice(-8).reverse()) {
    const li = document.createElement("li");
    li.textContent = `${e.code}: ${e.message}`;
    ul.append(li);
  }
}

function drawEnergies(sc) {
  const c = document.getElementById("energies"), ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  const e = sc.energies_eV || [], seen = new Set(sc.energy_indices_seen || []);
  if (e.length < 2) return;
  const lo = Math.min(...e), hi = Math.max(...e);
  e.forEach((v, i) => {
    const x = 4 + ((v - lo) / (hi - lo || 1)) * (c.width - 8);
    ctx.fillStyle = seen.has(i) ? "#2b6cb0" : "#cbd2d9";
    ctx.fillRect(Math.round(x), seen.has(i) ? 2 : 14, 2, seen.has(i) ? 32 : 20);
  });
  document.getElementById("energies-text").textContent =
    `${seen.size} of ${e.length} measured, ${lo.toFixed(1)} … ${hi.toFixed(1)} eV`;
}

function setConnection(text, cls) {
  const el = document.getElementById("connection");
  el.textContent = text;
  el.className = "badge conn-" + cls;
}

// --- inspector ------------------------------------------------------------------------
let plot = null;

// Error bars (±σ) on the measured points: uPlot has none built in, so they are drawn here.
function errorBars(u) {
  const r = dash.pixel;
  if (!r || !r.sigma) return;
  const ctx = u.ctx;
  ctx.save();
  ctx.strokeStyle = "#222";
  ctx.lineWidth = 1;
  r.energies_eV.forEach((e, j) => {
    const x = u.valToPos(e, "x", true), y0 = u.valToPos(r.spectrum[j] - r.sigma[j], "y", true),
      y1 = u.valToPos(r.spectrum[j] + r.sigma[j], "y", true);
    ctx.beginPath(); ctx.moveTo(x, y0); ctx.lineTo(x, y1); ctx.stroke();
  });
  ctx.restore();
}

async function inspect(p, e) {
  if (!p.header) return;
  const { x, y } = pixelAt(p, e);
  const res = await fetch(`/api/pixel?x=${x}&y=${y}`);
  const r = await res.json();
  showPixel(r);
}

function showPixel(r) {
  const box = document.getElementById("inspector");
  box.hidden = false;
  if (!r.ok) {
    document.getElementById("pixel-where").textContent = `error: ${r.error}`;
    return;
  }
  dash.pixel = r;
  for (const p of panels.values()) if (p.header) placeMarker(p);
  document.getElementById("pixel-where").textContent =
    `(x ${r.x}, y ${r.y}) · scan ${r.scan_id} v${r.version}${r.mask ? "" : " · masked"}`;
  const t = document.getElementById("pixel-table");
  t.innerHTML = "";
  (r.reference_names || []).forEach((n, k) => {
    const tr = t.insertRow();
    tr.className = "fraction";
    tr.dataset.reference = n;
    tr.insertCell().textContent = n;
    tr.insertCell().textContent = `${fmt(r.fractions[k])} ± ${fmt(r.fraction_sigma[k])}`;
  });
  row(t, "thickness", fmt(r.thickness));
  row(t, "residual", fmt(r.residual));
  row(t, "R-factor", fmt(r.rfactor, 4));
  row(t, "mask", r.mask ? "kept" : "masked");
  row(t, "segment", r.segment ?? "–");
  row(t, "energies", `${r.energies_eV.length}`);
  row(t, "fit", r.fit_method || r.fit_error || "–");

  const series = [{ label: "E (eV)" }, { label: "measured", stroke: "#222", paths: () => null, points: { show: true, size: 5, fill: "#222" } }];
  const data = [r.energies_eV, r.spectrum];
  if (r.model) {
    series.push({ label: "model", stroke: "#d64545", width: 2 });
    data.push(r.model);
    series.push({ label: "background", stroke: "#7b8794", dash: [4, 4] });
    data.push(r.background);
    r.reference_names.forEach((n, k) => {
      series.push({ label: n, stroke: `rgb(${segmentColour(k + 1).join(",")})` });
      data.push(r.contributions[k]);
    });
  }
  if (plot) { plot.destroy(); plot = null; }
  plot = new uPlot({
    width: 640, height: 300, series,
    scales: { x: { time: false } },
    axes: [{ label: "energy (eV)" }, { label: "signal" }],
    hooks: { draw: [errorBars] },
  }, data, document.getElementById("spectrum"));
}

// --- domains (clusters topic) ----------------------------------------------------------
let clusterPlot = null;

function onClusters(h, arrays) {
  dash.versions.clusters = h.version;
  dash.clusters = h;
  dash.clusterArrays = arrays;
  const ids = h.cluster_ids || [], names = h.reference_names || [];
  const box = document.getElementById("domains");
  box.hidden = ids.length === 0;
  if (!ids.length) return;
  const unexplained = new Set(h.unexplained || []);
  document.getElementById("domains-note").textContent =
    `${ids.length} domains · v${h.version}${unexplained.size ? ` · not explained by the references: ${[...unexplained].join(", ")}` : ""}`;
  const t = document.getElementById("cluster-table");
  t.innerHTML = "";
  const head = t.insertRow();
  for (const c of ["domain", "pixels", ...names, "residual", ""]) {
    const th = document.createElement("th");
    th.textContent = c;
    head.append(th);
  }
  ids.forEach((id, i) => {
    const tr = t.insertRow();
    tr.className = "cluster";
    tr.dataset.id = id;
    const c0 = tr.insertCell(), sw = document.createElement("span");
    sw.className = "swatch-id";
    sw.style.background = `rgb(${segmentColour(id).join(",")})`;
    c0.append(sw, String(id));
    tr.insertCell().textContent = h.pixels?.[i] ?? "";
    names.forEach((_, k) => {
      const f = h.fractions?.[i]?.[k], s = h.fraction_sigma?.[i]?.[k];
      tr.insertCell().textContent = f === undefined || f === null ? "–" : `${fmt(f, 2)} ± ${fmt(s, 2)}`;
    });
    tr.insertCell().textContent = fmt(h.residual?.[i], 4);
    tr.insertCell().textContent = unexplained.has(id) ? "unexplained" : "";
  });
  const pca = h.pca || {};
  const scree = (pca.explained_variance_ratio || []).slice(0, 6).map((v) => fmt(v, 3)).join(", ");
  const tt = pca.target_transformation || {};
  const plausible = tt.plausible || [];
  const verdicts = plausible.length === names.length
    ? plausible.map((ok, k) => `${names[k]} ${ok ? "plausible" : "implausible"}`).join("; ")
    : plausible.length ? `${plausible.filter(Boolean).length} of ${plausible.length} references plausible` : "";
  document.getElementById("pca").textContent =
    `scree ${scree}; ${pca.significant ?? "?"} components above the noise floor (σ ${fmt(pca.noise_sigma)})` +
    (verdicts ? `; target transformation: ${verdicts}` : "");
  // Mean spectra on the planned energies (NaN: not in use) when the plan is known.
  const e = dash.health?.scan?.energies_eV, mean = arrays.mean_spectra;
  if (!e || !mean || mean.length !== ids.length * e.length) return;
  const data = [e];
  const series = [{ label: "E (eV)" }];
  ids.forEach((id, i) => {
    data.push(Array.from(mean.subarray(i * e.length, (i + 1) * e.length), (v) => (Number.isFinite(v) ? v : null)));
    series.push({ label: `domain ${id}`, stroke: `rgb(${segmentColour(id).join(",")})`, width: 2, spanGaps: true });
  });
  if (clusterPlot) { clusterPlot.destroy(); clusterPlot = null; }
  clusterPlot = new uPlot({ width: 520, height: 240, series, scales: { x: { time: false } },
    axes: [{ label: "energy (eV)" }, { label: "edge-normalized" }], hooks: { draw: [selectionMarks] } },
  data, document.getElementById("cluster-plot"));
}

// The last select_energies result over the mean spectra: a dashed line at each selected energy.
function selectionMarks(u) {
  const e = dash.selection?.energies_eV;
  if (!e) return;
  const ctx = u.ctx, top = u.bbox.top, bottom = u.bbox.top + u.bbox.height;
  ctx.save();
  ctx.strokeStyle = "#c05621";
  ctx.setLineDash([3, 3]);
  for (const v of e) {
    const x = u.valToPos(v, "x", true);
    ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, bottom); ctx.stroke();
  }
  ctx.restore();
}

// --- controls -------------------------------------------------------------------------
// The request for one button: its arguments from the inputs beside it and the sentence the
// confirm dialog asks about; null (with the reason shown) when an input is missing.
function controlRequest(cmd) {
  const list = (id) => document.getElementById(id).value.split(",").map((x) => x.trim()).filter((x) => x);
  if (cmd === "configure") {
    const text = document.getElementById("config-set").value.trim();
    const eq = text.indexOf("=");
    if (eq < 1) return { error: "type key=value first (a runtime key, e.g. publish.interval_ms=500)" };
    const key = text.slice(0, eq).trim(), raw = text.slice(eq + 1).trim();
    let value;
    try { value = JSON.parse(raw); } catch { value = raw; }  // numbers, true/false, null; else a string
    return { body: { cmd, set: { [key]: value } }, what: `set ${key} = ${JSON.stringify(value)} in the running daemon` };
  }
  if (cmd === "load_references") {
    const files = list("ref-files"), names = list("ref-names");
    if (!files.length) return { error: "type the reference files first (paths the daemon can read)" };
    const body = { cmd, files };
    if (names.length) body.names = names;
    return { body, what: `load references from ${files.join(", ")}${names.length ? ` (keeping ${names.join(", ")})` : ""}; ` +
      "the current or last scan is refitted with them if they cover it" };
  }
  return { body: { cmd }, what: { save: "write the result file now", abort: "ABORT the running scan",
    select_energies: "ask the daemon for a new energy selection (it is published to the scan controller)" }[cmd] };
}

async function control(cmd) {
  const req = controlRequest(cmd);
  if (req.error) { window.alert(`${cmd}: ${req.error}`); return; }
  if (!window.confirm(`Really ${req.what}?`)) return;
  const res = await fetch("/api/control", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(req.body) });
  const r = await res.json();
  window.alert(r.ok ? `${cmd}: done` : `${cmd} failed: ${r.error}`);
}

function onSelection(s) {
  dash.selection = s;
  if (dash.clusters) onClusters(dash.clusters, dash.clusterArrays || {});  // its markers on the mean spectra
  const e = s.energies_eV || [];
  document.getElementById("selection").textContent =
    `${e.length} energies (${s.method || ""}, ${s.source || ""}${s.scan_id ? ", scan " + s.scan_id : ""}): ` +
    e.map((v) => v.toFixed(1)).join(" ");
}

// --- socket ---------------------------------------------------------------------------
let drawnReported = 0;

function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    dash.relay = "open";
    if (dash.view) setView(dash.view);  // a new connection starts with the full image
    if (dash.wantSigma) wantSigma(true);
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") {
      const { header, arrays } = decodeBinary(ev.data);
      if (header.type === "clusters") onClusters(header, arrays);
      else onMap(header, arrays);
      return;
    }
    const m = JSON.parse(ev.data);
    switch (m.type) {
      case "hello":
        dash.allowControl = m.allow_control;
        document.getElementById("controls").hidden = !m.allow_control;
        break;
      case "connection":
        dash.daemon = m.daemon;
        setConnection(m.daemon === "live" ? "live" : m.daemon === "reconnecting" ? "daemon lost: reconnecting…" : "connecting",
          m.daemon === "live" ? "live" : "reconnecting");
        break;
      case "scan":
        dash.scanId = m.scan_id;
        dash.versions = {};
        dash.final = false;
        document.getElementById("scan-id").textContent = m.scan_id;
        dropPanels(() => false);
        break;
      case "status":
        dash.state = m.state;
        document.getElementById("scan-state").textContent = m.state;
        dash.versions.status = m.version;
        break;
      case "health":
        onHealth(m);
        break;
      case "error":
        dash.errors.push(m);
        break;
      case "energies":
        onSelection(m);
        break;
      default:
        if (m.version !== undefined) dash.versions[m.type] = m.version;
    }
  };
  ws.onclose = () => {
    dash.relay = "closed";
    dash.daemon = "reconnecting";
    setConnection("dashboard lost: reconnecting…", "reconnecting");
    setTimeout(connect, 1000);
  };
  dash.ws = ws;
}

setInterval(() => {  // frames drawn, reported to the relay (its /api/stats: frames drawn per publication)
  if (dash.ws && dash.ws.readyState === 1 && dash.drawn > drawnReported) {
    dash.ws.send(JSON.stringify({ type: "drawn", count: dash.drawn - drawnReported }));
    drawnReported = dash.drawn;
  }
}, 1000);

for (const b of document.querySelectorAll("#controls button")) b.addEventListener("click", () => control(b.dataset.cmd));
document.getElementById("btn-reset-zoom").addEventListener("click", () => setView(null));
drawColourbar();
connect();
