"""An explained generation as one self-contained HTML page (images inline), for students without Jupyter.

The page opens with the explorer (:mod:`illustrated_sd.plot.explorer`: a step slider, token and layer pickers,
hover a pixel to read its words), then explains each part with a figure. It fetches nothing.
A Trace (SD 1/2/XL) and a FlowTrace (SD3, Flux) share the page's frame; each family has its own sections.
"""

import base64
import html
from pathlib import Path

import matplotlib.pyplot as plt

from .. import plot
from ..trace.flow import FlowTrace
from .explorer import explorer_html, require_any_trace, resolve_preset
from ..trace.files import atomic_write
from .joint import telling_word
from ..trace.unet import Trace

SECTIONS = [
    ("tokens", "1. From words to tokens",
     "CLIP's tokenizer splits the prompt into byte-pair pieces, wraps them in start and end markers and pads "
     "the sequence to 77 slots. The text encoder turns every slot into a vector; the UNet reads all 77."),
    ("text_embeddings", "2. The text embeddings",
     "Each row is one slot's vector after the text encoder. The right panel compares the tokens' vectors: "
     "CLIP's attention is causal, so each token's vector also carries the words before it."),
    ("token_heatmaps", "3. Where the UNet looked for each word",
     "Cross-attention: every pixel of the latent asks the 77 token vectors a question and gets back a mix of "
     "their answers. The heatmap shows how much of that mix came from each word, averaged over all steps "
     "and layers (each panel scaled to its own maximum)."),
    ("filmstrip_latents", "4. The denoising loop",
     "Generation starts from pure Gaussian noise in latent space. At each step the UNet predicts the noise, "
     "the scheduler removes part of it, and the latent x_t gets a little cleaner."),
    ("filmstrip_pred_x0", "5. What the model believes at each step",
     "From a noisy latent and its noise prediction one can compute the clean latent the model currently believes "
     "in: x0 = (x_t − √(1−ᾱ)·ε) / √ᾱ. Early guesses are blurry averages; the layout is settled long before the details."),
    ("noise_schedule", "6. The noise schedule",
     "Training noised latents with 1000 small steps; ᾱ_t is how much of the original signal is left at step t. "
     "The sampler visits only a few of those timesteps (orange dots)."),
]


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


FLOW_SECTIONS = [
    ("tokens", "1. From words to tokens",
     "The prompt is read by T5 (Flux; SD3 also by two CLIPs, side by side): its tokens, each from its encoder, fill "
     "the first slots of the text sequence, padding fills the rest. Text and picture then sit in one sequence: the "
     "transformer reads the text slots and the image tokens (2×2 latent pixels each) together, in every block."),
    ("joint_attention", "2. Joint attention: the picture reads the text, the text reads the picture",
     "Each block runs one softmax per query over all keys, text and image. Cut into quadrants: image→text is where "
     "the picture looks for a word (SD's cross-attention); text→image is what the word reads from the picture, which "
     "a UNet has no counterpart for. Each value is a share of the query's whole attention, averaged over all steps "
     "and recorded layers; the text's share shows how much each patch reads the text at all."),
    ("flow", "3. The flow from noise to picture",
     "The model predicts a velocity v̂ along a straight path from the picture (σ = 0) to the noise (σ = 1); each Euler "
     "step moves the latent along it: x_next = x + (σ_next − σ)·v̂. The clean latent it believes in at σ is "
     "x̂₀ = x_σ − σ·v̂: drag the explorer's slider to watch it settle."),
    ("concept_maps", "4. ConceptAttention",
     "Each concept flows through the double-stream blocks as a third stream that nothing attends to (the picture is "
     "unchanged); each patch's softmax over the concepts, in the attention's output space, says which concept it is."),
]

# Every file write_report makes: the page, the image, and one PNG per figure (of either family).
FILES = ("report.html", "image.png", *(f"{key}.png" for key, _, _ in SECTIONS + FLOW_SECTIONS if key not in ("tokens", "flow")))


