"""IllustratedPipeline: Stable Diffusion's generation loop, written out, with recorders watching.

Read ``__call__`` beside diffusers' ``pipeline_stable_diffusion.py`` (and notebook 05): it is the same
sequence of calls on the same components, so for the same seed it makes the same image. Its stages are
numbered; two live in their own modules because they are long and not the point: the input checks
(``inputs.py``) and where each mode starts (``starts.py``: noise, or a picture noised part of the way).
The only additions are the recorders, which observe and write into a :class:`~illustrated_sd.trace.unet.Trace`.

SDXL runs the same loop (``pipeline_stable_diffusion_xl.py``); it differs in three places, each marked
"SDXL": two text encoders (``text.encode_prompt_xl``), a pooled text vector and size "micro-conditioning"
added to the timestep embedding (``sdxl.py``), and a VAE run in float32 (``lessons/latent_space.py``).
"""

import numbers

import torch
from PIL import Image
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)
from tqdm.auto import tqdm

from ..recording.attention_layers import attention_layers
from .. import checks
from .flow import FlowPipeline, flow_family
from ..recording.edits import check_edits, editing, hidden_words
from .inputs import check_image, check_inputs, check_mask, check_strength
from ..lessons.latent_space import to_pixels
from ..recording.recorders import RecordOptions, recording, to_host, wait_for_host_copies
from .sampling import alpha_bars_for, classifier_free_guidance, pred_x0, rescale_guidance
from .sdxl import added_conditioning, is_sdxl, time_ids
from .starts import start_for_inpainting, start_from_image, start_from_noise
from .text import encode_prompt_xl, encode_prompts
from ..trace.unet import Trace

# The diffusers pipelines whose components IllustratedPipeline can drive (an SDXL refiner is an img2img one).
SUPPORTED = (StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline)

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
}


def _keeper(record: RecordOptions):
    """Where recorded tensors end up: one (non-blocking) move to the CPU after the loop, or left on the device."""
    return to_host if record.to_cpu else (lambda x: x)


