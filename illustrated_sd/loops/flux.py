"""Flux's generation loop, written out: read it beside diffusers' ``pipelines/flux/pipeline_flux.py``.

The same calls on the same components, in the same order, so the same seed gives the same image; the
recorders (joint attention, and the tensors the loop passes around) only watch. What is new against SD 1/2:

- the text is T5's token sequence (CLIP gives only a pooled vector), and it sits in the transformer's one sequence
  beside the picture's patches: 2×2 latent pixels packed into one token;
- the model predicts a **velocity** v̂ along the straight path x_σ = (1 − σ)·x₀ + σ·ε, so one Euler step is
  x_next = x + (σ_next − σ)·v̂ and the clean latent it believes in is x̂₀ = x_σ − σ·v̂;
- Flux-dev is guidance-*distilled*: the guidance scale is an input of the transformer (one pass per step), not a
  mix of two passes. Real classifier-free guidance (two passes) is ``true_cfg_scale`` with a negative prompt.
"""

import numpy as np
import torch
from diffusers import FluxImg2ImgPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from tqdm.auto import tqdm

from ..recording.concepts import concept_stream
from ..recording.joint_attention import recording_joint_attention
from .flow_prompt import flux_layout
from .flow_shared import FlowSettings, build_trace, decode, encode, new_edit_plan, new_recording


def schedule_mu(scheduler, image_len: int) -> float:
    """μ, how far the σ schedule is bent toward the noise for ``image_len`` image tokens: a straight line in the
    number of tokens, from ``base_shift`` at ``base_image_seq_len`` to ``max_shift`` at ``max_image_seq_len``
    (Flux-dev: 0.5 at 256 tokens, 1.15 at 4,096), as diffusers' ``calculate_shift``."""
    c = scheduler.config
    return calculate_shift(image_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5),
                           c.get("max_shift", 1.15))