def _save(fig, path: Path) -> Path:
    try:
        with atomic_write(path, "figure") as tmp:
            fig.savefig(tmp, dpi=90, format="png")
    finally:
        plt.close(fig)
    return path


def _sdxl_text(trace: Trace) -> str:
    """What an SDXL trace adds to section 2: the two encoders, the pooled vector and the micro-conditioning."""
    ids = ", ".join(f"{name} {value:g}" for name, value in trace.micro_conditioning().items())
    split = (f"Columns 0–{trace.context_split - 1} come from the first text encoder and the rest from the second, "
             "each its next-to-last layer. " if trace.context_split else "")
    return html.escape(f"This is SDXL: two text encoders read the same tokens, side by side. {split}"
                       f"The second encoder also sums the whole prompt up in one pooled vector ({len(trace.pooled_text_embeds)} "
                       f"numbers), which joins the timestep embedding together with numbers about the picture: {ids}.")


def write_report(trace: Trace | FlowTrace, folder, scheduler=None, decode=None, explorer: str | None = "auto") -> Path:
    """Write ``folder/report.html`` (self-contained) and the figures as PNGs beside it.

    Args:
        trace: the generation to explain: a Trace (SD 1/2/XL) or a FlowTrace (SD3, Flux; its explorer has the quadrant
            view, its sections the joint attention of its most telling word).
        scheduler: the pipeline's scheduler, for the noise-schedule figure (SD 1/2/XL; skipped if ``None``).
        decode: ``pipe.decode_latents``, to show predicted x0 as pictures (else latent channels as RGB).
        explorer: ``"full"`` (every step), ``"light"`` (≤ 10 steps, small pictures: for 512² models, see
            docs/performance.md), ``"auto"`` (full up to 256-px pictures, else light) or ``None`` (a static page only).
    Returns:
        the path of ``report.html``.
    Example:
        >>> from illustrated_sd.plot.report import write_report
        >>> write_report(pipe("a red circle on the left"), "out", decode=pipe.decode_latents)
    """
    require_any_trace(trace, "write_report")
    if explorer is not None:
        explorer = resolve_preset(trace, explorer)  # refused here, before any file is written
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "image.png", "image") as tmp:
        trace.image.save(tmp, format="png")
    flow = isinstance(trace, FlowTrace)
    # Every string from the trace (prompt, tokens, model, scheduler) is escaped: a prompt may hold "<", "&" and quotes,
    # and html.escape turns the single quote these attributes use into &#x27; too.
    body = [f"<h1>{html.escape(trace.prompt)}</h1>",
            f"<p class='settings'>{_flow_settings(trace) if flow else _settings(trace)}</p>",
            f"<img class='hero' src='{_data_uri(folder / 'image.png')}' alt='the generated image'>"]
    if explorer is not None:
        body.append(explorer_html(trace, decode, explorer))
    body += _flow_sections(trace, folder) if flow else _sections(trace, folder, scheduler, decode)
    body.append("<h2>Reproduce</h2><p>The whole trace is in <code>trace.safetensors</code> beside this page: "
                "<code>isd.Trace.load('trace.safetensors')</code>.</p>")
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>illustrated_sd: "
            f"{html.escape(trace.prompt)}</title><style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
            "padding:0 1em;line-height:1.5;color:#222;background:#fff}img{max-width:100%}img.hero{width:256px;"
            "image-rendering:pixelated;border:1px solid #ccc}table{border-collapse:collapse}td,th{border:1px solid #ddd;"
            "padding:2px 8px}.settings{color:#555}</style></head><body>" + "\n".join(body) + "</body></html>")
    path = folder / "report.html"
    with atomic_write(path, "report") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _settings(trace: Trace) -> str:
    return (f"{trace.num_steps} steps of {html.escape(trace.scheduler)}, guidance {trace.guidance_scale:g}, "
            f"seed {trace.seed}, {trace.width}×{trace.height} px, model {html.escape(trace.model)}")


