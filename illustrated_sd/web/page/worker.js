// The generation loop, in a Web Worker so the page stays responsive: the same stages as Python's
// IllustratedPipeline.__call__ (illustrated_sd/loops/unet.py), with the three networks run by onnxruntime-web.
//   1. tokenize → 2. encode [uncond, prompt] → 3. seeded noise → 4. for each timestep: UNet on the batch of 2
//   (the prompt's row alone at s = 1),
//   ε̂ = ε_uncond + s·(ε_text − ε_uncond), scheduler step → 5. decode → 6. the explorer's data (explorer_data's format).
// Everything is fetched from this folder (relative URLs): the page works offline, from any static host.
import { AutoTokenizer, env } from "./vendor/transformers.min.js";
import { torchRandn } from "./torch_random.js";

const here = new URL("./", import.meta.url).href;
// The backend: WebGPU where the site ships onnxruntime-web's WebGPU build (export-web --webgpu: its JSPI build, 18 MB),
// the browser offers a GPU adapter and WebAssembly can suspend for it (JSPI: Chromium 137 and later); else WebAssembly,
// on every browser (the default build, 15 MB).
// Chosen when the models load (load() below): no await at the top of this module, so no message is missed meanwhile.
let ort = null, BACKEND = null;
async function loadRuntime() {
  const site = await (await fetch("site.json")).json();
  const gpu = site.webgpu && typeof WebAssembly.Suspending === "function" && navigator.gpu && await navigator.gpu.requestAdapter();
  BACKEND = gpu ? "webgpu" : "wasm";
  ort = await import(gpu ? "./vendor/ort.jspi.min.mjs" : "./vendor/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = new URL("vendor/", here).href;
  // Several threads need SharedArrayBuffer, which only a cross-origin isolated page has (COOP/COEP headers): a file://
  // page or a plain static host is not, so one thread there.
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
}
env.allowRemoteModels = false;  // the tokenizer comes from ./tokenizer/, never from the Hub
env.allowLocalModels = true;
env.localModelPath = new URL(here).pathname;  // a path, not an http URL, which transformers.js would take for remote
env.useBrowserCache = false;

const status = (text) => postMessage({ type: "status", text });
let loaded = null;

// models.json, the three graphs, the tokenizer (and its vocabulary, to show each slot's piece).
async function load() {
  if (loaded) return loaded;
  status("choosing the backend");
  await loadRuntime();
  status("loading models.json");
  const models = await (await fetch("models.json")).json();
  const sessions = {};
  for (const [name, file] of Object.entries(models.files)) {
    status(`loading ${file.file} (${(file.bytes / 2 ** 20).toFixed(1)} MB)`);
    // On WebGPU an operator it lacks runs on WebAssembly. The runtime's warnings reach the console as errors, and
    // "some nodes were not assigned to WebGPU" is expected there (shape arithmetic stays on the CPU by design): only
    // errors are logged (severity 3).
    sessions[name] = await ort.InferenceSession.create(file.file, {
      executionProviders: BACKEND === "webgpu" ? ["webgpu", "wasm"] : ["wasm"], logSeverityLevel: 3 });
  }
  status("loading the tokenizer");
  const tokenizer = await AutoTokenizer.from_pretrained("tokenizer");
  const vocab = (await (await fetch("tokenizer/tokenizer.json")).json()).model.vocab;  // {piece: id}
  const pieces = [];
  for (const [piece, id] of Object.entries(vocab)) pieces[id] = piece;
  const colormaps = await (await fetch("colormaps.json")).json();
  loaded = { models, sessions, tokenizer, pieces, colormaps };
  return loaded;
}

// ---- text ----

// CLIP's 77 slots, as tokenize_prompt fills them: [start, pieces…, end], cut to 77 (the end marker kept), padded.
// Returns the ids and the number of real slots (start … end).
function tokenize(tokenizer, text, models) {
  const { max_length, eos_token_id, pad_token_id } = models.text;
  let ids = Array.from(tokenizer.encode(text), Number);
  if (ids.length > max_length) ids = [...ids.slice(0, max_length - 1), eos_token_id];
  const real = ids.length;
  while (ids.length < max_length) ids.push(pad_token_id);
  return { ids, real };
}

// CLIP's byte-level pieces as readable labels (loops/text.py, readable_pieces): "circle</w>" → "circle",
// "ðŁĶ´</w>" → "🔴", a character split over n pieces shown on each as "🦩[1/2]".
const BYTE_OF = (() => {
  const kept = [];
  for (let b = 33; b <= 126; b++) kept.push(b);
  for (let b = 161; b <= 172; b++) kept.push(b);
  for (let b = 174; b <= 255; b++) kept.push(b);
  const table = new Map(kept.map((b) => [String.fromCharCode(b), b]));
  let k = 0;
  for (let b = 0; b < 256; b++) if (!kept.includes(b)) table.set(String.fromCharCode(256 + k++), b);
  return table;
})();
function labels(pieces) {
  const out = [...pieces], strict = new TextDecoder("utf-8", { fatal: true }), loose = new TextDecoder("utf-8");
  let run = [], bytes = [];
  pieces.forEach((piece, i) => {
    if (piece === "<|startoftext|>" || piece === "<|endoftext|>") return;
    const word = piece.endsWith("</w>") ? piece.slice(0, -4) : piece;
    run.push(i);
    bytes.push(...Array.from(word, (c) => BYTE_OF.get(c)));
    let text;
    try { text = strict.decode(new Uint8Array(bytes)); } catch {
      if (!piece.endsWith("</w>")) return;
      text = loose.decode(new Uint8Array(bytes));
    }
    run.forEach((j, k) => { out[j] = run.length === 1 ? text : `${text}[${k + 1}/${run.length}]`; });
    run = []; bytes = [];
  });
  return out;
}

// ---- the sampler: which timesteps, and one step (diffusers' DDIMScheduler / EulerDiscreteScheduler, η = 0) ----

// The S timesteps, noisy to clean, spaced as the scheduler's config says.
function timestepsFor(S, config) {
  const T = config.num_train_timesteps, idx = [...Array(S).keys()];
  if (config.timestep_spacing === "leading") return idx.map((i) => Math.round(i * Math.floor(T / S)) + config.steps_offset).reverse();
  if (config.timestep_spacing === "trailing") return idx.map((i) => Math.round(T - i * T / S) - 1);
  return idx.map((i) => Math.round((T - 1) * i / (S - 1 || 1))).reverse();  // "linspace"
}

function sampler(name, S, models) {
  const { config, alphas_cumprod: ac } = models.scheduler, T = config.num_train_timesteps;
  const timesteps = timestepsFor(S, config);
  if (name === "ddim") {
    const final = config.set_alpha_to_one ? 1 : ac[0];
    return {
      timesteps, initSigma: 1, alphaBar: (i) => ac[timesteps[i]], scaleInput: () => 1,
      // x̂₀ = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t, then x_prev = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev)·ε̂ (DDIM with η = 0)
      step(i, x, eps) {
        const a = ac[timesteps[i]], prevT = timesteps[i] - Math.floor(T / S), aPrev = prevT >= 0 ? ac[prevT] : final;
        return x.map((v, j) => {
          const x0 = (v - Math.sqrt(1 - a) * eps[j]) / Math.sqrt(a);
          return Math.sqrt(aPrev) * x0 + Math.sqrt(1 - aPrev) * eps[j];
        });
      },
    };
  }
  // Euler keeps x = x̂₀ + σ·ε with σ_t = √((1 − ᾱ_t)/ᾱ_t): the UNet reads x / √(σ² + 1), and the step moves along ε̂
  const sigmas = [...timesteps.map((t) => Math.sqrt((1 - ac[t]) / ac[t])), 0];
  const initSigma = ["linspace", "trailing"].includes(config.timestep_spacing) ? sigmas[0] : Math.sqrt(sigmas[0] ** 2 + 1);
  return {
    timesteps, initSigma, alphaBar: (i) => 1 / (1 + sigmas[i] ** 2), scaleInput: (i) => 1 / Math.sqrt(sigmas[i] ** 2 + 1),
    step: (i, x, eps) => x.map((v, j) => v + (sigmas[i + 1] - sigmas[i]) * eps[j]),  // x_next = x + (σ_next − σ)·ε̂
  };
}

// ---- the explorer's data format (plot/explorer.py, explorer_data) ----

// float32 → float16 bits, rounding to nearest even (as numpy's astype("<f2")).
const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
function toHalf(v) {
  f32[0] = v;
  const x = u32[0], sign = (x >>> 16) & 0x8000, e = ((x >>> 23) & 0xff) - 112, m = x & 0x7fffff;
  if (e >= 31) return sign | 0x7c00 | ((x & 0x7fffffff) > 0x7f800000 ? 0x200 : 0);
  if (e <= 0) {
    if (e < -10) return sign;
    const full = m | 0x800000, shift = 14 - e, rest = full & ((1 << shift) - 1), half = 1 << (shift - 1);
    let h = full >>> shift;
    if (rest > half || (rest === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (m >>> 13);
  const rest = m & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++;
  return sign | h;
}
// An array as base64 of little-endian float16 (what explorer.js's `halves` reads).
function halves(values) {
  const bytes = new Uint8Array(Uint16Array.from(values, toHalf).buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}
const round = (v, digits) => Math.round(v * 10 ** digits) / 10 ** digits;

// [s, C, h, w] latents or noise, with each channel's largest |value| over the steps (its colour scale).
function channels(perStep, c, h, w) {
  const scale = Array.from({ length: c }, (_, k) => {
    let max = 0;
    for (const x of perStep) for (let j = k * h * w; j < (k + 1) * h * w; j++) max = Math.max(max, Math.abs(x[j]));
    return round(Math.max(max, 1e-6), 4);
  });
  return { c, h, w, data: halves(perStep.flatMap((x) => Array.from(x))), scale };
}

// Bilinear resize of [H, W, 77] maps to [h, w, T] (the first T slots), as torch's F.interpolate(mode="bilinear",
// align_corners=False): output cell o reads the source at (o + ½)·H/h − ½, clamped at 0, between its two neighbours.
function resize(map, H, W, T, h, w) {
  const out = new Float32Array(h * w * T), slots = map.length / (H * W);
  const source = (o, n, size) => { const s = Math.max(0, (o + 0.5) * size / n - 0.5), i = Math.floor(s); return [i, Math.min(i + 1, size - 1), s - i]; };
  for (let y = 0; y < h; y++) {
    const [y0, y1, ly] = source(y, h, H);
    for (let x = 0; x < w; x++) {
      const [x0, x1, lx] = source(x, w, W);
      for (let t = 0; t < T; t++) {
        const at = (yy, xx) => map[(yy * W + xx) * slots + t];
        out[(y * w + x) * T + t] = (1 - ly) * ((1 - lx) * at(y0, x0) + lx * at(y0, x1)) + ly * ((1 - lx) * at(y1, x0) + lx * at(y1, x1));
      }
    }
  }
  return out;
}

// The heatmap groups: all layers (each resized to the latent grid, then averaged, as Trace.cross_attention does)
// and each resolution; data [s, h, w, T] for the T real slots.
function attentionGroups(maps, layers, T, h, w) {
  const mean = (arrays) => arrays[0].map((_, j) => arrays.reduce((a, x) => a + x[j], 0) / arrays.length);
  const perStep = (f) => maps.flatMap((step) => Array.from(f(step)));
  const sized = (m, [H, W]) => resize(m, H, W, T, H, W);  // at its own size: only the T real slots of 77 kept
  const groups = [{ name: `all ${layers.length} layers`, h, w,
    data: halves(perStep((step) => mean(step.map((m, l) => resize(m, ...layers[l].grid_at_default_size, T, h, w))))) }];
  for (const res of [...new Set(layers.map((l) => l.grid_at_default_size[0]))].sort((a, b) => b - a)) {
    const which = layers.map((l, i) => i).filter((i) => layers[i].grid_at_default_size[0] === res);
    const [H, W] = layers[which[0]].grid_at_default_size;
    groups.push({ name: `${H}×${W} (${which.length} layer${which.length > 1 ? "s" : ""})`, h: H, w: W,
      data: halves(perStep((step) => mean(which.map((i) => sized(step[i], layers[i].grid_at_default_size))))) });
  }
  return groups;
}

// A [1, 3, H, W] image in [-1, 1] → a PNG data URI, grey levels as diffusers' postprocess makes them.
function pictureURI(image, H, W) {
  const rgba = new Uint8ClampedArray(4 * H * W);
  for (let p = 0; p < H * W; p++) {
    for (let c = 0; c < 3; c++) rgba[4 * p + c] = Math.round(Math.min(1, Math.max(0, (image[c * H * W + p] + 1) / 2)) * 255);
    rgba[4 * p + 3] = 255;
  }
  const canvas = new OffscreenCanvas(W, H);
  canvas.getContext("2d").putImageData(new ImageData(rgba, W, H), 0, 0);
  return canvas.convertToBlob({ type: "image/png" }).then((blob) => new FileReaderSync().readAsDataURL(blob));
}

// ---- the loop ----

async function generate({ prompt, seed, steps: S, guidance: s, sampler: samplerName, run }) {
  const { models, sessions, tokenizer, pieces, colormaps } = await load();
  const started = performance.now();
  const [c, h, w] = [models.latent.channels, ...models.latent.default_size], n = c * h * w;
  const layers = models.attention_layers;

  // 1. Tokenize: the prompt, and the empty prompt for the unconditional row.
  const text = tokenize(tokenizer, prompt, models), empty = tokenize(tokenizer, "", models);
  // 2. Encode [uncond, prompt] in one batch of 2 → context [2, 77, D].
  const ids = new ort.Tensor("int64", BigInt64Array.from([...empty.ids, ...text.ids], BigInt), [2, 77]);
  const context = (await sessions.text_encoder.run({ input_ids: ids })).last_hidden_state;
  // 3. Where the loop starts: torch's noise for this seed [1, 4, h, w], scaled to the sampler's starting σ.
  const sched = sampler(samplerName, S, models);
  let latents = torchRandn(seed, n).map((v) => v * sched.initSigma);

  // At s = 1 the guidance formula gives the prompt's row exactly, so that row alone is run (as Python and diffusers do).
  const guided = s !== 1, B = guided ? 2 : 1, D = context.dims[2];
  const rows = guided ? context : new ort.Tensor("float32", context.data.slice(77 * D), [1, 77, D]);

  const record = { latents: [], noise: [], push: [], x0: [], maps: [] };
  for (let i = 0; i < S; i++) {
    postMessage({ type: "step", i, of: S });  // step i starts (counted from 0, as the explorer counts)
    // 4. The UNet on the batch of 2 ([uncond, prompt]), the latent scaled as the sampler wants it.
    const input = latents.map((v) => v * sched.scaleInput(i));
    const sample = new ort.Tensor("float32", Float32Array.from(guided ? [...input, ...input] : input), [B, c, h, w]);
    const timestep = new ort.Tensor("float32", Float32Array.of(sched.timesteps[i]), []);
    const out = await sessions.unet.run({ sample, timestep, encoder_hidden_states: rows });
    const all = out.noise_pred.data, cond = all.subarray((B - 1) * n), uncond = guided ? all.subarray(0, n) : null;
    // Classifier-free guidance: ε̂ = ε_uncond + s·(ε_text − ε_uncond)
    const eps = guided ? uncond.map((u, j) => u + s * (cond[j] - u)) : cond;
    // x̂₀ = (x_in − √(1−ᾱ)·ε̂) / √ᾱ: the clean latent the model believes in at this step (drawn by the explorer)
    const a = sched.alphaBar(i), x0 = input.map((v, j) => (v - Math.sqrt(1 - a) * eps[j]) / Math.sqrt(a));
    latents = sched.step(i, latents, eps);
    // What the explorer shows of this step: the prompt row's cross-attention maps (each [h_l·w_l, 77]), ε̂, the push.
    record.maps.push(layers.map((l) => out[l.output].data.slice(out[l.output].data.length * (B - 1) / B)));
    record.latents.push(latents); record.noise.push(eps); record.x0.push(x0);
    if (guided) record.push.push(Float32Array.from({ length: h * w }, (_, p) => {
      let sum = 0;
      for (let k = 0; k < c; k++) sum += (cond[k * h * w + p] - uncond[k * h * w + p]) ** 2;
      return Math.sqrt(sum);
    }));
  }

  // 5. Decode the last latent → the picture. Each step's x̂₀ is shown at first as its latent channels 0–2 (as Python's
  //    explorer shows them without a decoder), and decoded after the picture is on screen (decodeX0 below).
  postMessage({ type: "status", text: "decoding" });
  const [H, W] = models.image.default_size;
  const image = await pictureURI(await decodeLatent(sessions, latents, c, h, w), H, W);
  const seconds = (performance.now() - started) / 1000;
  const x0 = await Promise.all(record.x0.map((step) => latentURI(step, c, h, w, H, W)));

  // 6. The explorer's data: explorer_data(trace, preset="full"), built from this run (x0_decoded once decodeX0 is done).
  const T = text.real, slotPieces = text.ids.slice(0, T).map((id) => pieces[id]);
  const pushMax = guided ? Math.max(...record.push.map((p) => Math.max(...p))) : 0;
  const data = {
    prompt, num_steps: S, steps: [...Array(S).keys()], preset: "full",
    timesteps: sched.timesteps.map((t) => round(t, 1)), guidance_scale: s,
    image, x0, x0_decoded: false,
    latents: channels(record.latents, c, h, w), colormaps,
    kind: "unet",
    alpha_bars: sched.timesteps.map((_, i) => round(sched.alphaBar(i), 4)),
    tokens: labels(slotPieces),
    groups: attentionGroups(record.maps, layers, T, h, w),
    noise: channels(record.noise, c, h, w),
    guidance: guided ? { h, w, data: halves(record.push.flatMap((p) => Array.from(p))), max: round(pushMax, 4) } : null,
  };
  postMessage({ type: "done", run, data, ids: text.ids, seconds, threads: ort.env.wasm.numThreads, backend: BACKEND });
  return { run, steps: record.x0, shape: [c, h, w], size: [H, W] };
}

// After the picture: each step's x̂₀ through the VAE decoder, one message per step (the slider's pictures, sharpening from
// the blurry average toward the final image). About 0.3 s each on one thread: the picture does not wait for them.
async function decodeX0({ run, steps, shape: [c, h, w], size: [H, W] }) {
  const { sessions } = await load();
  for (let k = 0; k < steps.length; k++) {
    if (pending > 0 || run !== runs) return;  // a newer generation was asked for: its picture first; these frames are stale
    postMessage({ type: "x0", run, k, of: steps.length, uri: await pictureURI(await decodeLatent(sessions, steps[k], c, h, w), H, W) });
  }
}

const decodeLatent = async (sessions, x, c, h, w) =>
  (await sessions.vae_decoder.run({ latents: new ort.Tensor("float32", Float32Array.from(x), [1, c, h, w]) })).image.data;

// A latent [c, h, w] as a picture: channels 0–2 as red, green, blue, each stretched to its own range, blown up (nearest)
// to H × W: what Python's explorer shows for x̂₀ without a decoder (plot/denoising.py: _as_rgb).
function latentURI(x, c, h, w, H, W) {
  const image = new Float32Array(3 * H * W);
  for (let k = 0; k < 3; k++) {
    const plane = x.subarray ? x.subarray(k * h * w, (k + 1) * h * w) : x.slice(k * h * w, (k + 1) * h * w);
    let lo = Infinity, hi = -Infinity;
    for (const v of plane) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    for (let p = 0; p < H * W; p++) {
      const v = plane[Math.floor(Math.floor(p / W) * h / H) * w + Math.floor((p % W) * w / W)];
      image[k * H * W + p] = 2 * (v - lo) / Math.max(hi - lo, 1e-8) - 1;  // pictureURI reads [-1, 1]
    }
  }
  return pictureURI(image, H, W);
}

// One job at a time (onnxruntime runs one session call at a time); a generation asked for while x̂₀ frames are still
// being decoded goes first, and those frames are dropped.
let queue = Promise.resolve(), pending = 0, runs = 0;
const report = (err) => postMessage({ type: "error", message: String(err && err.message ? err.message : err) });
onmessage = (event) => {
  if (event.data.type === "load") {
    queue = queue.then(() => load()).then(() => postMessage({ type: "ready" })).catch(report);
    return;
  }
  const run = ++runs;
  pending += 1;
  queue = queue.then(async () => {
    pending -= 1;
    const made = await generate({ ...event.data, run });
    queue = queue.then(() => decodeX0(made)).catch(report);
  }).catch(report);
};
