// The explorer of one generation (illustrated_sd.explorer writes the data this reads).
// Everything is in the page: no request leaves it, so it works opened from disk, offline.
(() => {
  "use strict";
  const D = JSON.parse(document.getElementById("isd-data").textContent);
  const $ = (id) => document.getElementById(id);

  // The arrays travel as base64 float16 (half the bytes of float32, precise enough to look at).
  function halves(b64) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const u16 = new Uint16Array(bytes.buffer);
    const out = new Float32Array(u16.length);
    for (let i = 0; i < u16.length; i++) {
      const h = u16[i], sign = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
      out[i] = e === 0 ? sign * f * 2 ** -24 : e === 31 ? (f ? NaN : sign * Infinity) : sign * (1 + f / 1024) * 2 ** (e - 15);
    }
    return out;
  }
  // A share as a percentage a reader can compare: small ones keep two significant digits, not "0.0%".
  const percent = (p) => (p >= 0.001 ? (100 * p).toFixed(1) : (100 * p).toPrecision(2)) + "%";
  const hex = (c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));
  const HEAT = D.colormaps.heat.map(hex), SIGNED = D.colormaps.signed.map(hex);

  const groups = D.groups.map((g) => ({ ...g, values: halves(g.data) }));  // [s, h, w, T]
  const latents = { ...D.latents, values: halves(D.latents.data) };         // [s, C, h, w]
  const noise = { ...D.noise, values: halves(D.noise.data) };
  const guidance = D.guidance && { ...D.guidance, values: halves(D.guidance.data) };  // [s, h, w]
  const T = D.tokens.length;
  const state = { k: D.steps.length - 1, token: 0, group: 0, pixel: null, timer: null };

  // An [h, w] grid painted with a colour map into a small canvas, then drawn scaled (smoothly) onto `target`.
  function paint(target, h, w, value, colours, under) {
    const small = document.createElement("canvas");
    small.width = w; small.height = h;
    const sctx = small.getContext("2d"), img = sctx.createImageData(w, h);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      const v = Math.max(0, Math.min(1, value(y, x))), c = colours[Math.round(v * 255)], o = 4 * (y * w + x);
      img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = under ? 170 : 255;
    }
    sctx.putImageData(img, 0, 0);
    const ctx = target.getContext("2d");
    ctx.clearRect(0, 0, target.width, target.height);
    if (under) {  // the final image in grey beneath the heat, so one sees what the heat lies on
      ctx.filter = "grayscale(1)";
      ctx.drawImage(under, 0, 0, target.width, target.height);
      ctx.filter = "none";
    }
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(small, 0, 0, target.width, target.height);
  }

  // Attention of slot t at cell (y, x) of the chosen group, at the chosen step.
  function attention(g, y, x, t) {
    return g.values[((state.k * g.h + y) * g.w + x) * T + t];
  }

  // Each slot's share of all the attention at this step and group: the mean over the grid's cells.
  function shares() {
    const g = groups[state.group], out = new Float64Array(T);
    for (let y = 0; y < g.h; y++) for (let x = 0; x < g.w; x++) for (let t = 0; t < T; t++) out[t] += attention(g, y, x, t);
    return Array.from(out, (v) => v / (g.h * g.w));
  }

  function drawTokens() {
    const list = $("isd-token-list"), share = groups.length ? shares() : null;
    list.replaceChildren(...D.tokens.map((label, t) => {
      const li = document.createElement("li"), b = document.createElement("button");
      b.type = "button";
      b.dataset.token = t;
      b.className = t === state.token ? "isd-selected" : "";
      b.textContent = share ? `${t}: ${label}  ${percent(share[t])}` : `${t}: ${label}`;
      if (share) {
        const bar = document.createElement("span");
        bar.className = "isd-bar";
        bar.style.width = `${Math.min(100, 100 * share[t])}%`;
        b.append(bar);
      }
      b.addEventListener("click", () => { state.token = t; draw(); });
      li.append(b);
      return li;
    }));
    if (share) {
      const li = document.createElement("li");
      const rest = 1 - share.reduce((a, b) => a + b, 0);
      li.textContent = `padding slots: ${percent(Math.max(0, rest))}`;
      list.append(li);
    }
  }

  function drawHeat() {
    const canvas = $("isd-heat"), caption = $("isd-heat-caption");
    if (!groups.length) {
      caption.textContent = "no cross-attention maps in this trace (generate with RecordOptions(cross_attention=True))";
      return;
    }
    const g = groups[state.group];
    let max = 1e-8;
    for (let y = 0; y < g.h; y++) for (let x = 0; x < g.w; x++) max = Math.max(max, attention(g, y, x, state.token));
    paint(canvas, g.h, g.w, (y, x) => attention(g, y, x, state.token) / max, HEAT, $("isd-image"));
    if (state.pixel) {  // outline the cell the hover list speaks of
      const ctx = canvas.getContext("2d"), cw = canvas.width / g.w, ch = canvas.height / g.h;
      ctx.strokeStyle = "#0f0"; ctx.lineWidth = 2;
      ctx.strokeRect(Math.floor(state.pixel.fx * g.w) * cw, Math.floor(state.pixel.fy * g.h) * ch, cw, ch);
    }
    caption.textContent = `"${D.tokens[state.token]}" at this step, ${g.name} (scaled to its maximum, ${percent(max)})`;
  }

  function drawGuidance() {
    const canvas = $("isd-guidance"), caption = $("isd-guidance-caption");
    if (!guidance) {
      caption.textContent = "no guidance in this generation (scale ≤ 1): nothing to compare";
      return;
    }
    const { h, w, values } = guidance, off = state.k * h * w;
    paint(canvas, h, w, (y, x) => values[off + y * w + x] / guidance.max, HEAT, null);
    caption.textContent = `where the prompt pushes: ‖ε_text − ε_uncond‖ per latent pixel (scale: 0 to ${guidance.max.toFixed(2)}, the largest over all steps)`;
  }

  function drawChannels(holder, a) {
    if (holder.children.length !== a.c) {
      holder.replaceChildren(...Array.from({ length: a.c }, (_, c) => {
        const canvas = document.createElement("canvas");
        canvas.width = 96; canvas.height = 96; canvas.title = `channel ${c}`;
        return canvas;
      }));
    }
    for (let c = 0; c < a.c; c++) {
      const off = (state.k * a.c + c) * a.h * a.w;
      paint(holder.children[c], a.h, a.w, (y, x) => 0.5 + 0.5 * a.values[off + y * a.w + x] / a.scale[c], SIGNED, null);
    }
  }

  function drawHover() {
    const where = $("isd-hover-where"), list = $("isd-hover-list");
    if (!state.pixel || !groups.length) {
      list.replaceChildren();
      return;
    }
    const g = groups[state.group], y = Math.min(g.h - 1, Math.floor(state.pixel.fy * g.h)), x = Math.min(g.w - 1, Math.floor(state.pixel.fx * g.w));
    const slots = D.tokens.map((label, t) => [`${t}: ${label}`, attention(g, y, x, t)]);
    // The padding slots after the end marker take the rest: at coarse layers often the most of all.
    slots.push(["padding slots", Math.max(0, 1 - slots.reduce((a, s) => a + s[1], 0))]);
    const ranked = slots.sort((a, b) => b[1] - a[1]).slice(0, 8);
    where.textContent = `cell (row ${y}, column ${x}) of the ${g.h}×${g.w} grid, at this step:`;
    list.replaceChildren(...ranked.map(([label, p]) => {
      const li = document.createElement("li");
      li.textContent = `${label}  ${percent(p)}`;
      return li;
    }));
  }

  function draw() {
    const k = state.k, step = D.steps[k];
    $("isd-step").value = k;
    $("isd-step-label").textContent = `step ${step + 1} of ${D.num_steps}, t = ${D.timesteps[k]}, ᾱ = ${D.alpha_bars[k]}`;
    $("isd-x0").src = D.x0[k];
    $("isd-x0").dataset.step = step;
    $("isd-x0-caption").textContent = D.x0_decoded ? "x̂₀: the clean picture the model believes in at this step"
      : "x̂₀ (latent channels 0–2 as colours): what the model believes at this step";
    drawTokens(); drawHeat(); drawGuidance(); drawHover();
    drawChannels($("isd-latents"), latents); drawChannels($("isd-noise"), noise);
  }

  function setPixel(event, element) {
    const r = element.getBoundingClientRect();
    state.pixel = { fx: Math.min(0.999, Math.max(0, (event.clientX - r.left) / r.width)), fy: Math.min(0.999, Math.max(0, (event.clientY - r.top) / r.height)) };
    drawHeat(); drawHover();
  }

  function stop() {
    clearInterval(state.timer);
    state.timer = null;
    $("isd-play").textContent = "▶ play";
  }

  // The token shown first: the word whose heatmap at the last step is strong and concentrated (peak times
  // peak over mean): a word that found its place, not an article that pixels attend to everywhere, nor a
  // word with a sharp but tiny map (as TraceExplorer chooses in a notebook).
  if (groups.length && T > 2) {
    const g = groups[0];
    let best = -1;
    for (let t = 1; t < T - 1; t++) {
      let peak = 0, sum = 1e-12;
      for (let y = 0; y < g.h; y++) for (let x = 0; x < g.w; x++) { const a = attention(g, y, x, t); peak = Math.max(peak, a); sum += a; }
      const score = peak * peak * g.h * g.w / sum;
      if (score > best) { best = score; state.token = t; }
    }
  }

  // ---- wiring ----
  $("isd-step").max = D.steps.length - 1;
  $("isd-step").addEventListener("input", (e) => { state.k = Number(e.target.value); draw(); });
  $("isd-group").replaceChildren(...groups.map((g, i) => new Option(g.name, i)));
  $("isd-group").addEventListener("change", (e) => { state.group = Number(e.target.value); draw(); });
  $("isd-play").addEventListener("click", () => {
    if (state.timer) return stop();
    if (state.k === D.steps.length - 1) state.k = 0;  // play from the start once at the end
    $("isd-play").textContent = "❚❚ pause";
    draw();
    state.timer = setInterval(() => {
      if (state.k >= D.steps.length - 1) return stop();
      state.k += 1;
      draw();
    }, 300);
  });
  for (const element of document.querySelectorAll("#isd-explorer .isd-pixel")) {
    element.addEventListener("pointermove", (e) => setPixel(e, element));
    element.addEventListener("pointerdown", (e) => setPixel(e, element));  // a tap on a touch screen
  }
  $("isd-image").src = D.image;
  // The heatmap paints over the final image: draw once it has loaded (a data URI loads at once, but not synchronously).
  if ($("isd-image").complete) draw(); else $("isd-image").addEventListener("load", draw, { once: true });
})();
