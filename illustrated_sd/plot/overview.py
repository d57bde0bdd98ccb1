"""One drawing of a whole generation, read from the model itself: where each notebook's part sits.

Jay Alammar's *Illustrated Stable Diffusion* opens each idea with the same picture of the whole and lights up
one part of it. :func:`pipeline_diagram` draws that picture for the pipeline in hand: every number in it
(token slots, embedding width, latent shape, parameter counts, attention layers, the scheduler) is read from the
components, so a bigger model gives a picture with bigger numbers, and SDXL a picture with two text encoders.
"""

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

from ..loops.flow import FlowPipeline, flow_family
from .labels import literal

# part name → (what the title calls it, the boxes it lights up)
PARTS = {
    "text": ("the text encoder", ("prompt", "tokenizer", "text_encoder", "text_encoder_2")),
    "latent": ("the latent space", ("encoder", "latent")),
    "noise": ("the noise", ("noise", "latent")),
    "denoiser": ("the denoiser", ("denoiser",)),
    "attention": ("attention between the picture and the words", ("attention",)),
    "guidance": ("guidance", ("guidance",)),
    "scheduler": ("the scheduler step", ("scheduler",)),
    "decoder": ("the VAE decoder", ("decoder", "image")),
    "training": ("training the denoiser", ("encoder", "noise", "latent", "denoiser")),
    "trace": ("the recorders and the Trace", ("trace",)),
}
MODEL, VALUE, RECORD = "#dbe9f6", "#f0f0f0", "#fde9c8"  # a part with weights, a value (a shape), what the recorders keep
STRONG, STRONG_EDGE = "#ffc04d", "#b36b00"  # the highlighted part
MUTED, MUTED_EDGE, MUTED_TEXT = "#f7f7f7", "#c8c8c8", "#9a9a9a"
FONT, SMALL = 8.5, 8  # points (titles, bodies): the figure is 9 inches, ~900 px in a notebook, so nothing is under 8 pt
X = (0.75, 3.15, 5.8, 8.45, 11.1)  # column centres (one unit ≈ 0.73 in)
W, H = 2.35, 1.25  # a box
ROW_TEXT, ROW_LOOP, ROW_OUT = 5.65, 3.05, 0.45  # row centres: the prompt, the loop, the picture
RETURN_Y = 1.7  # the loop's way back, under the denoiser


def count(*modules) -> str:
    """The modules' parameters together, as the diagram prints them (3 digits): ``"12.6M"``, ``"2.57B"``, ``"860M"``."""
    n = sum(p.numel() for m in modules if m is not None for p in m.parameters())
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def class_name(obj, width: int = 22) -> str:
    """``obj``'s class name, broken at a capital onto two lines when it is too wide for a box (``FlowMatchEuler\\nDiscreteScheduler``)."""
    name = type(obj).__name__
    if len(name) <= width:
        return name
    cut = min((i for i, ch in enumerate(name) if ch.isupper() and i > 0), key=lambda i: abs(i - len(name) / 2))
    return name[:cut] + "\n" + name[cut:]


def vae_halves(vae) -> tuple[str, str]:
    """Parameter counts of the VAE's encoder (with ``quant_conv``) and decoder (with ``post_quant_conv``)."""
    return (count(vae.encoder, getattr(vae, "quant_conv", None)),
            count(vae.decoder, getattr(vae, "post_quant_conv", None)))


