// The explorer of one generation (illustrated_sd.explorer writes the data this reads).
// Everything is in the page: no request leaves it, so it works opened from disk, offline.
// One script for both families: what differs (SD's cross-attention of each prompt slot, a transformer's joint
// attention of each word) is one "lens" object, chosen by the data's `kind`; the slider, the pictures, the
// latents and the guidance are drawn the same way for both.
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

  const latents = { ...D.latents, values: halves(D.latents.data) };  // [s, C, h, w]
  const guidance = D.guidance && { ...D.guidance, values: halves(D.guidance.data) };  // [s, h, w]
  const state = { k: D.steps.length - 1, pick: 0, group: 0, pixel: null, timer: null };

  // An [h, w] grid painted with a colour map into a small canvas, then drawn scaled onto `target`: smoothly, or
  // (`blocks`) each cell a square, as a transformer's image tokens are.
  function paint(target, h, w, value, colours, under, blocks = false) {
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
    ctx.imageSmoothingEnabled = !blocks;
    ctx.drawImage(small, 0, 0, target.width, target.height);
  }

  // A heat of `grid` (h, w, at(y, x)) scaled to its maximum over the final image, the hovered cell outlined;
  // returns the maximum.
  function drawMap(canvas, grid, at, blocks) {
    let max = 1e-8;
    for (let y = 0; y < grid.h; y++) for (let x = 0; x < grid.w; x++) max = Math.max(max, at(y, x));
    paint(canvas, grid.h, grid.w, (y, x) => at(y, x) / max, HEAT, $("isd-image"), blocks);
    if (state.pixel) {
      const ctx = canvas.getContext("2d"), cw = canvas.width / grid.w, ch = canvas.height / grid.h;
      ctx.strokeStyle = "#0f0"; ctx.lineWidth = 2;
      ctx.strokeRect(Math.floor(state.pixel.fx * grid.w) * cw, Math.floor(state.pixel.fy * grid.h) * ch, cw, ch);
    }
    return max;
  }

  // The entry to open on: the one whose heat at the last step is strong and concentrated (peak times peak over
  // mean): a word that found its place, not an article that pixels attend to everywhere, nor a word with a sharp
  // but tiny map (as TraceExplorer chooses in a notebook).
  function telling(candidates, grid, at) {
    let best = -1, chosen = candidates.length ? candidates[0] : 0;
    for (const t of candidates) {
      let peak = 0, sum = 1e-12;
      for (let y = 0; y < grid.h; y++) for (let x = 0; x < grid.w; x++) { const a = at(t, y, x); peak = Math.max(peak, a); sum += a; }
      const score = peak * peak * grid.h * grid.w / sum;
      if (score > best) { best = score; chosen = t; }
    }
    return chosen;
  }

  // ---- SD 1/2/XL: each prompt slot's cross-attention, per layer group (all layers, each resolution) ----
  function unetLens() {
    const groups = D.groups.map((g) => ({ ...g, values: halves(g.data) }));  // [s, h, w, T]
    const T = D.tokens.length;
    const attention = (g, y, x, t, k = state.k) => g.values[((k * g.h + y) * g.w + x) * T + t];
    return {
      listTitle: "Tokens", listNote: "(share of the attention at this step)", hoverTitle: "This pixel asks about",
      predictionTitle: "The predicted noise ε at this step", prediction: D.noise,
      groups: groups.map((g) => g.name), hasMaps: groups.length > 0,
      labels: D.tokens.map((label, t) => `${t}: ${label}`),
      grid: () => groups[state.group],
      stepLabel: (k) => `t = ${D.timesteps[k]}, ᾱ = ${D.alpha_bars[k]}`,
      // the slots between the start and the end marker
      first: () => (T > 2 ? telling(D.tokens.slice(1, -1).map((_, i) => i + 1), groups[0],
        (t, y, x) => attention(groups[0], y, x, t, D.steps.length - 1)) : 0),
      // Each slot's share of all the attention at this step and group (the mean over the grid's cells); the padding
      // slots after the end marker take the rest.
      shares() {
        const g = groups[state.group], out = new Float64Array(T);
        for (let y = 0; y < g.h; y++) for (let x = 0; x < g.w; x++) for (let t = 0; t < T; t++) out[t] += attention(g, y, x, t);
        const share = Array.from(out, (v) => v / (g.h * g.w));
        return { share, extra: [["padding slots", Math.max(0, 1 - share.reduce((a, b) => a + b, 0))]] };
      },
      drawHeat() {
        const g = groups[state.group];
        const max = drawMap($("isd-heat"), g, (y, x) => attention(g, y, x, state.pick), false);
        $("isd-heat-caption").textContent = `"${D.tokens[state.pick]}" at this step, ${g.name} (scaled to its maximum, ${percent(max)})`;
      },
      noMaps: "no cross-attention maps in this trace (generate with RecordOptions(cross_attention=True))",
      // The slots one cell attends to; the padding slots after the end marker take the rest: at coarse layers often the most of all.
      at(y, x) {
        const g = groups[state.group], slots = D.tokens.map((label, t) => [`${t}: ${label}`, attention(g, y, x, t)]);
        slots.push(["padding slots", Math.max(0, 1 - slots.reduce((a, s) => a + s[1], 0))]);
        return { entries: slots, where: `cell (row ${y}, column ${x}) of the ${g.h}×${g.w} grid, at this step:` };
      },
    };
  }

  // ---- SD3 / Flux: the joint attention's quadrants, per word, per layer group (all; double- or single-stream) ----
  function flowLens() {
    const [gh, gw] = D.grid, N = gh * gw, W = D.words.length;
    const groups = D.joint.map((g) => ({
      name: g.name, reads: halves(g.image_to_text), padding: halves(g.padding),  // [s, W, gh, gw], [s, gh, gw]
      readFrom: g.text_to_image && halves(g.text_to_image),                       // [s, W, gh, gw] or null
    }));
    const grid = { h: gh, w: gw };
    // image→text: the share of patch (y, x)'s whole attention that goes to word w (its tokens summed), at step k.
    const reads = (g, w, y, x, k = state.k) => g.reads[((k * W + w) * gh + y) * gw + x];
    const padding = (g, y, x) => g.padding[(state.k * gh + y) * gw + x];
    const word = (w) => D.words[w];
    return {
      listTitle: "Words", listNote: "(the picture's attention to each, this step)", hoverTitle: "This patch reads",
      predictionTitle: "The velocity v̂ at this step (x_next = x + (σ_next − σ)·v̂)", prediction: D.velocity,
      groups: groups.map((g) => g.name), hasMaps: true, labels: D.words, grid: () => grid,
      stepLabel: (k) => `σ = ${D.sigmas[k]}, t = ${D.timesteps[k]}`,
      // the words, not the marker tokens
      first: () => telling(D.words.map((_, w) => w).filter((w) => !D.markers.includes(w)), grid,
        (w, y, x) => reads(groups[0], w, y, x, D.steps.length - 1)),
      // Each word's share of the picture's attention (the mean over patches); the padding and the picture's own
      // patches take the rest of it.
      shares() {
        const g = groups[state.group], share = new Array(W).fill(0);
        let pad = 0;
        for (let y = 0; y < gh; y++) for (let x = 0; x < gw; x++) {
          for (let w = 0; w < W; w++) share[w] += reads(g, w, y, x) / N;
          pad += padding(g, y, x) / N;
        }
        const text = share.reduce((a, b) => a + b, 0) + pad;
        return { share, extra: [[`padding (${D.padding_slots} slots)`, pad], ["the picture's own patches", Math.max(0, 1 - text)]] };
      },
      drawHeat() {
        const g = groups[state.group];
        const max = drawMap($("isd-heat"), grid, (y, x) => reads(g, state.pick, y, x), true);
        $("isd-heat-caption").textContent = `image→text: where the picture reads "${word(state.pick)}", ${g.name} (scaled to its maximum, ${percent(max)} of a patch's attention)`;
        const caption = $("isd-reads-caption");
        if (!g.readFrom) {
          caption.textContent = "no text→image attention in this trace (record it with RecordOptions(quadrants=(..., 'text_to_image')))";
          return;
        }
        const from = (y, x) => g.readFrom[((state.k * W + state.pick) * gh + y) * gw + x];
        const top = drawMap($("isd-reads"), grid, from, true);
        caption.textContent = `text→image: what "${word(state.pick)}" reads from the picture (scaled to its maximum, ${percent(top)} of its attention)`;
      },
      // The words one patch reads, the padding as one entry: together they are the patch's share of attention to the text.
      at(y, x) {
        const g = groups[state.group], entries = D.words.map((label, w) => [label, reads(g, w, y, x)]);
        entries.push([`padding (${D.padding_slots} slots)`, padding(g, y, x)]);
        const text = entries.reduce((a, e) => a + e[1], 0);
        return { entries, where: `patch (row ${y}, column ${x}) of the ${gh}×${gw} tokens gives ${percent(text)} of its attention to the text:` };
      },
    };
  }

  const lens = D.kind === "flow" ? flowLens() : unetLens();
  const prediction = { ...lens.prediction, values: halves(lens.prediction.data) };  // [s, C, h, w]

  function drawList() {
    const list = $("isd-token-list"), shares = lens.hasMaps ? lens.shares() : null;
    list.replaceChildren(...lens.labels.map((label, t) => {
      const li = document.createElement("li"), b = document.createElement("button");
      b.type = "button";
      b.dataset.token = t;
      b.className = t === state.pick ? "isd-selected" : "";
      b.textContent = shares ? `${label}  ${percent(shares.share[t])}` : label;
      if (shares) {
        const bar = document.createElement("span");
        bar.className = "isd-bar";
        bar.style.width = `${Math.min(100, 100 * shares.share[t])}%`;
        b.append(bar);
      }
      b.addEventListener("click", () => { state.pick = t; draw(); });
      li.append(b);
      return li;
    }));
    for (const [label, p] of shares ? shares.extra : []) {
      const li = document.createElement("li");
      li.textContent = `${label}: ${percent(p)}`;
      list.append(li);
    }
  }

  function drawHeat() {
    if (lens.hasMaps) lens.drawHeat();
    else $("isd-heat-caption").textContent = lens.noMaps;
  }

  function drawGuidance() {
    const canvas = $("isd-guidance"), caption = $("isd-guidance-caption");
    if (!guidance) {
      caption.textContent = "no guidance in this generation (scale ≤ 1): nothing to compare";
      return;
    }
    const { h, w, values } = guidance, off = state.k * h * w;
    paint(canvas, h, w, (y, x) => values[off + y * w + x] / guidance.max, HEAT, null);
    const what = D.kind === "flow" ? "‖v̂_text − v̂_uncond‖" : "‖ε_text − ε_uncond‖";
    caption.textContent = `where the prompt pushes: ${what} per latent pixel (scale: 0 to ${guidance.max.toFixed(2)}, the largest over all steps)`;
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
    if (!state.pixel || !lens.hasMaps) {
      list.replaceChildren();
      return;
    }
    const grid = lens.grid(), y = Math.min(grid.h - 1, Math.floor(state.pixel.fy * grid.h)), x = Math.min(grid.w - 1, Math.floor(state.pixel.fx * grid.w));
    const cell = lens.at(y, x), ranked = cell.entries.sort((a, b) => b[1] - a[1]).slice(0, 8);
    where.textContent = cell.where;
    list.replaceChildren(...ranked.map(([label, p]) => {
      const li = document.createElement("li");
      li.textContent = `${label}  ${percent(p)}`;
      return li;
    }));
  }

  function draw() {
    const k = state.k, step = D.steps[k];
    $("isd-step").value = k;
    $("isd-step-label").textContent = `step ${step} of steps 0–${D.num_steps - 1}, ${lens.stepLabel(k)}`;  // counted from 0, as the figures and plot.labels.step_label count
    $("isd-x0").src = D.x0[k];
    $("isd-x0").dataset.step = step;
    $("isd-x0-caption").textContent = D.x0_decoded ? "x̂₀: the clean picture the model believes in at this step"
      : "x̂₀ (latent channels 0–2 as colours): what the model believes at this step";
    drawList(); drawHeat(); drawGuidance(); drawHover();
    drawChannels($("isd-latents"), latents); drawChannels($("isd-noise"), prediction);
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

  // ---- wiring ----
  for (const element of document.querySelectorAll("#isd-explorer [data-kind]")) element.hidden = element.dataset.kind !== D.kind;
  $("isd-list-title").replaceChildren(lens.listTitle + " ", Object.assign(document.createElement("small"), { textContent: lens.listNote }));
  $("isd-hover-title").textContent = lens.hoverTitle;
  $("isd-prediction-title").textContent = lens.predictionTitle;
  $("isd-latents-note").textContent = `(${latents.c} channels; blue −, red +)`;
  if (lens.hasMaps) state.pick = lens.first();
  $("isd-step").max = D.steps.length - 1;
  $("isd-step").addEventListener("input", (e) => { state.k = Number(e.target.value); draw(); });
  $("isd-group").replaceChildren(...lens.groups.map((name, i) => new Option(name, i)));
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
  // A page that fills in the data later (the live page decodes each step's x̂₀ after the picture) redraws through this.
  window.isdExplorer = { data: D, redraw: draw };
  $("isd-image").src = D.image;
  // The heatmap paints over the final image: draw once it has loaded (a data URI loads at once, but not synchronously).
  if ($("isd-image").complete) draw(); else $("isd-image").addEventListener("load", draw, { once: true });
})();
