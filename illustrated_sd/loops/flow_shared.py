"""What the Flux and SD3 loops share: the input checks, the recording of one generation, decoding, the trace."""

from dataclasses import dataclass

import torch
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img import retrieve_latents

from .. import checks
from ..recording.recorders import RecordOptions, to_host, wait_for_host_copies
from ..trace.unet import spread_steps
from ..recording.flow_edits import FlowEditPlan
from ..recording.joint_attention import QUADRANTS, JointAttentionRecording, joint_layers
from .flow_prompt import TextLayout
from ..trace.flow import FlowTrace


@dataclass
class FlowSettings:
    """A flow-matching generation's checked settings."""

    steps: int
    guidance_scale: float | None
    true_cfg_scale: float
    seed: int
    height: int
    width: int
    max_sequence_length: int
    record: RecordOptions


def check_flow_inputs(pipe, prompt, steps, guidance_scale, seed, negative_prompt, height, width, true_cfg_scale,
                      max_sequence_length, record, progress) -> FlowSettings:
    """Refuse bad input to a Flux or SD3 call before any work, with the fix; returns the :class:`FlowSettings`."""
    checks.text("prompt", prompt, hint="a string")
    if not prompt.strip():
        raise ValueError("the prompt is empty; describe the image, e.g. pipe('a red circle on the left')")
    checks.text("negative_prompt", negative_prompt, allow_none=True, hint="None means none (Flux) or the empty prompt (SD3)")
    steps = checks.whole_number("num_inference_steps", steps, minimum=1, maximum=1000, hint="Flux-dev and SD3 use 28")
    if guidance_scale is not None:
        guidance_scale = checks.real_number("guidance_scale", guidance_scale, hint="Flux-dev 3.5, SD3 7.0")
    true_cfg_scale = checks.real_number("true_cfg_scale", true_cfg_scale, hint="1 turns it off; > 1 with a negative_prompt")
    if pipe.family != "flux" and true_cfg_scale != 1:
        raise ValueError("true_cfg_scale is Flux's option (real guidance beside its distilled one); SD3's guidance_scale "
                         "is already classifier-free guidance: pass guidance_scale= instead")
    seed = checks.seed(seed)
    sizes = [checks.image_side(side, size, pipe.size_multiple, pipe.default_size, why=" (the VAE's 8 × the 2×2 patch)")
             for side, size in (("height", height), ("width", width))]
    longest = 512
    max_sequence_length = checks.whole_number("max_sequence_length", max_sequence_length, minimum=1, maximum=longest,
                                              hint="T5's slots: Flux-dev 512, schnell and SD3 256")
    if record is not None and not isinstance(record, RecordOptions):
        raise TypeError(f"record must be a RecordOptions (got {record!r}); e.g. record=isd.RecordOptions(per_head=True)")
    record = record or pipe.record
    checks.flag("progress", progress)
    return FlowSettings(steps, guidance_scale, true_cfg_scale, seed, sizes[0], sizes[1], max_sequence_length, record)


def new_edit_plan(transformer, edits, layout: TextLayout, image_len: int, steps: int, text_first: bool, rows: int):
    """The :class:`~illustrated_sd.recording.flow_edits.FlowEditPlan` of ``edits`` for this call, or ``None`` without edits."""
    if not edits:
        return None
    return FlowEditPlan(edits, layout.words, layout.kept, layout.length, image_len, text_first, steps, list(joint_layers(transformer)),
                        transformer.device, transformer.dtype, rows=rows, tokens=layout.tokens,
                        heads=transformer.config.num_attention_heads)


def recording_gib(record: RecordOptions, steps: int, layers: int, heads: int, tokens: int, image_tokens: int,
                  dtype: torch.dtype) -> float:
    """GiB the attention maps of one generation take: ``steps × layers × (heads or 1) ×`` each recorded quadrant's
    rows × columns (``tokens`` = the prompt's kept text tokens ``n``, ``image_tokens`` = ``N``; the padding is one column).

    Example:
        >>> recording_gib(RecordOptions(), 28, 57, 24, 20, 4096, torch.bfloat16)   # Flux-dev at 1024², a 20-token prompt
    """
    n, N = tokens, image_tokens
    columns = {"image_to_text": N * (n + 1), "text_to_image": n * N, "text_to_text": n * (n + 1), "image_to_image": N * N}
    if record.compact:  # one float32 mean per quadrant
        return sum(columns[q] for q in record.quadrants) * 4 / 2**30
    h = heads if record.per_head else 1
    return steps * layers * h * sum(columns[q] for q in record.quadrants) * torch.finfo(dtype).bits / 8 / 2**30


