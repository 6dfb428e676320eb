/* jaxseg report viewer: three orthogonal slice views, overlays, plots and a software-rendered 3D view.

   Everything comes from the JSON block #report-data written by jaxseg/report/html.py. Volumes are
   (X, Y, Z) uint8 arrays in canonical RAS voxel order (index 0 -> patient Right, 1 -> Anterior,
   2 -> Superior), C order, deflated and base64-encoded; the browser inflates them with its own
   DecompressionStream, so the page needs no library and no network.

   Display is radiological: in axial and coronal views the patient's right is on the viewer's left;
   sagittal views have anterior on the left. Each view is labelled with the patient's directions.

   The 3D view is a small z-buffer rasteriser into an ImageData (no WebGL): it runs the same in every
   browser, including headless ones without a GPU, and 60k triangles render in a few milliseconds.
   Transparent surfaces (brain, edema) keep their front-most fragment per pixel and are blended
   back to front, which is exact for one layer per surface and enough to see a tumor in the brain. */
(function () {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const DATA = JSON.parse($('report-data').textContent);
  const [X, Y, Z] = DATA.shape;
  const SP = DATA.spacing;

  // ------------------------------------------------------------------------------- decoding
  async function inflate(b64) {
    const binary = atob(b64);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  // ------------------------------------------------------------------------------- colour maps
  // Nine evenly spaced stops of each map (matplotlib's values), interpolated to a 256-entry table.
  const STOPS = {
    turbo: [[48, 18, 59], [65, 105, 225], [38, 180, 235], [26, 228, 182], [134, 254, 82],
            [226, 220, 56], [252, 146, 39], [216, 61, 11], [122, 4, 3]],
    inferno: [[0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
              [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164]],
    magma: [[0, 0, 4], [28, 16, 68], [79, 18, 123], [129, 37, 129], [181, 54, 122],
            [229, 80, 100], [251, 135, 97], [254, 194, 135], [252, 253, 191]],
    viridis: [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
              [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]],
    plasma: [[13, 8, 135], [75, 3, 161], [125, 3, 168], [168, 34, 150], [203, 70, 121],
             [229, 107, 93], [248, 148, 65], [253, 195, 40], [240, 249, 33]],
    hot: [[11, 0, 0], [96, 0, 0], [183, 0, 0], [255, 15, 0], [255, 101, 0],
          [255, 188, 0], [255, 255, 20], [255, 255, 138], [255, 255, 255]],
    gray: [[0, 0, 0], [255, 255, 255]],
  };
  function colormap(name) {
    const stops = STOPS[name] || STOPS.turbo;
    const table = new Uint8Array(256 * 3);
    for (let i = 0; i < 256; i++) {
      const t = (i / 255) * (stops.length - 1);
      const a = Math.min(Math.floor(t), stops.length - 2), f = t - a;
      for (let c = 0; c < 3; c++) table[i * 3 + c] = Math.round(stops[a][c] * (1 - f) + stops[a + 1][c] * f);
    }
    return table;
  }
  function hexRgb(hex) {
    const n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }
  const CLASS_RGB = [null];
  for (const c of DATA.classes) CLASS_RGB[c.value] = hexRgb(c.color);
  const CLASS_NAME = ['background'].concat(DATA.classes.map((c) => c.name));
  const COMPARE_RGB = [null, [255, 65, 54], [46, 204, 64], [255, 220, 0]]; // pred only, GT only, both

  // ------------------------------------------------------------------------------- state
  const state = { pos: DATA.focus.slice(), channel: 0, contrast: 1, brightness: 0, overlays: [] };
  const volumes = { channels: [], seg: null, gt: null };
  const idx = (i, j, k) => (i * Y + j) * Z + k;
  const original = (axis, v) => DATA.offset[axis] + v * DATA.stride;

  // Each view: its size in voxels, the axis its slider moves, and where screen pixel (u, v) is:
  // index = base + u * du + v * dv. u grows to the viewer's right, v downwards.
  const VIEWS = {
    axial: { w: X, h: Y, axis: 2, su: SP[0], sv: SP[1], labels: ['R', 'L', 'A', 'P'],
      base: (p) => idx(X - 1, Y - 1, p[2]), du: -Y * Z, dv: -Z,
      screen: (p) => [X - 1 - p[0], Y - 1 - p[1]], voxel: (u, v, p) => [X - 1 - u, Y - 1 - v, p[2]] },
    coronal: { w: X, h: Z, axis: 1, su: SP[0], sv: SP[2], labels: ['R', 'L', 'S', 'I'],
      base: (p) => idx(X - 1, p[1], Z - 1), du: -Y * Z, dv: -1,
      screen: (p) => [X - 1 - p[0], Z - 1 - p[2]], voxel: (u, v, p) => [X - 1 - u, p[1], Z - 1 - v] },
    sagittal: { w: Y, h: Z, axis: 0, su: SP[1], sv: SP[2], labels: ['A', 'P', 'S', 'I'],
      base: (p) => idx(p[0], Y - 1, Z - 1), du: -Z, dv: -1,
      screen: (p) => [Y - 1 - p[1], Z - 1 - p[2]], voxel: (u, v, p) => [p[0], Y - 1 - u, Z - 1 - v] },
  };
  const AXIS_NAMES = ['sagittal', 'coronal', 'axial'];
  // The views on the page: all three, or (a 2D image, DATA.image_2d) the axial one showing the
  // image as stored, without patient directions or a scale bar (a 2D file has neither).
  const SHOWN = DATA.views || Object.keys(VIEWS);

  // ------------------------------------------------------------------------------- slice views
  function greyTable() {
    const t = new Uint8Array(256);
    for (let g = 0; g < 256; g++) t[g] = Math.max(0, Math.min(255, (g - 128) * state.contrast + 128 + state.brightness * 2.55));
    return t;
  }

  function composeSlice(view) {
    const { w, h, du, dv } = view;
    const base = view.base(state.pos);
    const image = new ImageData(w, h);
    const px = image.data;
    const grey = greyTable();
    const bg = volumes.channels[state.channel];
    const on = state.overlays.filter((o) => o.on && o.opacity > 0);
    for (let v = 0; v < h; v++) {
      for (let u = 0; u < w; u++) {
        const n = base + u * du + v * dv;
        let r = grey[bg[n]], g = r, b = r;
        for (const o of on) {
          let rgb = null, a = o.opacity;
          if (o.kind === 'map') {
            const q = o.data[n];
            const ramp = (q / 255 - 0.04) / 0.3; // low values fade out so the anatomy stays visible
            if (ramp <= 0) continue;
            a *= Math.min(1, ramp);
            rgb = [o.lut[q * 3], o.lut[q * 3 + 1], o.lut[q * 3 + 2]];
          } else if (o.kind === 'prediction') {
            rgb = CLASS_RGB[volumes.seg[n]];
          } else if (o.kind === 'compare') {
            rgb = COMPARE_RGB[(volumes.seg[n] > 0 ? 1 : 0) + (volumes.gt[n] > 0 ? 2 : 0)];
          } else if (o.kind === 'ground-truth') {
            const c = volumes.gt[n];
            // outline: a labelled voxel whose in-plane neighbour has another label
            if (c && ((u > 0 && volumes.gt[n - du] !== c) || (u < w - 1 && volumes.gt[n + du] !== c) ||
                      (v > 0 && volumes.gt[n - dv] !== c) || (v < h - 1 && volumes.gt[n + dv] !== c))) rgb = CLASS_RGB[c];
          }
          if (!rgb) continue;
          r += (rgb[0] - r) * a; g += (rgb[1] - g) * a; b += (rgb[2] - b) * a;
        }
        const p = (v * w + u) * 4;
        px[p] = r; px[p + 1] = g; px[p + 2] = b; px[p + 3] = 255;
      }
    }
    return image;
  }

  function fitCanvas(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const height = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
    return dpr;
  }

  // Where a view's image sits in its canvas: uniform mm scale, centred.
  function layout(view, canvas) {
    const mmW = view.w * view.su, mmH = view.h * view.sv;
    const scale = Math.min(canvas.width / mmW, canvas.height / mmH) * 0.96; // px per mm
    return { scale, x0: (canvas.width - mmW * scale) / 2, y0: (canvas.height - mmH * scale) / 2,
      pw: view.su * scale, ph: view.sv * scale };
  }

  function drawView(name) {
    const view = VIEWS[name];
    const canvas = $('view-' + name);
    const dpr = fitCanvas(canvas);
    const ctx = canvas.getContext('2d');
    if (!view.buffer) { view.buffer = document.createElement('canvas'); view.buffer.width = view.w; view.buffer.height = view.h; }
    view.buffer.getContext('2d').putImageData(composeSlice(view), 0, 0);
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const L = layout(view, canvas);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(view.buffer, L.x0, L.y0, view.w * L.pw, view.h * L.ph);
    // crosshair, with a gap so the voxel under it stays visible
    const [su, sv] = view.screen(state.pos);
    const cx = L.x0 + (su + 0.5) * L.pw, cy = L.y0 + (sv + 0.5) * L.ph, gap = 10 * dpr;
    ctx.strokeStyle = 'rgba(77, 196, 255, 0.75)';
    ctx.lineWidth = dpr;
    ctx.beginPath();
    ctx.moveTo(L.x0, cy); ctx.lineTo(cx - gap, cy); ctx.moveTo(cx + gap, cy); ctx.lineTo(L.x0 + view.w * L.pw, cy);
    ctx.moveTo(cx, L.y0); ctx.lineTo(cx, cy - gap); ctx.moveTo(cx, cy + gap); ctx.lineTo(cx, L.y0 + view.h * L.ph);
    ctx.stroke();
    // patient directions at the middle of each edge
    ctx.font = `600 ${14 * dpr}px system-ui, sans-serif`;
    ctx.fillStyle = '#ffd27f';
    ctx.shadowColor = '#000'; ctx.shadowBlur = 3 * dpr;
    const [left, right, top, bottom] = view.labels, m = 8 * dpr;
    if (!DATA.image_2d) {
      ctx.textBaseline = 'middle';
      ctx.textAlign = 'left'; ctx.fillText(left, m, canvas.height / 2);
      ctx.textAlign = 'right'; ctx.fillText(right, canvas.width - m, canvas.height / 2);
      ctx.textAlign = 'center';
      ctx.textBaseline = 'top'; ctx.fillText(top, canvas.width / 2, m);
      ctx.textBaseline = 'bottom'; ctx.fillText(bottom, canvas.width / 2, canvas.height - m);
    }
    // background modality and a scale bar
    ctx.font = `${11 * dpr}px ui-monospace, monospace`;
    ctx.fillStyle = '#c9d1db';
    ctx.textAlign = 'left'; ctx.textBaseline = 'top';
    const axis = view.axis, k = original(axis, state.pos[axis]);
    ctx.fillText(DATA.channels[state.channel].name, m, m);
    // the longest of 1, 2, 5, 10 cm that takes at most a quarter of the width (clear of the 'P' / 'I')
    const cm = DATA.image_2d ? null : [10, 5, 2, 1].find((c) => c * 10 * L.scale <= canvas.width / 4);
    if (cm) {
      const bar = cm * 10 * L.scale, bx = canvas.width - m - bar, by = canvas.height - m - 4 * dpr;
      ctx.fillRect(bx, by, bar, 2 * dpr);
      ctx.textAlign = 'center'; ctx.textBaseline = 'bottom';
      ctx.fillText(`${cm} cm`, bx + bar / 2, by - 2 * dpr);
    }
    ctx.shadowBlur = 0;
    $('index-' + name).textContent = DATA.image_2d ? `${DATA.full_shape[1]} × ${DATA.full_shape[0]} pixels`
      : `${'xyz'[axis]} ${k} / ${DATA.full_shape[axis] - 1}`;
  }

  function updateText() {
    const k = original(2, state.pos[2]);
    if (!DATA.image_2d) $('caption-slice').textContent = String(k);
    if (DATA.slice_captions.length) $('caption').textContent = DATA.slice_captions[k] || '';
    for (const name of SHOWN) { const s = $('slider-' + name); s.value = String(state.pos[VIEWS[name].axis]); }
    const n = idx(state.pos[0], state.pos[1], state.pos[2]);
    // a 2D image is held turned for the axial view ([x, y] = image[H-1-y, W-1-x]): back to (row, column)
    const rows = DATA.image_2d
      ? [['Pixel (row, column)', `${DATA.full_shape[1] - 1 - original(1, state.pos[1])}, ${DATA.full_shape[0] - 1 - original(0, state.pos[0])}`]]
      : [['Voxel (RAS index)', state.pos.map((v, a) => original(a, v)).join(', ')],
        ['mm from voxel 0', state.pos.map((v, a) => (original(a, v) * SP[a] / DATA.stride).toFixed(1)).join(', ')]];
    DATA.channels.forEach((c, i) => {
      const q = volumes.channels[i][n]; // quantised: the value is approximate
      rows.push([c.name + ' (≈)', formatValue(c.lo + (q / 255) * (c.hi - c.lo), c.hi - c.lo)]);
    });
    rows.push(['Prediction', CLASS_NAME[volumes.seg[n]]]);
    if (volumes.gt) rows.push(['Ground truth', CLASS_NAME[volumes.gt[n]]]);
    for (const o of state.overlays) {
      if (o.kind === 'map') rows.push([o.name, formatValue(o.lo + (o.data[n] / 255) * (o.hi - o.lo), o.hi - o.lo)]);
    }
    $('readout').innerHTML = rows.map(([k2, v]) => `<tr><th>${escapeHtml(k2)}</th><td>${escapeHtml(v)}</td></tr>`).join('');
  }
  // As many decimals as the value's scale needs: 3 significant digits of the span (a map in [0, 0.05]
  // reads 0.0123, an intensity in [0, 900] reads 412).
  function formatValue(value, span) {
    const digits = Math.max(0, Math.min(8, 2 - Math.floor(Math.log10(Math.abs(span) || 1))));
    return (Math.abs(value) < Math.abs(span) * 1e-3 ? 0 : value).toFixed(digits); // no "-0.000"
  }
  function niceStep(span) {
    const raw = span / 4, e = Math.pow(10, Math.floor(Math.log10(raw)));
    return [1, 2, 2.5, 5, 10].map((f) => f * e).find((v) => v >= raw);
  }
  function escapeHtml(s) {
    return String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
  }

  let pending = null;
  function render() {
    if (pending) return;
    pending = requestAnimationFrame(() => {
      pending = null;
      for (const name of SHOWN) drawView(name);
      updateText();
    });
  }

  function bindView(name) {
    const view = VIEWS[name];
    const canvas = $('view-' + name);
    const moveTo = (event) => {
      const rect = canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
      const L = layout(view, canvas);
      const u = Math.floor(((event.clientX - rect.left) * dpr - L.x0) / L.pw);
      const v = Math.floor(((event.clientY - rect.top) * dpr - L.y0) / L.ph);
      const p = view.voxel(Math.max(0, Math.min(view.w - 1, u)), Math.max(0, Math.min(view.h - 1, v)), state.pos);
      state.pos = p;
      render();
    };
    canvas.addEventListener('pointerdown', (e) => { canvas.setPointerCapture(e.pointerId); moveTo(e); });
    canvas.addEventListener('pointermove', (e) => { if (e.buttons & 1) moveTo(e); });
    canvas.addEventListener('wheel', (e) => {
      e.preventDefault();
      step(view.axis, e.deltaY > 0 ? -1 : 1);
    }, { passive: false });
    const slider = $('slider-' + name);
    slider.max = String(DATA.shape[view.axis] - 1);
    slider.addEventListener('input', () => { state.pos[view.axis] = Number(slider.value); render(); });
  }
  function step(axis, delta) {
    state.pos[axis] = Math.max(0, Math.min(DATA.shape[axis] - 1, state.pos[axis] + delta));
    render();
  }

  function bindControls() {
    $('modality').addEventListener('change', (e) => { state.channel = Number(e.target.value); render(); });
    $('window-contrast').addEventListener('input', (e) => { state.contrast = Number(e.target.value) / 100; render(); });
    $('window-brightness').addEventListener('input', (e) => { state.brightness = Number(e.target.value); render(); });
    for (const o of state.overlays) {
      const box = $('overlay-' + o.slug), opacity = $('opacity-' + o.slug);
      const sync = () => {
        o.on = box.checked; o.opacity = Number(opacity.value) / 100;
        box.closest('.overlay').classList.toggle('off', !o.on);
        render();
      };
      box.addEventListener('change', sync);
      opacity.addEventListener('input', sync);
      sync();
    }
    // "Slices to review first": a button per axial slice (original index) moves the axial view there.
    for (const button of document.querySelectorAll('button[data-axial-slice]')) {
      button.addEventListener('click', () => {
        const k = Math.round((Number(button.dataset.axialSlice) - DATA.offset[2]) / DATA.stride);
        state.pos[2] = Math.max(0, Math.min(DATA.shape[2] - 1, k));
        render();
      });
    }
    for (const bar of document.querySelectorAll('canvas[data-colormap]')) {
      const lut = colormap(bar.dataset.colormap), ctx = bar.getContext('2d');
      for (let i = 0; i < 256; i++) { ctx.fillStyle = `rgb(${lut[i * 3]},${lut[i * 3 + 1]},${lut[i * 3 + 2]})`; ctx.fillRect(i, 0, 1, bar.height); }
    }
  }

  // ------------------------------------------------------------------------------- curves
  function plotCurve(kind, curve) {
    const el = $('plot-' + kind);
    if (!el) return;
    const W = 600, H = 270, l = 50, r = 14, t = 30, b = 40;
    const all = curve.saliency.concat(curve.random).filter((v) => v !== null);
    let lo = Math.min(0, ...all), hi = Math.max(...all);
    if (hi - lo < 1e-9) hi = lo + 1;
    const yStep = niceStep(hi - lo);
    lo = Math.floor(lo / yStep + 1e-9) * yStep; hi = Math.ceil(hi / yStep - 1e-9) * yStep;
    // Geometric fractions (0, then a constant ratio up to 1) get a log x axis with 0 at its left
    // end; evenly spaced ones a linear axis.
    const fr = curve.fractions, n = fr.length, span = fr[n - 1] - fr[0];
    const even = fr.every((f, i) => Math.abs(f - fr[0] - i * span / (n - 1)) < 1e-4 * Math.max(span, 1e-9));
    const logX = !even && n > 2 && fr[0] === 0 && fr[1] > 0;
    const zeroGap = 0.08, decades = logX ? Math.log(fr[n - 1] / fr[1]) : 1;
    const pos = logX ? (f) => (f <= 0 ? 0 : zeroGap + (1 - zeroGap) * Math.log(f / fr[1]) / decades) : (f) => f;
    const sx = (f) => l + pos(f) * (W - l - r), sy = (v) => t + (1 - (v - lo) / (hi - lo)) * (H - t - b);
    const path = (ys) => fr.map((f, i) => `${i ? 'L' : 'M'}${sx(f).toFixed(1)},${sy(ys[i]).toFixed(1)}`).join('');
    const ticks = logX ? [[0, '0']] : [0, 1, 2, 3, 4].map((i) => [i / 4, (i / 4).toFixed(2)]);
    if (logX) {  // the powers of ten from the largest fraction down to the smallest non-zero one
      for (let p = 1; p >= fr[1] * (1 - 1e-9); p /= 10) {
        if (p <= fr[n - 1] * (1 + 1e-9)) ticks.splice(1, 0, [p, `${+(p * 100).toPrecision(2)}%`]);
      }
    }
    let grid = '';
    for (const [f, text] of ticks) {
      grid += `<line x1="${sx(f)}" y1="${t}" x2="${sx(f)}" y2="${H - b}" stroke="#262d38"/>` +
        `<text x="${sx(f)}" y="${H - b + 16}" text-anchor="middle">${text}</text>`;
    }
    for (let v = lo; v <= hi + yStep / 2; v += yStep) {
      grid += `<line x1="${l}" y1="${sy(v)}" x2="${W - r}" y2="${sy(v)}" stroke="#262d38"/>` +
        `<text x="${l - 7}" y="${sy(v) + 4}" text-anchor="end">${formatValue(v, yStep * 4)}</text>`;
    }
    const area = `${path(curve.saliency)}L${sx(curve.fractions[curve.fractions.length - 1])},${sy(lo)}L${sx(curve.fractions[0])},${sy(lo)}Z`;
    const label = curve.score || DATA.score_label || 'model score';
    el.innerHTML = `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${kind} curve">${grid}` +
      `<path d="${area}" fill="rgba(77,163,255,0.12)"/>` +
      `<path d="${path(curve.random)}" fill="none" stroke="#9aa4b1" stroke-width="1.6" stroke-dasharray="5 4"/>` +
      `<path d="${path(curve.saliency)}" fill="none" stroke="#4da3ff" stroke-width="2.2"/>` +
      `<text x="${(l + W - r) / 2}" y="${H - 6}" text-anchor="middle">fraction of voxels ${kind === 'deletion' ? 'removed' : 'restored'}${logX ? ' (log scale)' : ''}</text>` +
      `<text class="axis-label" x="${l - 40}" y="14">${escapeHtml(label)}</text></svg>`;
  }

  // ------------------------------------------------------------------------------- 3D view
  function mat3mul(a, b) {
    const out = new Array(9);
    for (let r = 0; r < 3; r++) for (let c = 0; c < 3; c++) out[r * 3 + c] = a[r * 3] * b[c] + a[r * 3 + 1] * b[3 + c] + a[r * 3 + 2] * b[6 + c];
    return out;
  }
  const rotX = (a) => [1, 0, 0, 0, Math.cos(a), -Math.sin(a), 0, Math.sin(a), Math.cos(a)];
  const rotY = (a) => [Math.cos(a), 0, Math.sin(a), 0, 1, 0, -Math.sin(a), 0, Math.cos(a)];
  // Patient (R, A, S) -> view (right, up, toward the viewer), looking at the patient's face:
  // the patient's left is on the viewer's right, superior is up, anterior points at the viewer.
  const FACING = [-1, 0, 0, 0, 0, 1, 0, 1, 0];
  const HOME = mat3mul(rotX(0.42), mat3mul(rotY(-0.75), FACING));

  function Scene(canvas, meshes) {
    this.canvas = canvas; this.meshes = meshes; this.rotation = HOME.slice(); this.zoom = 1;
    const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
    for (const m of meshes) {
      for (let i = 0; i < m.pos.length; i += 3) for (let a = 0; a < 3; a++) {
        lo[a] = Math.min(lo[a], m.pos[i + a]); hi[a] = Math.max(hi[a], m.pos[i + a]);
      }
    }
    this.center = lo.map((v, a) => (v + hi[a]) / 2);
    // the bounding sphere about the box centre: every rotation fits, and it is tighter than the box
    let r2 = 1;
    for (const m of meshes) {
      for (let i = 0; i < m.pos.length; i += 3) {
        r2 = Math.max(r2, (m.pos[i] - this.center[0]) ** 2 + (m.pos[i + 1] - this.center[1]) ** 2 + (m.pos[i + 2] - this.center[2]) ** 2);
      }
    }
    this.radius = Math.sqrt(r2);
  }

  Scene.prototype.draw = function () {
    const canvas = this.canvas, dpr = fitCanvas(canvas), W = canvas.width, H = canvas.height;
    const ctx = canvas.getContext('2d');
    if (!this.buffers || this.buffers.W !== W || this.buffers.H !== H) this.buffers = allocate(W, H, this.meshes.length);
    const { image, background, depth } = this.buffers, px = image.data;
    px.set(background);
    depth.fill(-Infinity);
    const R = this.rotation, scale = this.zoom * Math.min(W, H) * 0.48 / this.radius;
    const light = [-0.35, 0.45, 0.82], lightN = Math.hypot(...light);
    const L = light.map((v) => v / lightN), Hh = [L[0], L[1], L[2] + 1].map((v, _, a) => v / Math.hypot(a[0], a[1], a[2]));
    const visible = this.meshes.filter((m) => m.on && m.faces.length);
    const opaque = visible.filter((m) => m.opacity >= 1), clear = visible.filter((m) => m.opacity < 1);
    const layers = this.buffers.layers.slice(0, clear.length);
    for (const layer of layers) layer.z.fill(-Infinity);
    const c = this.center;
    const rasterise = (m, layer) => {
      const nv = m.pos.length / 3, sx = new Float32Array(nv), sy = new Float32Array(nv), sz = new Float32Array(nv);
      const shade = new Float32Array(nv), facing = new Float32Array(nv);
      for (let v = 0; v < nv; v++) {
        const x = m.pos[3 * v] - c[0], y = m.pos[3 * v + 1] - c[1], z = m.pos[3 * v + 2] - c[2];
        sx[v] = W / 2 + scale * (R[0] * x + R[1] * y + R[2] * z);
        sy[v] = H / 2 - scale * (R[3] * x + R[4] * y + R[5] * z);
        sz[v] = R[6] * x + R[7] * y + R[8] * z;
        let nx = R[0] * m.nrm[3 * v] + R[1] * m.nrm[3 * v + 1] + R[2] * m.nrm[3 * v + 2];
        let ny = R[3] * m.nrm[3 * v] + R[4] * m.nrm[3 * v + 1] + R[5] * m.nrm[3 * v + 2];
        let nz = R[6] * m.nrm[3 * v] + R[7] * m.nrm[3 * v + 1] + R[8] * m.nrm[3 * v + 2];
        if (nz < 0) { nx = -nx; ny = -ny; nz = -nz; } // two-sided lighting
        const diffuse = Math.max(0, nx * L[0] + ny * L[1] + nz * L[2]);
        const spec = Math.pow(Math.max(0, nx * Hh[0] + ny * Hh[1] + nz * Hh[2]), 40);
        shade[v] = 0.22 + 0.78 * diffuse + 0.35 * spec;
        facing[v] = nz;
      }
      const F = m.faces;
      for (let f = 0; f < F.length; f += 3) {
        const a = F[f], b = F[f + 1], d = F[f + 2];
        const area = (sx[b] - sx[a]) * (sy[d] - sy[a]) - (sx[d] - sx[a]) * (sy[b] - sy[a]);
        if (area === 0) continue;
        const minX = Math.max(0, Math.floor(Math.min(sx[a], sx[b], sx[d]))), maxX = Math.min(W - 1, Math.ceil(Math.max(sx[a], sx[b], sx[d])));
        const minY = Math.max(0, Math.floor(Math.min(sy[a], sy[b], sy[d]))), maxY = Math.min(H - 1, Math.ceil(Math.max(sy[a], sy[b], sy[d])));
        const inv = 1 / area;
        for (let y = minY; y <= maxY; y++) {
          const py = y + 0.5;
          for (let x = minX; x <= maxX; x++) {
            const qx = x + 0.5;
            const w0 = ((sx[b] - qx) * (sy[d] - py) - (sx[d] - qx) * (sy[b] - py)) * inv;
            const w1 = ((sx[d] - qx) * (sy[a] - py) - (sx[a] - qx) * (sy[d] - py)) * inv;
            const w2 = 1 - w0 - w1;
            if (w0 < 0 || w1 < 0 || w2 < 0) continue;
            const z = w0 * sz[a] + w1 * sz[b] + w2 * sz[d], p = y * W + x;
            if (z <= depth[p]) continue;
            const s = w0 * shade[a] + w1 * shade[b] + w2 * shade[d];
            if (!layer) {
              depth[p] = z;
              const q = 4 * p;
              px[q] = m.rgb[0] * s; px[q + 1] = m.rgb[1] * s; px[q + 2] = m.rgb[2] * s;
            } else if (z > layer.z[p]) {
              layer.z[p] = z; layer.s[p] = s; layer.f[p] = w0 * facing[a] + w1 * facing[b] + w2 * facing[d];
            }
          }
        }
      }
    };
    for (const m of opaque) rasterise(m, null);
    clear.forEach((m, i) => rasterise(m, layers[i]));
    const order = new Int32Array(clear.length);
    for (let p = 0; clear.length && p < W * H; p++) {
      let n = 0;
      for (let i = 0; i < clear.length; i++) { // insertion sort of the fragments, far to near
        const z = layers[i].z[p];
        if (z <= depth[p]) continue;
        let j = n++;
        while (j > 0 && layers[order[j - 1]].z[p] > z) { order[j] = order[j - 1]; j--; }
        order[j] = i;
      }
      const q = 4 * p;
      for (let o = 0; o < n; o++) {
        const i = order[o], m = clear[i], s = layers[i].s[p], rim = 1 - layers[i].f[p];
        const a = Math.min(1, m.opacity + (1 - m.opacity) * 0.55 * rim * rim); // glass-like rims
        px[q] += (m.rgb[0] * s - px[q]) * a; px[q + 1] += (m.rgb[1] * s - px[q + 1]) * a; px[q + 2] += (m.rgb[2] * s - px[q + 2]) * a;
      }
    }
    ctx.putImageData(image, 0, 0);
    this.drawAxes(ctx, dpr);
  };

  // An orientation triad in the corner: patient R, A, S axes as the current rotation shows them.
  Scene.prototype.drawAxes = function (ctx, dpr) {
    const R = this.rotation, len = 26 * dpr, ox = this.canvas.width - 44 * dpr, oy = this.canvas.height - 52 * dpr;
    const axes = [['R', [1, 0, 0], '#ff6b5e'], ['A', [0, 1, 0], '#3ddc84'], ['S', [0, 0, 1], '#4da3ff']];
    const depthOf = (v) => R[6] * v[0] + R[7] * v[1] + R[8] * v[2];
    axes.sort((p, q) => depthOf(p[1]) - depthOf(q[1]));
    ctx.lineWidth = 2 * dpr; ctx.font = `600 ${11 * dpr}px system-ui, sans-serif`;
    ctx.textAlign = 'center'; ctx.textBaseline = 'middle';
    for (const [label, v, color] of axes) {
      const x = ox + len * (R[0] * v[0] + R[1] * v[1] + R[2] * v[2]), y = oy - len * (R[3] * v[0] + R[4] * v[1] + R[5] * v[2]);
      ctx.strokeStyle = color; ctx.fillStyle = color;
      ctx.beginPath(); ctx.moveTo(ox, oy); ctx.lineTo(x, y); ctx.stroke();
      ctx.fillText(label, ox + (x - ox) * 1.35, oy + (y - oy) * 1.35);
    }
  };

  // Per canvas size: the frame, its background (a dark vertical gradient), the depth buffer and one
  // front-fragment layer per possible transparent surface; kept between frames.
  function allocate(W, H, count) {
    const image = new ImageData(W, H), background = new Uint8ClampedArray(W * H * 4);
    for (let y = 0, p = 0; y < H; y++) {
      const g = 1 - y / H;
      for (let x = 0; x < W; x++, p += 4) { background[p] = 10 + 18 * g; background[p + 1] = 13 + 22 * g; background[p + 2] = 18 + 30 * g; background[p + 3] = 255; }
    }
    const layers = Array.from({ length: count }, () => ({ z: new Float32Array(W * H), s: new Float32Array(W * H), f: new Float32Array(W * H) }));
    return { W, H, image, background, depth: new Float32Array(W * H), layers };
  }

  function vertexNormals(pos, faces) {
    const n = new Float32Array(pos.length);
    for (let f = 0; f < faces.length; f += 3) {
      const a = 3 * faces[f], b = 3 * faces[f + 1], c = 3 * faces[f + 2];
      const ux = pos[b] - pos[a], uy = pos[b + 1] - pos[a + 1], uz = pos[b + 2] - pos[a + 2];
      const vx = pos[c] - pos[a], vy = pos[c + 1] - pos[a + 1], vz = pos[c + 2] - pos[a + 2];
      const cx = uy * vz - uz * vy, cy = uz * vx - ux * vz, cz = ux * vy - uy * vx; // area-weighted
      for (const i of [a, b, c]) { n[i] += cx; n[i + 1] += cy; n[i + 2] += cz; }
    }
    for (let i = 0; i < n.length; i += 3) {
      const l = Math.hypot(n[i], n[i + 1], n[i + 2]) || 1;
      n[i] /= l; n[i + 1] /= l; n[i + 2] /= l;
    }
    return n;
  }

  function bind3d(scene) {
    const canvas = scene.canvas;
    let queued = false, last = null;
    const redraw = () => { if (!queued) { queued = true; requestAnimationFrame(() => { queued = false; scene.draw(); }); } };
    canvas.addEventListener('pointerdown', (e) => { last = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); canvas.classList.add('dragging'); });
    canvas.addEventListener('pointerup', () => { last = null; canvas.classList.remove('dragging'); });
    canvas.addEventListener('pointermove', (e) => {
      if (!last || !(e.buttons & 1)) return;
      const dx = e.clientX - last[0], dy = e.clientY - last[1];
      last = [e.clientX, e.clientY];
      scene.rotation = mat3mul(rotX(dy * 0.01), mat3mul(rotY(dx * 0.01), scene.rotation));
      redraw();
    });
    canvas.addEventListener('wheel', (e) => {
      e.preventDefault();
      scene.zoom = Math.max(0.3, Math.min(6, scene.zoom * (e.deltaY > 0 ? 0.9 : 1.1)));
      redraw();
    }, { passive: false });
    $('reset3d').addEventListener('click', () => { scene.rotation = HOME.slice(); scene.zoom = 1; redraw(); });
    for (const m of scene.meshes) $('mesh-' + m.slug).addEventListener('change', (e) => { m.on = e.target.checked; redraw(); });
    return redraw;
  }

  // ------------------------------------------------------------------------------- start
  async function start() {
    const [channels, seg, gt, mapData, meshData] = await Promise.all([
      Promise.all(DATA.channels.map((c) => inflate(c.data))),
      inflate(DATA.segmentation),
      DATA.ground_truth ? inflate(DATA.ground_truth) : null,
      Promise.all(DATA.maps.map((m) => inflate(m.data))),
      Promise.all(DATA.meshes.map((m) => Promise.all([inflate(m.vertices), inflate(m.faces)]))),
    ]);
    Object.assign(volumes, { channels, seg, gt });
    state.overlays.push({ slug: 'prediction', kind: 'prediction', name: 'Prediction' });
    if (volumes.gt) {
      state.overlays.push({ slug: 'compare', kind: 'compare', name: 'Prediction vs ground truth' });
      state.overlays.push({ slug: 'ground-truth', kind: 'ground-truth', name: 'Ground truth' });
    }
    const maps = DATA.maps.map((m, i) => ({ slug: m.slug, kind: 'map', name: m.name, lo: m.lo, hi: m.hi, lut: colormap(m.colormap), data: mapData[i] }));
    state.overlays.unshift(...maps); // maps first, so labels and outlines draw on top of them
    bindControls();
    for (const name of SHOWN) bindView(name);
    for (const kind in DATA.curves) plotCurve(kind, DATA.curves[kind]);
    if (DATA.meshes.length) {
      const meshes = DATA.meshes.map((m, i) => {
        const pos = new Float32Array(meshData[i][0].buffer), faces = new Uint32Array(meshData[i][1].buffer);
        return { slug: m.slug, name: m.name, rgb: hexRgb(m.color), opacity: m.opacity, on: true, pos, faces, nrm: vertexNormals(pos, faces) };
      });
      const redraw3d = bind3d(new Scene($('view3d'), meshes));
      new ResizeObserver(redraw3d).observe($('view3d'));
    }
    for (const name of SHOWN) new ResizeObserver(render).observe($('view-' + name));
    render();
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    $('loading').classList.add('done');
    document.documentElement.dataset.ready = 'true'; // tests wait for this
  }

  start().catch((error) => {
    const box = $('loading');
    box.classList.add('error');
    box.textContent = 'This report could not be displayed: ' + error.message;
    console.error(error);
  });
})();
