"""SD3's (and SD3.5's) generation loop, written out: read it beside diffusers'
``pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py``.

The same calls on the same components, so the same seed gives the same image. Against SD 1/2: three text
encoders (CLIP-L and CLIP-G side by side in 77 slots, then T5's tokens), one joint sequence of text and patches
(the transformer cuts the latent into 2×2 patches itself), and a velocity v̂ on the straight path from noise to
picture, stepped by Euler: x_next = x + (σ_next − σ)·v̂. Guidance is classifier-free, as in SD 1/2: the
unconditional and the prompt's rows in one batch, v̂ = v̂_u + s·(v̂_c − v̂_u).
"""

import torch
from diffusers import StableDiffusion3Img2ImgPipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift, retrieve_timesteps
from tqdm.auto import tqdm

from ..recording.concepts import concept_stream
from ..recording.joint_attention import recording_joint_attention
from .flow_prompt import sd3_layout
from .flow_shared import FlowSettings, build_trace, decode, encode, new_edit_plan, new_recording


@torch.no_grad()
def generate_sd3(pipe, prompt: str, negative_prompt: str | None, settings: FlowSettings, progress: bool, image=None,
                 strength: float | None = None, concepts: list[str] | None = None, concept_layers: list[int] | None = None,
                 edits: list | None = None):
    """One SD3 / SD3.5 generation, traced (see ``FlowPipeline.__call__``; ``image``, ``strength``: img2img; ``concepts``,
    ``concept_layers``: ConceptAttention; ``edits``: Reweight / Remove / Swap on the prompt's row; all checked);
    returns a :class:`~illustrated_sd.trace.flow.FlowTrace`."""
    sd3, s, record = pipe.pipeline, settings, settings.record
    transformer, scheduler, device = sd3.transformer, sd3.scheduler, sd3._execution_device
    guided = s.guidance_scale > 1  # as diffusers: s ≤ 1 is the prompt alone

    # 2. Encode the prompt: [1, 77 + T, D] (CLIP-L ⊕ CLIP-G padded to T5's width, then T5), pooled [1, P_L + P_G]
    layout = sd3_layout(sd3, prompt, s.max_sequence_length)
    prompt_embeds, negative_embeds, pooled, negative_pooled = sd3.encode_prompt(
        prompt=prompt, prompt_2=None, prompt_3=None, negative_prompt=negative_prompt, do_classifier_free_guidance=guided,
        device=device, max_sequence_length=s.max_sequence_length)
    context = torch.cat([negative_embeds, prompt_embeds]) if guided else prompt_embeds  # rows [unconditional, prompt]
    pooled_context = torch.cat([negative_pooled, pooled]) if guided else pooled

    # 3. The σ schedule, shifted toward the noise (by the scheduler's fixed shift, or by μ for the image's size)
    patch, factor = transformer.config.patch_size, sd3.vae_scale_factor
    image_len = (s.height // factor // patch) * (s.width // factor // patch)
    shift = {}
    if scheduler.config.get("use_dynamic_shifting", None):
        shift["mu"] = calculate_shift(image_len, scheduler.config.get("base_image_seq_len", 256), scheduler.config.get("max_image_seq_len", 4096),
                                      scheduler.config.get("base_shift", 0.5), scheduler.config.get("max_shift", 1.16))
    timesteps, _ = retrieve_timesteps(scheduler, s.steps, device, sigmas=None, **shift)

    # 4. Where the loop starts: the noise [1, C, h, w], or (img2img) the encoded picture moved part of the way toward
    #    it, x_σ = (1 − σ)·x₀ + σ·ε, by diffusers' own StableDiffusion3Img2ImgPipeline on the same components
    generator = torch.Generator("cpu").manual_seed(s.seed)
    init_latents = None
    if image is None:
        latents = sd3.prepare_latents(1, transformer.config.in_channels, s.height, s.width, prompt_embeds.dtype, device, generator)
    else:
        img2img = StableDiffusion3Img2ImgPipeline(**sd3.components)
        timesteps, _ = img2img.get_timesteps(s.steps, strength, device)  # the noisiest steps are skipped
        pixels = img2img.image_processor.preprocess(image, height=s.height, width=s.width)
        latents = img2img.prepare_latents(pixels, timesteps[:1], 1, 1, prompt_embeds.dtype, device, generator)
        # x₀ itself, for the trace: the same encoding, drawn from the same generator state as prepare_latents drew it
        init_latents = encode(sd3, pixels, s.seed)

    # 6. Denoise (there is no stage 5: SD3 has no guidance input)
    recording = new_recording(transformer, layout, image_len, len(timesteps), record, text_first=False, edited=bool(edits))
    edit = new_edit_plan(transformer, edits, layout, image_len, len(timesteps), text_first=False, rows=2 if guided else 1)
    stream = None
    if concepts:  # ConceptAttention: the concepts' own stream through the joint blocks, read in the prompt's row (recording/concepts.py)
        stream = concept_stream("sd3", sd3, concepts, len(timesteps), concept_layers, image_len, device)
    seen = {"latents": [latents], "velocity": [], "velocity_text": [], "velocity_uncond": []}
    with recording_joint_attention(transformer, recording, stream, edit):
        for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress, leave=False)):
            for watcher in (recording, stream, edit):
                if watcher is not None:
                    watcher.step = i
            model_input = torch.cat([latents] * 2) if guided else latents
            output = transformer(hidden_states=model_input, timestep=t.expand(model_input.shape[0]), encoder_hidden_states=context,
                                 pooled_projections=pooled_context, return_dict=False)[0]
            velocity = output
            if guided:  # v̂ = v̂_u + s·(v̂_c − v̂_u)
                velocity_uncond, velocity_text = output.chunk(2)
                velocity = velocity_uncond + s.guidance_scale * (velocity_text - velocity_uncond)
                seen["velocity_uncond"].append(velocity_uncond)
            seen["velocity_text"].append(output[-1:])
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]  # x + (σ_next − σ)·v̂
            seen["velocity"].append(velocity)
            seen["latents"].append(latents)

    # 7. The VAE decoder (the maps finished first, a small model's all made now in one
    #    product, and set off for the CPU: they copy meanwhile)
    if recording is not None:
        recording.finish(copy_to_host=record.to_cpu)
    picture = decode(sd3, latents)[0]

    # 8. Everything into one trace
    steps = {name: torch.cat(xs) if xs else None for name, xs in seen.items()}
    return build_trace(pipe, "sd3", prompt, negative_prompt, s, layout, picture, sigmas=scheduler.sigmas[-len(timesteps) - 1:].to(device), timesteps=timesteps,
                       latents=steps["latents"], velocity=steps["velocity"], velocity_text=steps["velocity_text"],
                       velocity_uncond=steps["velocity_uncond"], embeddings=prompt_embeds[0],
                       uncond_embeddings=negative_embeds[0] if guided else None, pooled=pooled[0], recording=recording, record=record,
                       strength=strength, init_latents=init_latents, concepts=stream, edits=edit)
