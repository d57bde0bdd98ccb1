"""An explained generation as one self-contained HTML page (images inline), for students without Jupyter.

The page opens with the explorer (:mod:`illustrated_sd.explorer`: a step slider, token and layer pickers,
hover a pixel to read its words), then explains each part with a figure. It fetches nothing.
"""

import base64
import html
from pathlib import Path

import matplotlib.pyplot as plt

from . import plot
from .explorer import explorer_html, resolve_preset
from .files import atomic_write
from .trace import Trace, require_trace

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


# Every file write_report makes: the page, the image, and one PNG per figure.
FILES = ("report.html", "image.png", *(f"{key}.png" for key, _, _ in SECTIONS if key != "tokens"))


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


def write_report(trace: Trace, folder, scheduler=None, decode=None, explorer: str | None = "auto") -> Path:
    """Write ``folder/report.html`` (self-contained) and the figures as PNGs beside it.

    Args:
        trace: the generation to explain.
        scheduler: the pipeline's scheduler, for the noise-schedule figure (skipped if ``None``).
        decode: ``pipe.decode_latents``, to show predicted x0 as pictures (else latent channels as RGB).
        explorer: ``"full"`` (every step), ``"light"`` (≤ 10 steps, small pictures: for 512² models, see
            docs/performance.md), ``"auto"`` (full up to 256-px pictures, else light) or ``None`` (a static page only).
    Returns:
        the path of ``report.html``.
    """
    require_trace(trace, "write_report", every_step=True)
    if explorer is not None:
        explorer = resolve_preset(trace, explorer)  # refused here, before any file is written
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "image.png", "image") as tmp:
        trace.image.save(tmp, format="png")
    figures = {
        "text_embeddings": plot.text_embeddings(trace),
        "token_heatmaps": plot.token_heatmaps(trace),
        "filmstrip_latents": plot.denoising_filmstrip(trace, "latents", decode=decode),
        "filmstrip_pred_x0": plot.denoising_filmstrip(trace, "pred_x0", decode=decode),
    }
    if scheduler is not None:
        figures["noise_schedule"] = plot.noise_schedule(scheduler, trace)
    pngs = {name: _save(fig, folder / f"{name}.png") for name, fig in figures.items()}

    # Every string from the trace (prompt, tokens, model, scheduler) is escaped: a prompt may hold "<", "&" and quotes,
    # and html.escape turns the single quote these attributes use into &#x27; too.
    tokens = "".join(f"<tr><td>{i}</td><td><code>{html.escape(t)}</code></td><td>{int(trace.token_ids[i])}</td></tr>"
                     for i, t in enumerate(trace.tokens))
    body = [f"<h1>{html.escape(trace.prompt)}</h1>",
            f"<p class='settings'>{trace.num_steps} steps of {html.escape(trace.scheduler)}, guidance {trace.guidance_scale:g}, "
            f"seed {trace.seed}, {trace.width}×{trace.height} px, model {html.escape(trace.model)}</p>",
            f"<img class='hero' src='{_data_uri(folder / 'image.png')}' alt='the generated image'>"]
    if explorer is not None:
        body.append(explorer_html(trace, decode, explorer))
    for key, title, text in SECTIONS:
        if key == "tokens":
            dropped = f"<p>Dropped (over 77 tokens): {html.escape(trace.truncated_text)}</p>" if trace.truncated_text else ""
            body.append(f"<h2>{title}</h2><p>{text}</p>{dropped}<table><tr><th>slot</th><th>token</th><th>id</th></tr>{tokens}</table>"
                        f"<p>…then {77 - len(trace.tokens)} padding slots.</p>")
        elif key in pngs:
            if key == "text_embeddings" and trace.is_sdxl:
                text += " " + _sdxl_text(trace)
            body.append(f"<h2>{title}</h2><p>{text}</p><img src='{_data_uri(pngs[key])}' alt='{html.escape(title)}'>")
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