def _flow_settings(trace: FlowTrace) -> str:
    guidance = "no guidance" if trace.guidance_scale is None else f"guidance {trace.guidance_scale:g}"
    if trace.true_cfg_scale > 1:
        guidance += f", true CFG {trace.true_cfg_scale:g}"
    return (f"{trace.family}: {trace.num_steps} steps of {html.escape(trace.scheduler)}, {guidance}, seed {trace.seed}, "
            f"{trace.width}×{trace.height} px, model {html.escape(trace.model)}")


def _figure(title: str, text: str, png: Path) -> str:
    return f"<h2>{title}</h2><p>{text}</p><img src='{_data_uri(png)}' alt='{html.escape(title)}'>"


def _sections(trace: Trace, folder: Path, scheduler, decode) -> list[str]:
    """SD 1/2/XL's sections: the tokens, the text embeddings, the heatmaps, the denoising, the noise schedule."""
    figures = {
        "text_embeddings": plot.text_embeddings(trace),
        "token_heatmaps": plot.token_heatmaps(trace),
        "filmstrip_latents": plot.denoising_filmstrip(trace, "latents", decode=decode),
        "filmstrip_pred_x0": plot.denoising_filmstrip(trace, "pred_x0", decode=decode),
    }
    if scheduler is not None:
        figures["noise_schedule"] = plot.noise_schedule(scheduler, trace)
    pngs = {name: _save(fig, folder / f"{name}.png") for name, fig in figures.items()}
    tokens = "".join(f"<tr><td>{i}</td><td><code>{html.escape(t)}</code></td><td>{int(trace.token_ids[i])}</td></tr>"
                     for i, t in enumerate(trace.tokens))
    body = []
    for key, title, text in SECTIONS:
        if key == "tokens":
            dropped = f"<p>Dropped (over 77 tokens): {html.escape(trace.truncated_text)}</p>" if trace.truncated_text else ""
            body.append(f"<h2>{title}</h2><p>{text}</p>{dropped}<table><tr><th>slot</th><th>token</th><th>id</th></tr>{tokens}</table>"
                        f"<p>…then {77 - len(trace.tokens)} padding slots.</p>")
        elif key in pngs:
            if key == "text_embeddings" and trace.is_sdxl:
                text += " " + _sdxl_text(trace)
            body.append(_figure(title, text, pngs[key]))
    return body


def _flow_sections(trace: FlowTrace, folder: Path) -> list[str]:
    """SD3 / Flux's sections: the tokens in the joint sequence, the joint attention of the most telling word, the
    flow, ConceptAttention's maps (when the trace has them)."""
    word = telling_word(trace)
    figures = {"joint_attention": plot.joint_attention(trace, word)}
    if trace.concepts:
        figures["concept_maps"] = plot.concept_maps(trace)
    pngs = {name: _save(fig, folder / f"{name}.png") for name, fig in figures.items()}
    tokens = "".join(f"<tr><td>{int(slot)}</td><td><code>{html.escape(t)}</code></td><td>{html.escape(source)}</td></tr>"
                     for slot, t, source in zip(trace.kept_slots, trace.tokens, trace.token_sources))
    body = []
    for key, title, text in FLOW_SECTIONS:
        if key == "tokens":
            dropped = "".join(f"<p>Dropped (over {html.escape(encoder)}'s slots): {html.escape(words)}</p>"
                              for encoder, words in trace.truncated.items())
            body.append(f"<h2>{title}</h2><p>{text}</p>{dropped}<table><tr><th>slot</th><th>token</th><th>encoder</th></tr>"
                        f"{tokens}</table><p>…and {trace.padding_slots} padding slots of {trace.text_length}; the maps sum "
                        f"them into one column (they absorb {100 * trace.padding_share():.1f}% of the picture's attention "
                        "to the text).</p>")
        elif key == "joint_attention":
            body.append(_figure(title, f"{text} Shown for “{html.escape(word)}”, the word whose map is the most "
                                "concentrated; the explorer above shows every word, step and layer group.", pngs[key]))
        elif key in pngs:
            body.append(_figure(title, text, pngs[key]))
        elif key == "flow":
            body.append(f"<h2>{title}</h2><p>{text}</p>")
    return body