def new_recording(transformer, layout: TextLayout, image_len: int, steps: int, record: RecordOptions,
                  text_first: bool, edited: bool = False) -> JointAttentionRecording | None:
    """The attention recording of one generation, as ``record`` asks (``None`` when it asks for no maps); ``edited``:
    the call has edits (the maps are then made as each layer runs, never on the small road at the end).

    Refuses (``ValueError``) a recording over ``record.memory_budget_gib``, naming what would make it fit.
    """
    if not record.cross_attention or not record.quadrants:
        return None
    names = list(joint_layers(transformer))
    layers = names if record.layers is None else record.layers
    unknown = [n for n in layers if n not in names]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; this transformer's joint-attention layers are {names}")
    heads = transformer.config.num_attention_heads
    dtype = record.map_dtype or transformer.dtype
    gib = recording_gib(record, steps, len(layers), heads, len(layout.kept), image_len, dtype)
    if record.memory_budget_gib is not None and gib > record.memory_budget_gib:
        raise ValueError(f"this recording would take {gib:.2f} GiB, over memory_budget_gib={record.memory_budget_gib:g}: record "
                         "fewer quadrants (RecordOptions(quadrants=('image_to_text',))), fewer layers (layers=[...]), no "
                         "per_head, fewer steps or a smaller image; or raise memory_budget_gib")
    return JointAttentionRecording(layers, layout.length, image_len, text_first, layout.kept, steps, record.quadrants,
                                   record.per_head, heads, dtype, transformer.device, compact=record.compact,
                                   small=not edited)


def encode(pipeline, pixels: torch.Tensor, seed: int) -> torch.Tensor:
    """``pixels [1, 3, H, W]`` in [-1, 1] → x₀ ``[C, h, w]`` as the img2img pipelines encode a picture: a draw from the
    VAE's posterior with a generator seeded ``seed`` (so the same draw as theirs), then shifted and scaled."""
    vae = pipeline.vae
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = retrieve_latents(vae.encode(pixels.to(pipeline._execution_device, vae.dtype)), generator=generator)
    return ((latents - vae.config.shift_factor) * vae.config.scaling_factor)[0]


def decode(pipeline, latents: torch.Tensor) -> list:
    """Latents ``[B, C, h, w]`` → PIL images, as SD3's and Flux's pipelines decode: undo the VAE's shift and scale."""
    vae = pipeline.vae
    latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    return pipeline.image_processor.postprocess(vae.decode(latents.to(vae.dtype), return_dict=False)[0], output_type="pil")


def build_trace(pipe, family: str, prompt: str, negative_prompt, settings: FlowSettings, layout: TextLayout, picture, *,
                sigmas, timesteps, latents, velocity, velocity_text, velocity_uncond, embeddings, uncond_embeddings, pooled,
                recording: JointAttentionRecording | None, record: RecordOptions, strength: float | None = None,
                init_latents: torch.Tensor | None = None, concepts=None, edits=None) -> FlowTrace:
    """Everything one generation recorded, into a :class:`FlowTrace` (latents ``[S + 1, C, h, w]``, per-step tensors
    ``[S, C, h, w]``; x̂₀ = x_σ − σ·v̂ computed here, at every step at once). A compact ``record`` keeps the per-step
    tensors at ``record.keep_steps`` steps only (latents: the start, then after each kept step)."""
    keep = to_host if record.to_cpu else (lambda x: x)
    pred_x0 = latents[:-1].float() - sigmas[:-1, None, None, None].float() * velocity.float()
    kept_steps = spread_steps(len(timesteps), record.keep_steps) if record.compact else None
    if kept_steps is not None:
        at = torch.tensor(kept_steps, device=latents.device)
        latents = torch.cat([latents[:1], latents[at + 1]])
        pred_x0, velocity, velocity_text = pred_x0[at], velocity[at], velocity_text[at]
        velocity_uncond = None if velocity_uncond is None else velocity_uncond[at]
    attention = {} if recording is None else {q: keep(m) for q, m in recording.buffers.items()}
    trace = FlowTrace(
        family=family, prompt=prompt, negative_prompt=negative_prompt, image=picture, seed=settings.seed,
        height=settings.height, width=settings.width, model=pipe.name, scheduler=type(pipe.scheduler).__name__,
        guidance_scale=settings.guidance_scale, true_cfg_scale=settings.true_cfg_scale,
        tokens=layout.tokens, token_sources=layout.sources, words=layout.words, kept_slots=layout.kept.clone(),
        text_length=layout.length, encoders={k: list(v) for k, v in layout.encoders.items()}, truncated=layout.truncated,
        text_embeddings=keep(embeddings), uncond_text_embeddings=None if uncond_embeddings is None else keep(uncond_embeddings),
        pooled_text_embeds=keep(pooled), sigmas=keep(sigmas.float()), timesteps=keep(timesteps.float()), latents=keep(latents),
        velocity=keep(velocity), velocity_text=keep(velocity_text),
        velocity_uncond=None if velocity_uncond is None else keep(velocity_uncond), pred_x0=keep(pred_x0.to(latents.dtype)),
        attention=attention, layers=[] if recording is None else recording.layers, per_head=record.per_head,
        mode="text2img" if init_latents is None else "img2img", strength=strength,
        init_latents=None if init_latents is None else keep(init_latents),
        concepts=[] if concepts is None else list(concepts.concepts),
        concept_maps=None if concepts is None else keep(concepts.maps),
        concept_layers=[] if concepts is None else concepts.names,
        edits=[] if edits is None else edits.records, kept_steps=kept_steps)
    wait_for_host_copies(latents.device)
    return trace


__all__ = ["QUADRANTS", "FlowSettings", "build_trace", "check_flow_inputs", "decode", "encode", "new_edit_plan", "new_recording", "recording_gib"]
