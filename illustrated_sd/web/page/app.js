// The page's main thread: the form, the progress, and the explorer of the result. The model runs in worker.js.
const $ = (id) => document.getElementById(id);
const worker = new Worker("worker.js", { type: "module" });
const explorerHtml = fetch("explorer.html").then((r) => r.text());
let runs = 0;

// Show one generation in the report's explorer: its markup, its data (explorer_data's format) as the
// <script id="isd-data"> block explorer.js reads, then explorer.js itself, run afresh for this data.
async function showExplorer(data) {
  const holder = $("explorer");
  holder.innerHTML = await explorerHtml;
  const block = Object.assign(document.createElement("script"), { type: "application/json", id: "isd-data", textContent: JSON.stringify(data) });
  const script = Object.assign(document.createElement("script"), { src: `explorer.js?run=${++runs}` });
  const loaded = new Promise((resolve) => { script.onload = resolve; });
  holder.append(block, script);
  await loaded;
  window.isdExplorer.data.x0 = data.x0;  // one array: the x̂₀ frames decoded later land in the explorer's data too
}

worker.onmessage = async ({ data: message }) => {
  if (message.type === "status") $("status").textContent = message.text + "…";
  if (message.type === "ready") { $("status").textContent = "ready"; $("generate").disabled = false; }
  if (message.type === "step") {
    $("status").textContent = `denoising: step ${message.i} of steps 0–${message.of - 1}`;
    $("progress").max = message.of; $("progress").value = message.i;  // the steps done before this one
  }
  if (message.type === "error") { $("status").textContent = `error: ${message.message}`; $("generate").disabled = false; }
  if (message.type === "done") {
    shown = message;
    explorerShown = showExplorer(message.data);
    await explorerShown;
    window.isdResult = message;  // (for tests and the curious: the data, the token ids, the seconds, the backend)
    $("status").textContent = `${doneText(message)} · decoding each step's x̂₀…`;
    $("generate").disabled = false;
  }
  // each step's x̂₀ through the decoder, after the picture: the explorer's slider picture is replaced in place
  if (message.type === "x0" && shown && message.run === shown.run) {
    await explorerShown;
    shown.data.x0[message.k] = message.uri;
    const last = message.k === message.of - 1;
    if (last) shown.data.x0_decoded = window.isdExplorer.data.x0_decoded = true;
    window.isdExplorer.redraw();
    $("status").textContent = last ? doneText(shown) : `${doneText(shown)} · decoding x̂₀ ${message.k + 1} of ${message.of}…`;
    if (last) shown.x0Ready = true;
  }
};
let shown = null, explorerShown = null;  // the generation on screen, and the promise of its explorer being ready
const doneText = (m) => `done: ${m.data.num_steps} steps in ${m.seconds.toFixed(1)} s (${m.backend}, ${m.threads} thread${m.threads > 1 ? "s" : ""})`;

// The settings, checked before the worker gets them: a mistake is one line saying what to type instead.
function settings() {
  const seed = Number($("seed").value), steps = Number($("steps").value), guidance = Number($("guidance").value);
  if (!Number.isSafeInteger(seed) || seed < 0) return "seed must be a whole number ≥ 0";
  if (!Number.isInteger(steps) || steps < 1 || steps > 1000) return "steps must be a whole number from 1 to 1000 (try 25)";
  if (!Number.isFinite(guidance) || guidance < 0) return "guidance must be a number ≥ 0 (7.5 is usual; 1 = no guidance)";
  return null;
}

$("generate-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const wrong = settings();
  if (wrong) { $("status").textContent = `error: ${wrong}`; return; }
  $("generate").disabled = true;
  window.isdResult = null;
  worker.postMessage({ type: "generate", prompt: $("prompt").value, seed: Number($("seed").value), steps: Number($("steps").value),
                       guidance: Number($("guidance").value), sampler: $("sampler").value });
});
worker.postMessage({ type: "load" });