@torch.no_grad()
def generate_flux(pipe, prompt: str, negative_prompt: str | None, settings: FlowSettings, progress: bool, image=None,
                  strength: float | None = None, concepts: list[str] | None = None, concept_layers: list[int] | None = None,
                  edits: list | None = None):
    """One Flux generation, traced (see ``FlowPipeline.__call__``; ``image``, ``strength``: img2img; ``concepts``,
    ``concept_layers``: ConceptAttention; ``edits``: Reweight / Remove / Swap; all checked); returns a :class:`~illustrated_sd.trace.flow.FlowTrace`."""
    flux, s, record = pipe.pipeline, settings, settings.record
    transformer, scheduler, device = flux.transformer, flux.scheduler, flux._execution_device

    # 2. Encode the prompt: T5's token sequence [1, T, D], CLIP's pooled vector [1, P], and the text's position ids
    layout = flux_layout(flux, prompt, s.max_sequence_length)
    prompt_embeds, pooled, text_ids = flux.encode_prompt(prompt=prompt, prompt_2=None, device=device,
                                                         max_sequence_length=s.max_sequence_length)
    true_cfg = s.true_cfg_scale > 1 and negative_prompt is not None
    if true_cfg:
        negative_embeds, negative_pooled, negative_text_ids = flux.encode_prompt(prompt=negative_prompt, prompt_2=None, device=device,
                                                                                 max_sequence_length=s.max_sequence_length)

    # 3. The σ schedule: S evenly spaced values from 1 down, bent toward the noise by μ, which grows with the number
    #    of image tokens (a big picture keeps its layout through more noise, so it spends more steps at high σ)
    image_len = (s.height // flux.vae_scale_factor // 2) * (s.width // flux.vae_scale_factor // 2)
    timesteps, _ = retrieve_timesteps(scheduler, s.steps, device, sigmas=np.linspace(1.0, 1 / s.steps, s.steps),
                                      mu=schedule_mu(scheduler, image_len))

    # 4. Where the loop starts: noise drawn as [1, C, h, w] and packed into tokens [1, (h/2)(w/2), 4C], with each token's
    #    (row, column) id for RoPE; or (img2img) the encoded picture moved part of the way toward the noise, on the
    #    straight path x_σ = (1 − σ)·x₀ + σ·ε, by diffusers' own FluxImg2ImgPipeline on the same components
    generator = torch.Generator("cpu").manual_seed(s.seed)
    channels, init_latents = transformer.config.in_channels // 4, None
    if image is None:
        latents, image_ids = flux.prepare_latents(1, channels, s.height, s.width, prompt_embeds.dtype, device, generator)
    else:
        img2img = FluxImg2ImgPipeline(**flux.components)
        timesteps, _ = img2img.get_timesteps(s.steps, strength, device)  # the noisiest steps are skipped
        pixels = img2img.image_processor.preprocess(image, height=s.height, width=s.width).to(torch.float32)
        latents, image_ids = img2img.prepare_latents(pixels, timesteps[:1], 1, channels, s.height, s.width, prompt_embeds.dtype,
                                                     device, generator)
        # x₀ itself, for the trace: the same encoding, drawn from the same generator state as prepare_latents drew it
        init_latents = encode(flux, pixels, s.seed)

    # 5. Flux-dev reads the guidance scale as an input, like the timestep (schnell has no such input)
    guidance = torch.full([1], s.guidance_scale, device=device, dtype=torch.float32) if transformer.config.guidance_embeds else None

    # 6. Denoise: v̂ = transformer(x, σ, text); with true CFG v̂ = v̂_u + s·(v̂_c − v̂_u); then the Euler step
    recording = new_recording(transformer, layout, latents.shape[1], len(timesteps), record, text_first=True, edited=bool(edits))
    edit = new_edit_plan(transformer, edits, layout, latents.shape[1], len(timesteps), text_first=True, rows=1)
    stream = None
    if concepts:  # ConceptAttention: the concepts' own stream through the double-stream blocks (recording/concepts.py)
        stream = concept_stream("flux", flux, concepts, len(timesteps), concept_layers, latents.shape[1], device)
    seen = {"latents": [latents], "velocity": [], "velocity_text": [], "velocity_uncond": []}
    if image is None:
        scheduler.set_begin_index(0)  # (img2img's get_timesteps set where it begins)
    with recording_joint_attention(transformer, recording, stream, edit):
        for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress, leave=False)):
            for watcher in (recording, stream, edit):
                if watcher is not None:
                    watcher.step, watcher.active = i, True
            timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000  # the transformer reads σ ∈ [0, 1]
            velocity = transformer(hidden_states=latents, timestep=timestep, guidance=guidance, pooled_projections=pooled,
                                   encoder_hidden_states=prompt_embeds, txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
            seen["velocity_text"].append(velocity)
            if true_cfg:
                for watcher in (recording, stream, edit):
                    if watcher is not None:
                        watcher.active = False  # the maps (and the edits) are the prompt's pass
                velocity_uncond = transformer(hidden_states=latents, timestep=timestep, guidance=guidance,
                                              pooled_projections=negative_pooled, encoder_hidden_states=negative_embeds,
                                              txt_ids=negative_text_ids, img_ids=image_ids, return_dict=False)[0]
                seen["velocity_uncond"].append(velocity_uncond)
                velocity = velocity_uncond + s.true_cfg_scale * (velocity - velocity_uncond)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]  # x + (σ_next − σ)·v̂
            seen["velocity"].append(velocity)
            seen["latents"].append(latents)

    # 7. Tokens back into a latent [1, C, h, w], then the VAE decoder (the maps finished first, a small model's all made now in one
    #    product, and set off for the CPU: they copy meanwhile)
    if recording is not None:
        recording.finish(copy_to_host=record.to_cpu)
    unpack = lambda x: flux._unpack_latents(x, s.height, s.width, flux.vae_scale_factor)  # noqa: E731
    picture = decode(flux, unpack(latents))[0]

    # 8. Everything into one trace: the loop's tensors unpacked to [S, C, h, w]
    steps = {name: unpack(torch.cat(xs)) if xs else None for name, xs in seen.items()}
    return build_trace(pipe, "flux", prompt, negative_prompt if true_cfg else None, s, layout, picture,
                       sigmas=scheduler.sigmas[-len(timesteps) - 1:].to(device), timesteps=timesteps, latents=steps["latents"], velocity=steps["velocity"],
                       velocity_text=steps["velocity_text"], velocity_uncond=steps["velocity_uncond"], embeddings=prompt_embeds[0],
                       uncond_embeddings=negative_embeds[0] if true_cfg else None, pooled=pooled[0], recording=recording, record=record,
                       strength=strength, init_latents=init_latents, concepts=stream, edits=edit)