def unet_boxes(pipe) -> dict[str, tuple[str, str]]:
    """``{box: (title, body)}`` for SD 1/2 and SDXL: the numbers of an :class:`~illustrated_sd.IllustratedPipeline`.

    ``into_denoiser`` and ``into_denoiser_2`` are not boxes but the labels of the arrows into the UNet (title only).
    """
    unet, vae = pipe.unet, pipe.vae
    side = pipe.default_size
    latent = f"[{vae.config.latent_channels}, {side // pipe.vae_scale_factor}, {side // pipe.vae_scale_factor}]"
    slots = pipe.tokenizer.model_max_length
    width = unet.config.cross_attention_dim  # the context the UNet reads: both encoders' features side by side in SDXL
    predicts = {"epsilon": "ε (the noise)", "v_prediction": "v = α·ε − σ·x₀", "sample": "x₀"}[pipe.scheduler.config.prediction_type]
    encoder, decoder = vae_halves(vae)
    boxes = {
        "prompt": ("prompt", "text"),
        "tokenizer": ("tokenizer" + ("s" if pipe.is_sdxl else ""), f"{slots} token slots"),
        "noise": ("noise", f"ε ~ N(0, I)\n{latent}"),
        "latent": ("latent x_t", latent),
        "denoiser": (f"UNet · {count(unet)}", f"predicts {predicts}"),
        "attention": (f"cross-attention × {len(pipe.cross_attention_layers)}",
                      f"pixels ask the {slots} tokens\nkeys, values: [{slots}, {width}]"),
        "guidance": ("guidance", "ε̂ = ε_uncond\n + s·(ε_text − ε_uncond)\n2 rows: no prompt, prompt"),
        "scheduler": ("scheduler step", f"{class_name(pipe.scheduler)}\nx_t → x_t−1"),
        "encoder": (f"VAE encoder · {encoder}", "img2img, training:\nimage → latent"),
        "decoder": (f"VAE decoder · {decoder}", f"{latent} →\n[3, {side}, {side}]"),
        "image": ("image", f"{side} × {side} px"),
        "trace": ("Trace", "recorders keep attention maps,\nlatents, ε̂, x̂₀ at every step"),
    }
    encoders = pipe.text_encoders
    for key, enc, n in zip(("text_encoder", "text_encoder_2"), encoders, (1, 2)):
        name = type(enc).__name__.replace("WithProjection", "")
        pooled = f"\n+ pooled [{enc.config.projection_dim}]" if hasattr(enc, "text_projection") else ""
        title = f"text encoder {n}" if len(encoders) > 1 else "text encoder"
        boxes[key] = (f"{title} · {count(enc)}", f"{name}\n[{slots}, {enc.config.hidden_size}]{pooled}")
    # what the arrows into the UNet carry: the context it cross-attends to (SDXL: and the pooled vector for its time embedding)
    boxes["into_denoiser"] = (f"[{slots}, {width}]", "")
    if pipe.is_sdxl:
        boxes["into_denoiser_2"] = (f"pooled [{encoders[-1].config.projection_dim}]", "")
    return boxes


def flow_boxes(pipe: FlowPipeline) -> dict[str, tuple[str, str]]:
    """``{box: (title, body)}`` for SD3 and Flux: a transformer over one joint sequence, flow matching."""
    p, transformer, vae = pipe.pipeline, pipe.transformer, pipe.vae
    side, factor = pipe.default_size, p.vae_scale_factor
    c, h = vae.config.latent_channels, side // factor
    latent = f"[{c}, {h}, {h}]"
    tokens = (h // 2) ** 2  # 2×2 latent pixels make one token (Flux packs them, SD3 patch-embeds them)
    encoder, decoder = vae_halves(vae)
    flux = pipe.family == "flux"
    t5 = p.text_encoder_2 if flux else p.text_encoder_3
    defaults = pipe.call_defaults()
    t5_slots = defaults["max_sequence_length"]
    clips = [p.text_encoder] if flux else [p.text_encoder, p.text_encoder_2]
    clip_count = count(clips[0]) if flux else f"{count(clips[0])} + {count(clips[1])}"
    text_len = t5_slots if flux else 77 + t5_slots  # SD3: the CLIPs' 77 slots, then T5's
    blocks = (f"{transformer.config.num_layers} double + {transformer.config.num_single_layers} single" if flux
              else f"{transformer.config.num_layers} joint blocks")
    true_cfg = flux and defaults["true_cfg_scale"] > 1 and defaults["negative_prompt"] is not None
    if true_cfg:  # tiny-flux: no guidance input, real classifier-free guidance against the negative prompt
        guidance = ("guidance", f"v̂ = v_u + s·(v_c − v_u)\ns = {defaults['true_cfg_scale']:g}, 2 passes: \"\", prompt")
    elif flux:
        distilled = transformer.config.guidance_embeds
        guidance = ("guidance (distilled)", "g is an input of the\ntransformer: one pass") if distilled else \
            ("guidance", "none (schnell):\none pass per step")
    else:
        guidance = ("guidance", "v̂ = v_u + s·(v_c − v_u)\n2 rows: no prompt, prompt")
    return {
        "prompt": ("prompt", "text"),
        "tokenizer": ("tokenizers", f"CLIP {p.tokenizer.model_max_length} slots\nT5 {t5_slots} slots"),
        "text_encoder": (f"CLIP · {clip_count}",
                         f"pooled [{clips[0].config.hidden_size}]" if flux else "2 × CLIP: pooled vector\n+ 77 slots"),
        "text_encoder_2": (f"T5 · {count(t5)}", f"[{t5_slots}, {t5.config.d_model}]"),
        "noise": ("noise", f"ε ~ N(0, I)\n{latent}"),
        "latent": ("latent x_σ", f"{latent}\n→ {tokens} tokens (2×2)"),
        "denoiser": (f"transformer · {count(transformer)}", "velocity v = ε − x₀"),
        "attention": (f"joint attention × {len(pipe.attention_layers)}", f"{blocks}\n{text_len} text + {tokens} image"),
        "guidance": guidance,
        "scheduler": ("scheduler step", f"{class_name(pipe.scheduler)}\nx ← x + (σ_next − σ)·v"),
        "encoder": (f"VAE encoder · {encoder}", "img2img, training:\nimage → latent"),
        "decoder": (f"VAE decoder · {decoder}", f"{latent} →\n[3, {side}, {side}]"),
        "image": ("image", f"{side} × {side} px"),
        "trace": ("FlowTrace", "recorders keep joint attention,\nlatents, v̂, x̂₀ at every step"),
        # CLIP's pooled vector joins the timestep; the text sequence (Flux: T5's alone, SD3: CLIPs' 77 slots then T5's) joins the image tokens
        "into_denoiser": ("pooled" if flux else "pooled + 77 slots", ""),
        "into_denoiser_2": (f"[{text_len}, {transformer.config.joint_attention_dim}]", ""),
    }


def chosen(highlight) -> list[str]:
    """The part names in ``highlight`` (``None``, a name, or a list of names), checked."""
    if highlight is None:
        return []
    names = [highlight] if isinstance(highlight, str) else highlight
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"highlight must be a part name or a list of them (got {highlight!r}); choose from {sorted(PARTS)}")
    for name in names:
        if name not in PARTS:
            raise ValueError(f"unknown part {name!r} to highlight; choose one of {sorted(PARTS)}, e.g. highlight=\"text\"")
    return list(names)