class IllustratedPipeline:
    """A diffusers ``StableDiffusionPipeline`` (or SDXL pipeline) that returns a :class:`Trace` of everything it did.

    The wrapped pipeline's components are used as they are; nothing is copied or patched, and after a
    call the pipeline is exactly as it was (recorders are removed even when a call fails).

    Example:
        >>> pipe = IllustratedPipeline(StableDiffusionPipeline.from_pretrained("path/to/sd"))
        >>> trace = pipe("a red circle on the left", num_inference_steps=20, seed=0)
        >>> trace.image, trace.cross_attention("circle").shape   # PIL image, [h, w]
    """

    def __new__(cls, pipeline=None, record: RecordOptions | None = None, name: str | None = None, **kwargs):
        # SD3 and Flux are diffusion transformers with a loop of their own (flux.py, sd3.py): wrapping one gives
        # a FlowPipeline, so that isd.IllustratedPipeline(any supported diffusers pipeline) is the one way in.
        if cls is IllustratedPipeline and flow_family(pipeline) is not None:
            if kwargs:
                raise TypeError(f"{sorted(kwargs)} belong to SD 1/2 pipelines; a {type(pipeline).__name__} takes record= and name=")
            return FlowPipeline(pipeline, record=record, name=name)
        return super().__new__(cls)

    def __init__(self, pipeline: StableDiffusionPipeline | StableDiffusionXLPipeline, record: RecordOptions | None = None, name: str | None = None,
                 known_words: set[str] | None = None, world: int | None = None):
        if not isinstance(pipeline, SUPPORTED):
            raise TypeError(
                f"IllustratedPipeline wraps a diffusers StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline "
                f"or FluxPipeline, got {type(pipeline).__name__}; load one with isd.load_pipeline(path) or "
                "StableDiffusionPipeline.from_pretrained(path)"
            )
        self.pipeline = pipeline
        self.record = record or RecordOptions()
        self.name = name or pipeline.name_or_path or type(pipeline).__name__
        # A model trained on a small world (the embedded default) knows few words; say so when a prompt strays.
        self.known_words = set(known_words) if known_words else None
        self.world = world  # which version of the synthetic world a model trained by illustrated_sd learned (else None)

    # The components, under the names diffusers gives them.
    unet = property(lambda self: self.pipeline.unet)
    vae = property(lambda self: self.pipeline.vae)
    text_encoder = property(lambda self: self.pipeline.text_encoder)
    tokenizer = property(lambda self: self.pipeline.tokenizer)
    scheduler = property(lambda self: self.pipeline.scheduler)
    device = property(lambda self: self.pipeline.device)
    dtype = property(lambda self: self.pipeline.unet.dtype)
    vae_scale_factor = property(lambda self: self.pipeline.vae_scale_factor)
    # SDXL's second text encoder (None for SD 1/2, and the only one in a refiner)
    text_encoder_2 = property(lambda self: getattr(self.pipeline, "text_encoder_2", None))
    tokenizer_2 = property(lambda self: getattr(self.pipeline, "tokenizer_2", None))

    @property
    def is_sdxl(self) -> bool:
        """Whether the wrapped pipeline is SDXL (two text encoders, pooled text and size conditioning)."""
        return is_sdxl(self.pipeline)

    @property
    def text_encoders(self) -> list:
        """The text encoders that exist: ``[text_encoder]`` for SD 1/2, both for SDXL-base, the second for a refiner."""
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]

    @property
    def cross_attention_layers(self) -> list[str]:
        """Names of the UNet's cross-attention layers, in the order it runs them."""
        return list(attention_layers(self.unet)["cross"])

    @property
    def default_size(self) -> int:
        """The image side the UNet was trained for, in pixels (``sample_size × 8``)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def guidance_option(self, scale: float) -> dict:
        """The call option that sets classifier-free guidance to ``scale``: ``{"guidance_scale": scale}`` (the same
        method on a :class:`FlowPipeline` names the option its model reads)."""
        return {"guidance_scale": scale}

    def set_scheduler(self, name: str) -> None:
        """Swap the sampler, keeping the model's noise schedule: one of ``SCHEDULERS`` (``"ddim"``, ``"euler"``, ``"dpm++"``, …)."""
        if not isinstance(name, str) or name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
        self.pipeline.scheduler = SCHEDULERS[name].from_config(self.scheduler.config)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> list:
        """Decode latents (``[N, C, h, w]``, as stored in a trace) with the VAE into PIL images, as the pipeline does."""
        images = to_pixels(self.vae, latents.to(self.device, self.vae.dtype), upcast=self.is_sdxl)
        return self.pipeline.image_processor.postprocess(images, output_type="pil")

    def __repr__(self) -> str:
        return f"IllustratedPipeline({self.name!r}, {type(self.scheduler).__name__}, {self.device}, {self.dtype})"


    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int | list[int] | None = 0,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        record: RecordOptions | None = None,
        progress: bool = True,
        *,
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
        strength: float | None = None,
        guidance_rescale: float = 0.0,
        edits: list | None = None,
        num_images_per_prompt: int = 1,
    ) -> Trace | list[Trace]:
        """Generate one image from ``prompt`` and record how it was made.

        Args:
            prompt: what to draw; at most 77 CLIP tokens are used (the rest is dropped with a warning). A list of
                ``B`` prompts is drawn together, in batched UNet calls (text-to-image, SD 1/2, no edits), and gives a
                list of ``B`` traces; ``seed`` is then a list of ``B`` seeds (or one, for all). (A list of one is the
                one-prompt call in a list, with every option.)
            num_inference_steps: denoising steps ``S`` (≥ 1). Some samplers (PNDM, Heun) call the UNet
                a few extra times; the trace has one entry per UNet call.
            guidance_scale: classifier-free guidance ``s`` in ε̂ = ε_u + s·(ε_c − ε_u). ``s = 1`` is the prompt
                alone (one UNet row, no guidance); ``s = 0`` the unconditional model alone ("no prompt at
                all"); ``0 < s < 1`` blends the two, ``s < 0`` pushes away from the prompt. (diffusers turns
                guidance off for every ``s ≤ 1``; here every ``s`` means what the formula says.)
            seed: makes the initial noise, as ``torch.Generator("cpu").manual_seed(seed)`` would in
                diffusers. Pass ``generator=`` instead for your own generator.
            negative_prompt: what to steer away from (the unconditional branch); ``None`` = "".
            height, width: image size in pixels, multiples of 8; default the model's native size (an
                input ``image`` sets the size instead).
            eta: DDIM's η (0 = deterministic); ignored by other schedulers.
            record: what to record; defaults to ``self.record`` (see :class:`RecordOptions`).
            progress: show a progress bar over the denoising steps.
            image, mask, strength: start from a picture instead of noise; :meth:`img2img` and
                :meth:`inpaint` explain them and are the usual way to pass them.
            guidance_rescale: φ ∈ [0, 1] of "Common Diffusion Noise Schedules and Sample Steps are Flawed"
                (§3.4): rescale ε̂ to the standard deviation of ε_c, mixed in by φ, against the washed-out
                colours of large ``s``. 0 (default) leaves ε̂ alone; SDXL checkpoints often use 0.7.
            edits: interventions for this call only, e.g. ``[isd.edits.Reweight("red", 0)]`` (remove a word's
                attention) or ``[isd.edits.Swap(source_trace)]`` (keep another generation's layout); see
                :mod:`illustrated_sd.recording.edits`; ``isd.edits.Remove("red")`` takes a word out entirely. Recorded in ``trace.edits``.
            num_images_per_prompt: ``n`` pictures of each prompt in the same batched calls (text-to-image, SD 1/2):
                picture ``j`` of a prompt is drawn from its seed + ``j``. Gives a list of ``B·n`` traces, each prompt's
                ``n`` side by side, as diffusers orders its images (and with its images for the same generators).
        Returns:
            a :class:`Trace` whose ``image`` equals ``StableDiffusionPipeline(...)`` for the same settings
            (``StableDiffusionImg2ImgPipeline`` / ``StableDiffusionInpaintPipeline`` with an ``image``;
            ``StableDiffusionXLPipeline`` / ``StableDiffusionXLImg2ImgPipeline`` for SDXL).
        Example:
            >>> trace = pipe("a red circle on the left", num_inference_steps=20, guidance_scale=7.5, seed=0)
            >>> trace.latents.shape        # [S + 1, 4, h, w]
        """
        # 1. Check the inputs, before any work (the fix is in every message).
        if not isinstance(prompt, str) or num_images_per_prompt != 1:  # several pictures, drawn together: each checked as one would be
            prompts, seeds = ([prompt], [seed]) if isinstance(prompt, str) else (prompt, seed)
            return self._batch(prompts, seeds, num_inference_steps, guidance_scale, negative_prompt, height, width, generator, eta,
                               record, progress, image, mask, strength, guidance_rescale, edits, num_images_per_prompt)
        if image is not None:
            if height is not None or width is not None:
                raise ValueError("height and width come from the input image; resize the image instead of passing them")
            image = check_image(image, "image", self.vae_scale_factor)
            height, width = image.height, image.width
            strength = (1.0 if mask is not None else 0.6) if strength is None else strength
            if mask is not None:
                if self.is_sdxl:
                    raise ValueError("inpainting is written for SD 1/2 pipelines; with SDXL, use img2img, or diffusers' "
                                     "StableDiffusionXLInpaintPipeline (untraced)")
                check_mask(mask, image)
        elif mask is not None or strength is not None:
            raise ValueError("mask and strength belong to an input image: pass image= too (see pipe.img2img and pipe.inpaint)")
        settings = check_inputs(self, prompt, num_inference_steps, guidance_scale, seed, generator, height, width,
                                negative_prompt, eta, record, progress)
        return self._generate([prompt], [settings], generator, negative_prompt, image, mask, strength, guidance_rescale, edits, progress)[0]

    def _batch(self, prompts, seeds, num_inference_steps, guidance_scale, negative_prompt, height, width, generator, eta, record,
               progress, image, mask, strength, guidance_rescale, edits, images_per_prompt=1) -> list[Trace]:
        """``B`` prompts (``n`` pictures each) in batched UNet calls: each checked as a single call checks it, then
        :meth:`_generate`."""
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise TypeError(f"prompt must be a string or a non-empty list of strings (got {prompts!r:.60})")
        n = checks.whole_number("num_images_per_prompt", images_per_prompt, minimum=1, hint="pictures of each prompt, e.g. 4")
        prompts = list(prompts)
        seeds = list(seeds) if isinstance(seeds, (list, tuple)) else [seeds] * len(prompts)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts need {len(prompts)} seeds, one each (got {len(seeds)}); or pass one seed for all")
        # picture j of a prompt comes from its seed + j (a seed that is not a whole number is left for check_inputs to refuse)
        seeds = [s + j if isinstance(s, numbers.Real) and not isinstance(s, bool) else s for s in seeds for j in range(n)]
        prompts = [p for p in prompts for _ in range(n)]
        if len(prompts) == 1:  # a list of one is the one-prompt call, which every pipeline and option supports
            return [self(prompts[0], num_inference_steps, guidance_scale, seeds[0], negative_prompt, height, width, generator, eta,
                         record, progress, image=image, mask=mask, strength=strength, guidance_rescale=guidance_rescale, edits=edits)]
        if generator is not None:
            raise ValueError("a batch draws each prompt's noise from its own seed: pass seed=[...], not generator=")
        if image is not None or mask is not None or strength is not None or edits or self.is_sdxl:
            raise NotImplementedError("a batch of prompts (or num_images_per_prompt > 1) is text-to-image on SD 1/2 without "
                                      "edits; for img2img, inpainting, SDXL or edits, generate one picture at a time")
        settings = [check_inputs(self, p, num_inference_steps, guidance_scale, s, None, height, width, negative_prompt, eta, record,
                                 progress) for p, s in zip(prompts, seeds)]
        return self._generate(prompts, settings, None, negative_prompt, None, None, None, guidance_rescale, [], progress, n)

    def _generate(self, prompts: list[str], all_settings: list, generator, negative_prompt, image, mask, strength,
                  guidance_rescale, edits, progress, images_per_prompt: int = 1) -> list[Trace]:
        """The generation of ``B = len(prompts)`` pictures (checked: ``all_settings`` one each) side by side; see ``__call__``.
        ``prompts`` holds each prompt ``images_per_prompt`` times in a row."""
        settings, batch = all_settings[0], len(prompts)
        prompt = prompts[0]  # (what edits, img2img and inpainting read: they take one prompt)
        steps, s, record = settings.num_inference_steps, settings.guidance_scale, settings.record
        visited = check_strength(strength, steps) if image is not None else steps
        guidance_rescale = checks.real_number("guidance_rescale", guidance_rescale, minimum=0, maximum=1,
                                              hint="0 = off; SDXL checkpoints often use 0.7")
        edits = check_edits(edits)
        if generator is None:  # as diffusers users write it: torch.Generator("cpu").manual_seed(seed), one per prompt
            generators = [torch.Generator(device="cpu").manual_seed(one.seed) for one in all_settings]
            generator = generators[0] if batch == 1 else generators
        unet, scheduler, device = self.unet, self.scheduler, self.device

        # 2. Encode the prompt: tokens → 77 vectors (and the negative or empty prompt, for guidance).
        # At s = 1 the guidance formula gives the prompt's row exactly, so that row alone is computed (as
        # diffusers does for s ≤ 1; below 1 diffusers ignores s, while here s = 0 is the unconditional model).
        guided = s != 1 and unet.config.time_cond_proj_dim is None
        # (an edit that removes a word hides it from the tokens after it: edits.Remove)
        if self.is_sdxl:  # SDXL: two encoders side by side, and a pooled summary of the prompt
            texts = [encode_prompt_xl(self.pipeline, prompt, negative_prompt, guided, device, hide=hidden_words(edits))]
        else:
            # each prompt once, then its vectors once per picture: the rows diffusers makes for num_images_per_prompt
            texts = encode_prompts(self.tokenizer, self.text_encoder, prompts[::images_per_prompt], negative_prompt, guided, device,
                                   hide=hidden_words(edits))
            texts = [text for text in texts for _ in range(images_per_prompt)]
        text = texts[0]
        # B prompts: the UNet's batch is [unconditional × B, prompt × B] with guidance, as diffusers stacks it
        context = text.context if batch == 1 else torch.cat([t.uncond for t in texts] * guided + [t.embeddings for t in texts])
        dtype = context.dtype

        # 3. Where the loop starts: pure noise, or an input image noised part of the way (starts.py).
        if image is None:
            start = start_from_noise(self, steps, settings.height, settings.width, generator, dtype, batch)
        elif mask is None:
            start = start_from_image(self, image, strength, steps, visited, generator, dtype)
        else:
            start = start_for_inpainting(self, image, mask, strength, steps, visited, generator, dtype, guided)
        latents, timesteps = start.latents, start.timesteps

        # 4. What the scheduler's step needs besides ε̂ (DDIM's η, a generator for the samplers that add noise),
        # and ᾱ_t at each visited timestep, to turn every prediction into x̂₀ afterwards.
        step_kwargs = self.pipeline.prepare_extra_step_kwargs(generator, settings.eta)
        alpha_bars = alpha_bars_for(scheduler, timesteps).to(device)
        # SDXL: the pooled text vector and the picture's size join the timestep embedding (sdxl.py)
        added, ids, id_names = None, None, None
        if self.is_sdxl:
            ids, negative_ids, id_names = time_ids(self.pipeline, settings.height, settings.width, dtype)
            added = added_conditioning(text, ids, negative_ids, device)

        # 5. The denoising loop: predict the noise, combine with guidance, let the scheduler step.
        # The recorders watch and the edits intervene (both installed for this block only; a recording over
        # budget, or an edit that does not fit the prompt, is refused here, before the first UNet call).
        with recording(unet, self.text_encoders, record, tuple(latents.shape[1:]), len(timesteps), guided,
                       context.shape[1], max(len(t.tokenized.tokens) for t in texts), batch) as rec, \
                editing(unet, edits, prompt, text.tokenized, len(timesteps), tuple(latents.shape[-2:]), guided) as edit:
            rec.attention.adjust = edit.adjust  # the maps recorded are the attention the model used, edits included
            for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress, leave=False)):
                edit.at(i)
                model_input = torch.cat([latents] * 2) if guided else latents
                model_input = scheduler.scale_model_input(model_input, t)
                unet_input = model_input if start.unet_extra is None else torch.cat([model_input, start.unet_extra], dim=1)
                unet_output = unet(unet_input, t, encoder_hidden_states=context, added_cond_kwargs=added,
                                   return_dict=False)[0]
                rec.attention.collect(i)  # file this call's maps under step i
                noise_pred = unet_output
                if guided:  # ε̂ = ε_u + s·(ε_c − ε_u)
                    noise_pred_uncond, noise_pred_text = unet_output.chunk(2)
                    noise_pred = classifier_free_guidance(noise_pred_uncond, noise_pred_text, s)
                    if guidance_rescale > 0:  # pull ε̂'s spread back toward ε_c's
                        noise_pred = rescale_guidance(noise_pred, noise_pred_text, guidance_rescale)
                latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
                if start.blend is not None:
                    latents = start.blend(i, latents)
                # four copies into preallocated buffers; everything derived waits until after the loop
                rec.steps(i, latents=latents, noise_pred=noise_pred, unet_output=unet_output, model_input=model_input[:batch])

        # 6. What the loop saw, taken apart: the UNet's rows are [unconditional × B, prompt × B] with guidance.
        buffers = rec.steps.buffers  # each [S, B, C, h, w] (the UNet's output [S, 2B, C, h, w] with guidance)
        unet_outputs = buffers.pop("unet_output")
        buffers["noise_pred_text"] = unet_outputs[:, -batch:]
        if guided:
            buffers["noise_pred_uncond"] = unet_outputs[:, :batch]
        # x̂₀ at every (kept) step at once: x_t (as the UNet saw it) and its prediction give the clean latent
        kept = rec.kept_steps if rec.kept_steps is not None else slice(None)  # a compact trace keeps a few steps
        buffers["pred_x0"] = pred_x0(buffers.pop("model_input"), buffers["noise_pred"], alpha_bars[kept][:, None, None, None, None],
                                     scheduler.config.prediction_type)
        buffers["latents"] = torch.cat([start.latents[None], buffers["latents"]])
        # The records start their way to the host now (one transfer per tensor, not waited for), so
        # they travel while the GPU goes on to the VAE: recording never made the GPU wait.
        keep = _keeper(record)
        buffers = {name: keep(x.contiguous()) for name, x in buffers.items()}
        cross_maps = [rec.attention.maps("cross", record.to_cpu, tokens=len(t.tokenized.tokens), item=b) for b, t in enumerate(texts)]
        self_maps = [rec.attention.maps("self", record.to_cpu, item=b) for b in range(batch)]
        layers = slice(-1, None) if record.compact else slice(None)  # a compact trace: the text encoders' last layer only

        # 7. Latent → pixels with the VAE decoder, then to a PIL image exactly as diffusers does
        # (SD 1/2 may run a safety checker; SDXL may add an invisible watermark).
        decoded = to_pixels(self.vae, latents, generator, upcast=self.is_sdxl)
        denormalize = None
        if hasattr(self.pipeline, "run_safety_checker"):
            decoded, nsfw = self.pipeline.run_safety_checker(decoded, device, dtype)
            denormalize = [True] * batch if nsfw is None else [not flagged for flagged in nsfw]
        if getattr(self.pipeline, "watermark", None) is not None:
            decoded = self.pipeline.watermark.apply_watermark(decoded)
        pictures = self.pipeline.image_processor.postprocess(decoded, output_type="pil", do_denormalize=denormalize)

        # 8. Everything into one Trace per prompt.
        timesteps, alpha_bars = keep(timesteps), keep(alpha_bars)  # one copy each, shared by the batch's traces
        traces = []
        for b, (text, one, picture) in enumerate(zip(texts, all_settings, pictures)):
            part = {name: x[:, b] for name, x in buffers.items()}  # prompt b's rows: [S, C, h, w]
            traces.append(Trace(
                tokens=text.tokenized.tokens,
                words=text.tokenized.words,
                token_ids=text.tokenized.input_ids[0],
                truncated_text=text.tokenized.truncated_text,
                text_embeddings=keep(text.embeddings[0]),
                uncond_embeddings=keep(text.uncond[0]) if guided else None,
                text_hidden_states=keep(text.hidden_states[layers]),
                timesteps=timesteps,
                alpha_bars=alpha_bars,
                latents=part["latents"],
                noise_pred=part["noise_pred"],
                noise_pred_text=part["noise_pred_text"],
                noise_pred_uncond=part.get("noise_pred_uncond"),
                pred_x0=part["pred_x0"],
                image=picture,
                prompt=prompts[b],
                negative_prompt=negative_prompt,
                guidance_scale=float(s),
                seed=one.seed,
                height=one.height,
                width=one.width,
                scheduler=type(scheduler).__name__,
                prediction_type=scheduler.config.prediction_type,
                model=self.name,
                per_head=record.per_head,
                attention_maps=cross_maps[b],
                self_attention_maps=self_maps[b],
                mode=start.mode,
                strength=start.strength,
                init_latents=keep(start.init_latents[b]) if start.init_latents is not None else None,
                skipped_timesteps=keep(start.skipped_timesteps) if start.skipped_timesteps is not None else None,
                mask=keep(start.mask) if start.mask is not None else None,
                guidance_rescale=guidance_rescale,
                token_ids_2=text.token_ids_2[0] if text.token_ids_2 is not None else None,
                text_hidden_states_2=keep(text.hidden_states_2[layers]) if text.hidden_states_2 is not None else None,
                pooled_text_embeds=keep(text.pooled[0]) if text.pooled is not None else None,
                uncond_pooled_text_embeds=keep(text.uncond_pooled[0]) if text.uncond_pooled is not None else None,
                add_time_ids=keep(ids[0]) if ids is not None else None,
                add_time_id_names=list(id_names) if id_names is not None else None,
                context_split=text.split,
                edits=edit.records,
                kept_steps=rec.kept_steps,
                grid_layers=rec.attention.grid_layers,
            ))
        wait_for_host_copies(device)  # the one wait: every non-blocking copy above has landed before anyone reads it
        return traces

    def img2img(
        self,
        prompt: str,
        image: Image.Image,
        strength: float = 0.6,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int | None = 0,
        negative_prompt: str | None = None,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        record: RecordOptions | None = None,
        progress: bool = True,
        edits: list | None = None,
    ) -> Trace:
        """Alter ``image`` toward ``prompt``: encode it, noise it part of the way, and denoise from there.

        ``strength`` ∈ (0, 1] is how far back into the noise the image is pushed: 1 starts from (almost)
        pure noise and keeps little of the image; 0.3 keeps its layout and colours. Of the
        ``num_inference_steps`` timesteps, only the last ``int(steps × strength)`` are visited.

        Args:
            image: an RGB ``PIL.Image`` whose sides are multiples of 8 (other modes are converted, with a warning).
            Others as in :meth:`__call__`.
        Returns:
            a :class:`Trace` with ``mode="img2img"``, ``strength``, ``init_latents [C, h, w]`` (the encoded
            image), ``skipped_timesteps`` and ``latents[0]`` = the noised start. Its image equals diffusers'
            ``StableDiffusionImg2ImgPipeline`` for the same settings.
        Example:
            >>> trace = pipe.img2img("a blue circle on the left", start.image, strength=0.6, seed=0)
        """
        return self(prompt, num_inference_steps, guidance_scale, seed, negative_prompt, generator=generator, eta=eta,
                    record=record, progress=progress, image=image, strength=strength, edits=edits)

    def inpaint(
        self,
        prompt: str,
        image: Image.Image,
        mask: Image.Image,
        strength: float = 1.0,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int | None = 0,
        negative_prompt: str | None = None,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        record: RecordOptions | None = None,
        progress: bool = True,
        edits: list | None = None,
    ) -> Trace:
        """Repaint the white part of ``mask`` in ``image`` to match ``prompt``; keep the black part.

        Works with any text-to-image UNet (4 input channels) by *latent blending*: after every step
        the kept region is replaced by the original latent noised to the next timestep, so only the
        masked region is invented. A dedicated inpainting UNet (9 input channels: latent, mask,
        masked-image latent, as in SD inpainting checkpoints) reads the mask directly instead.

        Args:
            mask: a PIL image of the same size; white (≥ 0.5) = repaint, black = keep.
            strength: 1 (default) starts the masked region from pure noise; lower keeps more of the image there.
            Others as in :meth:`img2img`.
        Returns:
            a :class:`Trace` with ``mode="inpaint"`` and ``mask [h, w]`` at latent resolution; its image
            equals diffusers' ``StableDiffusionInpaintPipeline`` for the same settings.
        """
        if mask is None:
            raise TypeError("mask must be a PIL.Image (got NoneType): white = repaint, black = keep")
        return self(prompt, num_inference_steps, guidance_scale, seed, negative_prompt, generator=generator, eta=eta,
                    record=record, progress=progress, image=image, mask=mask, strength=strength, edits=edits)