def pipeline_diagram(pipe, highlight: str | list[str] | None = None):
    """The whole generation as one drawing, its numbers read from ``pipe``; ``highlight`` lights up one part.

    Boxes, left to right and top to bottom (SD 1/2; SDXL adds a second text encoder, SD3/Flux are noted after):

    - **prompt → tokenizer** (``77`` token slots) **→ text encoder** (its class, parameters, output ``[77, D]``);
      the arrow into the UNet carries the context ``[77, cross_attention_dim]`` (SDXL: both encoders side by side,
      and the second one's pooled vector).
    - **noise** ``ε ~ N(0, I)`` ``[C, h, w]`` **→ latent x_t** ``[C, h, w]`` at the model's default size
      (``h = side / 8``) **→ UNet** (parameters, what it predicts: ε, v or x₀) with its **cross-attention** layers
      (how many) **→ guidance** (``ε̂ = ε_uncond + s·(ε_text − ε_uncond)``) **→ scheduler step** (the scheduler's class), and back
      to x_t: the loop, once per denoising step, in a dashed frame.
    - after the last step: **VAE decoder** (parameters, ``[C, h, w] → [3, H, W]``) **→ image** (``H × W`` px).
    - drawn lightly: the **VAE encoder** (img2img and training start from a picture's latent) and the **Trace**
      the recorders fill while the loop runs.

    SD3 and Flux (:class:`~illustrated_sd.FlowPipeline`): tokenizers for CLIP and T5, CLIP's pooled vector and T5's
    ``[T, d]`` sequence, a transformer whose **joint attention** runs over text and image tokens together
    (``(h/2)·(w/2)`` tokens of 2×2 latent pixels), predicting the velocity ``v = ε − x₀``, and an Euler step
    ``x ← x + (σ_next − σ)·v``.

    Args:
        pipe: an :class:`~illustrated_sd.IllustratedPipeline` (SD 1/2, SDXL), a :class:`~illustrated_sd.FlowPipeline`
            (SD3, Flux), or the diffusers pipeline one of them wraps. Nothing is run; only configs and weights' sizes are read.
        highlight: ``None`` (the whole, in its usual colours), or one of ``PARTS`` (or a list of them): ``"text"``,
            ``"latent"``, ``"noise"``, ``"denoiser"``, ``"attention"``, ``"guidance"``, ``"scheduler"``, ``"decoder"``,
            ``"training"``, ``"trace"``: those boxes in a strong colour, the others muted, and the title says
            "where this notebook sits: …".
    Returns:
        a Figure, 9 inches wide (about 900 px in a notebook). Each box is a patch whose ``gid`` is its box name
        (``"denoiser"``, ``"text_encoder_2"``, …), as are its title and body texts, so a test or an SVG can find them.
    Example:
        >>> isd.plot.pipeline_diagram(pipe, highlight="text")   # notebook 01: where the text encoder sits
    """
    from ..loops.unet import IllustratedPipeline  # the runtime's pipeline imports plot helpers; import it when called

    if not isinstance(pipe, (IllustratedPipeline, FlowPipeline)):
        if type(pipe).__module__.startswith("diffusers"):
            pipe = IllustratedPipeline(pipe)  # raises, naming what it wraps, for a diffusers pipeline it cannot drive
        else:
            raise TypeError(f"pipeline_diagram draws a pipeline: an isd.IllustratedPipeline (SD 1/2, SDXL) or isd.FlowPipeline "
                            f"(SD3, Flux), got {type(pipe).__name__}; e.g. isd.plot.pipeline_diagram(isd.load_pipeline())")
    lit = chosen(highlight)
    flow = flow_family(pipe.pipeline) is not None
    boxes = flow_boxes(pipe) if flow else unet_boxes(pipe)
    strong = {box for name in lit for box in PARTS[name][1]}
    two_encoders = flow or pipe.is_sdxl

    fig, ax = plt.subplots(figsize=(9, 5.1))
    ax.set_xlim(-0.25, 12.45)
    ax.set_ylim(-0.3, 6.6)
    ax.set_aspect("equal")
    ax.set_axis_off()

    def style(key, usual):
        """(face, edge, text colour, line width) of a box: its usual colours, strong, or muted."""
        if not lit:
            return usual, "#555555", "#111111", 1.0
        if key in strong:
            return STRONG, STRONG_EDGE, "#111111", 2.0
        return MUTED, MUTED_EDGE, MUTED_TEXT, 0.8

    def box(key, x, y, colour, w=W, h=H, dashed=False):
        face, edge, ink, lw = style(key, colour)
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.15", fc=face, ec=edge,
                                    lw=lw, linestyle=(0, (3, 2)) if dashed else "-", gid=key, zorder=2))
        title, body = boxes[key]
        top = y + h / 2 - 0.14
        ax.text(x, top, literal(title), ha="center", va="top", fontsize=FONT, weight="bold", color=ink, zorder=3, gid=key)
        if body:
            ax.text(x, top - 0.34, literal(body), ha="center", va="top", fontsize=SMALL, color=ink, linespacing=1.25, zorder=3,
                    gid=key)

    def arrow(start, end, lit_with=(), **kw):
        on = not lit or bool(strong & set(lit_with))
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11, lw=1.6 if lit and on else 1.1,
                                     color=(STRONG_EDGE if lit else "#333333") if on else MUTED_EDGE, zorder=1, **kw))

    def note(x, y, text, **kw):
        ax.text(x, y, literal(text), fontsize=SMALL, color="#555555" if not lit else MUTED_TEXT, **kw)

    # the loop's frame: everything inside runs once per step
    ax.add_patch(Rectangle((X[1] - W / 2 - 0.12, RETURN_Y - 0.38), X[4] + W / 2 + 0.12 - (X[1] - W / 2 - 0.12), 2.65,
                           fc="none", ec="#bbbbbb", lw=0.9, linestyle=(0, (4, 3)), zorder=0))

    # 1. the text row
    box("prompt", X[0], ROW_TEXT, VALUE, w=1.5)
    box("tokenizer", X[1], ROW_TEXT, MODEL)
    box("text_encoder", X[2], ROW_TEXT, MODEL)
    if two_encoders:
        box("text_encoder_2", X[3], ROW_TEXT, MODEL)
    arrow((X[0] + 0.75, ROW_TEXT), (X[1] - W / 2, ROW_TEXT), ["prompt", "tokenizer"])
    arrow((X[1] + W / 2, ROW_TEXT), (X[2] - W / 2, ROW_TEXT), ["tokenizer", "text_encoder"])
    if two_encoders:  # the second encoder's tokens go over the first encoder
        arrow((X[1] + 0.6, ROW_TEXT + H / 2), (X[3] - 0.6, ROW_TEXT + H / 2), ["tokenizer", "text_encoder_2"],
              connectionstyle="arc,angleA=90,angleB=90,armA=11,armB=11,rad=4")

    # 2. the loop: noise → x_t → denoiser (attention inside) → guidance → scheduler step → back to x_t
    dh = 2.35  # the denoiser is taller: its attention layers sit inside it
    box("noise", X[0], ROW_LOOP, VALUE, w=1.5)
    box("latent", X[1], ROW_LOOP, VALUE)
    box("denoiser", X[2], ROW_LOOP + 0.2, MODEL, h=dh)
    box("attention", X[2], ROW_LOOP - 0.2, MODEL, w=W - 0.2, h=1.15)
    box("guidance", X[3], ROW_LOOP, MODEL)
    box("scheduler", X[4], ROW_LOOP, MODEL)
    arrow((X[0] + 0.75, ROW_LOOP), (X[1] - W / 2, ROW_LOOP), ["noise", "latent"])
    arrow((X[1] + W / 2, ROW_LOOP), (X[2] - W / 2, ROW_LOOP), ["latent", "denoiser"])
    arrow((X[2] + W / 2, ROW_LOOP), (X[3] - W / 2, ROW_LOOP), ["denoiser", "guidance"])
    arrow((X[3] + W / 2, ROW_LOOP), (X[4] - W / 2, ROW_LOOP), ["guidance", "scheduler"])
    # the context into the denoiser; SDXL/SD3/Flux: the second encoder's part joins it
    text_bottom, denoiser_top = ROW_TEXT - H / 2, ROW_LOOP + 0.2 + dh / 2
    arrow((X[2], text_bottom), (X[2], denoiser_top), ["text_encoder", "attention", "denoiser"])
    if two_encoders:
        arrow((X[3] - W / 2 + 0.2, text_bottom), (X[2] + 0.55, denoiser_top), ["text_encoder_2", "attention", "denoiser"])
    note(X[2] - 0.1, (text_bottom + denoiser_top) / 2, boxes["into_denoiser"][0], ha="right", va="center")
    if "into_denoiser_2" in boxes:
        note(X[2] + 1.35, (text_bottom + denoiser_top) / 2 - 0.1, boxes["into_denoiser_2"][0], ha="left", va="center")
    # the way back: down from the scheduler step, left under the frame's row, up into x_t
    lx, rx = X[1], X[4] - 0.5
    low = ROW_LOOP - H / 2
    on = not lit or "scheduler" in strong or "latent" in strong
    colour = (STRONG_EDGE if lit else "#333333") if on else MUTED_EDGE
    ax.plot([rx, rx, lx], [low, RETURN_Y, RETURN_Y], color=colour, lw=1.6 if lit and on else 1.1, zorder=1)
    arrow((lx, RETURN_Y), (lx, low), ["scheduler", "latent"])
    ax.text((lx + rx) / 2, RETURN_Y + 0.08, "next step: the loop runs once per denoising step", ha="center", va="bottom", fontsize=FONT + 0.5,
            style="italic", color=colour)

    # 3. after the last step: decoder → image; lightly, the encoder (img2img, training) and the Trace
    box("decoder", X[4], ROW_OUT, MODEL)
    box("image", X[3], ROW_OUT, VALUE)
    box("encoder", X[0] + 0.35, ROW_OUT, MODEL, w=W, dashed=True)
    box("trace", X[2] - 0.3, ROW_OUT, RECORD, w=3.0, dashed=True)
    arrow((X[4] + 0.5, low), (X[4] + 0.5, ROW_OUT + H / 2), ["scheduler", "decoder"])
    note(X[4] + 0.6, (low + ROW_OUT + H / 2) / 2 - 0.1, "last", ha="left", va="center")
    arrow((X[4] - W / 2, ROW_OUT), (X[3] + W / 2, ROW_OUT), ["decoder", "image"])
    arrow((X[0] + 0.35, ROW_OUT + H / 2), (X[1] - W / 2, low + 0.15), ["encoder", "latent"], linestyle=(0, (3, 2)))
    frame_bottom = RETURN_Y - 0.38
    arrow((X[2] - 0.3, frame_bottom), (X[2] - 0.3, ROW_OUT + H / 2), ["trace"], linestyle=(0, (3, 2)))

    # a legend where the text row leaves room
    if lit:
        legend = [(STRONG, "this notebook"), (MUTED, "the rest")]
    else:
        legend = [(MODEL, "has weights"), (VALUE, "a value [shape]"), (RECORD, "recorded")]
    for i, (face, label) in enumerate(legend):
        y = ROW_TEXT + 0.45 - 0.42 * i
        ax.add_patch(Rectangle((X[4] - 0.6, y - 0.13), 0.3, 0.26, fc=face, ec="#888888", lw=0.7))
        ax.text(X[4] - 0.2, y, label, fontsize=SMALL, va="center", color="#333333")

    name = literal(getattr(pipe, "name", type(pipe.pipeline).__name__))
    if lit:
        ax.set_title("where this notebook sits: " + " and ".join(PARTS[n][0] for n in lit), fontsize=11, weight="bold", loc="left")
    else:
        ax.set_title(f"one generation, step by step — {name}", fontsize=11, weight="bold", loc="left")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.94, bottom=0.01)
    return fig
