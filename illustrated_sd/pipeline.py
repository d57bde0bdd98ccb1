"""IllustratedPipeline: Stable Diffusion's text-to-image loop, written out, with recorders watching.

Read ``__call__`` beside diffusers' ``pipeline_stable_diffusion.py`` (and notebook 05): it is the same
sequence of calls on the same components, so for the same seed it makes the same image. The only
additions are the recorders, which observe and write into a :class:`~illustrated_sd.trace.Trace`.
"""

import math
import numbers
import re
import warnings

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from . import checks
from .attention_layers import attention_layers
from .budget import check_budget, estimate_trace
from .recorders import RecordOptions, StepRecorder, record_attention, to_host
from .sampling import alpha_bars_for, classifier_free_guidance, pred_x0
from .text import TokenizedPrompt, encode_tokens, tokenize_prompt
from .trace import Trace

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
}


def _generator(seed: int | None, generator: torch.Generator | None) -> tuple[torch.Generator, int | None]:
    """diffusers users write ``generator=torch.Generator("cpu").manual_seed(seed)``; a given generator wins (seed unknown)."""
    return (torch.Generator(device="cpu").manual_seed(seed), seed) if generator is None else (generator, None)


def _keeper(record: RecordOptions):
    """Where recorded tensors end up: one (non-blocking) move to the CPU after the loop, or left on the device."""
    return to_host if record.to_cpu else (lambda x: x)


@dataclass
class _EncodedPrompt:
    """The text side of one generation: ``embeddings [1, 77, D]``, ``context`` = what the UNet reads
    (``[uncond; prompt]`` with guidance, ``[2, 77, D]``), and the tokenized prompt for the trace."""

    tokenized: TokenizedPrompt
    embeddings: torch.Tensor
    hidden_states: torch.Tensor
    uncond: torch.Tensor | None
    context: torch.Tensor
    guided: bool


class IllustratedPipeline:
    """A diffusers ``StableDiffusionPipeline`` that returns a :class:`Trace` of everything it did.

    The wrapped pipeline's components are used as they are; nothing is copied or patched, and after a
    call the pipeline is exactly as it was (recorders are removed even when a call fails).

    Example:
        >>> pipe = IllustratedPipeline(StableDiffusionPipeline.from_pretrained("path/to/sd"))
        >>> trace = pipe("a red circle on the left", num_inference_steps=20, seed=0)
        >>> trace.image, trace.cross_attention("circle").shape   # PIL image, [h, w]
    """

    def __init__(self, pipeline: StableDiffusionPipeline, record: RecordOptions | None = None, name: str | None = None,
                 known_words: set[str] | None = None, world: int | None = None):
        if not isinstance(pipeline, StableDiffusionPipeline):
            raise TypeError(
                f"IllustratedPipeline wraps a diffusers StableDiffusionPipeline, got {type(pipeline).__name__}; "
                "load one with isd.load_pipeline(path) or StableDiffusionPipeline.from_pretrained(path)"
            )
        self.pipeline = pipeline
        self.record = record or RecordOptions()
        self.name = name or pipeline.name_or_path or "StableDiffusionPipeline"
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

    @property
    def cross_attention_layers(self) -> list[str]:
        """Names of the UNet's cross-attention layers, in the order it runs them."""
        return list(attention_layers(self.unet)["cross"])

    @property
    def default_size(self) -> int:
        """The image side the UNet was trained for, in pixels (``sample_size × 8``)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def set_scheduler(self, name: str) -> None:
        """Swap the sampler, keeping the model's noise schedule: one of ``SCHEDULERS`` (``"ddim"``, ``"euler"``, ``"dpm++"``, …)."""
        if not isinstance(name, str) or name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
        self.pipeline.scheduler = SCHEDULERS[name].from_config(self.scheduler.config)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> list:
        """Decode latents (``[N, C, h, w]``, as stored in a trace) with the VAE into PIL images, as the pipeline does."""
        latents = latents.to(self.device, self.vae.dtype)
        images = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        return self.pipeline.image_processor.postprocess(images, output_type="pil")

    def __repr__(self) -> str:
        return f"IllustratedPipeline({self.name!r}, {type(self.scheduler).__name__}, {self.device}, {self.dtype})"

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int | None = 0,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        record: RecordOptions | None = None,
        progress: bool = True,
    ) -> Trace:
        """Generate one image from ``prompt`` and record how it was made.

        Args:
            prompt: what to draw; at most 77 CLIP tokens are used (the rest is dropped with a warning).
            num_inference_steps: denoising steps ``S`` (≥ 1). Some samplers (PNDM, Heun) call the UNet
                a few extra times; the trace has one entry per UNet call.
            guidance_scale: classifier-free guidance ``s`` in ε̂ = ε_u + s·(ε_c − ε_u). ``s = 1`` is the prompt
                alone (one UNet row, no guidance); ``s = 0`` the unconditional model alone ("no prompt at
                all"); ``0 < s < 1`` blends the two, ``s < 0`` pushes away from the prompt. (diffusers turns
                guidance off for every ``s ≤ 1``; here every ``s`` means what the formula says.)
            seed: makes the initial noise, as ``torch.Generator("cpu").manual_seed(seed)`` would in
                diffusers. Pass ``generator=`` instead for your own generator.
            negative_prompt: what to steer away from (the unconditional branch); ``None`` = "".
            height, width: image size in pixels, multiples of 8; default the model's native size.
            eta: DDIM's η (0 = deterministic); ignored by other schedulers.
            record: what to record; defaults to ``self.record`` (see :class:`RecordOptions`).
            progress: show a progress bar over the denoising steps.
        Returns:
            a :class:`Trace` whose ``image`` equals ``StableDiffusionPipeline(...)`` for the same settings.
        Example:
            >>> trace = pipe("a red circle on the left", num_inference_steps=20, guidance_scale=7.5, seed=0)
            >>> trace.latents.shape        # [S + 1, 4, h, w]
        """
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        num_inference_steps, guidance_scale, seed, height, width, eta, record = self._check_inputs(
            prompt, num_inference_steps, guidance_scale, seed, generator, height, width, negative_prompt, eta, record, progress)
        generator, seed = _generator(seed, generator)
        device, scheduler = self.device, self.scheduler

        # 1. Prompt → tokens → 77 embedding vectors (and the empty/negative prompt for guidance).
        text = self._encode_prompt(prompt, negative_prompt, guidance_scale)

        # 2. The timesteps the sampler will visit, from noisy (t ≈ 999) to clean.
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps

        # 3. Pure Gaussian noise in latent space, scaled to the sampler's starting noise level.
        latent_shape = (1, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents = randn_tensor(latent_shape, generator=generator, device=device, dtype=text.context.dtype)
        latents = latents * scheduler.init_noise_sigma

        # 4.–5. Denoise, decode, and gather the records into a Trace.
        return self._denoise(latents, timesteps, text, guidance_scale, generator, eta, record, progress,
                             prompt=prompt, negative_prompt=negative_prompt, seed=seed, height=height, width=width)

    @torch.no_grad()
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
        image = self._check_image(image, "image")
        num_inference_steps, guidance_scale, seed, _, _, eta, record = self._check_inputs(
            prompt, num_inference_steps, guidance_scale, seed, generator, image.height, image.width, negative_prompt, eta, record, progress)
        visited = self._check_strength(strength, num_inference_steps)
        generator, seed = _generator(seed, generator)
        device, scheduler = self.device, self.scheduler

        text = self._encode_prompt(prompt, negative_prompt, guidance_scale)

        timesteps, skipped = self._strength_timesteps(num_inference_steps, visited)

        # Encode the picture, then jump straight to timestep t_start by forward diffusion:
        # x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε  (scheduler.add_noise, in the scheduler's own parametrisation)
        pixels = self.pipeline.image_processor.preprocess(image).to(device=device, dtype=text.context.dtype)  # [1, 3, H, W] in [-1, 1]
        init_latents = self._encode_image(pixels, generator)
        noise = randn_tensor(init_latents.shape, generator=generator, device=device, dtype=text.context.dtype)
        latents = scheduler.add_noise(init_latents, noise, timesteps[:1])

        keep = _keeper(record)
        return self._denoise(latents, timesteps, text, guidance_scale, generator, eta, record, progress,
                             prompt=prompt, negative_prompt=negative_prompt, seed=seed, height=image.height, width=image.width,
                             mode="img2img", strength=float(strength), init_latents=keep(init_latents[0]), skipped_timesteps=keep(skipped))

    @torch.no_grad()
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
        image = self._check_image(image, "image")
        if not isinstance(mask, Image.Image):
            raise TypeError(f"mask must be a PIL.Image (got {type(mask).__name__}): white = repaint, black = keep")
        if mask.size != image.size:
            raise ValueError(f"mask is {mask.width}×{mask.height} but image is {image.width}×{image.height}; they must match")
        num_inference_steps, guidance_scale, seed, _, _, eta, record = self._check_inputs(
            prompt, num_inference_steps, guidance_scale, seed, generator, image.height, image.width, negative_prompt, eta, record, progress)
        visited = self._check_strength(strength, num_inference_steps)
        generator, seed = _generator(seed, generator)
        device, scheduler = self.device, self.scheduler
        height, width = image.height, image.width
        nine_channels = self.unet.config.in_channels == 9

        text = self._encode_prompt(prompt, negative_prompt, guidance_scale)
        dtype = text.context.dtype
        timesteps, skipped = self._strength_timesteps(num_inference_steps, visited)

        pixels = self.pipeline.image_processor.preprocess(image, height=height, width=width).to(dtype=torch.float32)
        mask_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_binarize=True,
                                           do_convert_grayscale=True)  # as diffusers' inpainting pipeline makes it
        mask_pixels = mask_processor.preprocess(mask, height=height, width=width)  # [1, 1, H, W] in {0, 1}
        share = float(mask_pixels.mean())
        if share == 0:
            warnings.warn("the mask is all black: nothing will be repainted (white marks what to repaint)", stacklevel=3)
        elif share == 1:
            warnings.warn("the mask is all white: the whole image is repainted, as text-to-image would", stacklevel=3)

        # The same random draws, in the same order, as diffusers: image latent, noise, masked-image latent.
        image_latents = None
        if not nine_channels or strength < 1:
            # contiguous, as diffusers' copy of it is: the VAE hands back a channels-last tensor, and
            # the UNet's convolutions round differently on the two layouts
            image_latents = self._encode_image(pixels.to(device, dtype), generator).contiguous()
        latent_shape = (1, self.vae.config.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        noise = randn_tensor(latent_shape, generator=generator, device=device, dtype=dtype)
        latents = noise * scheduler.init_noise_sigma if strength == 1 else scheduler.add_noise(image_latents, noise, timesteps[:1])
        masked_latents = self._encode_image((pixels * (mask_pixels < 0.5)).to(device, dtype), generator)
        mask_latent = F.interpolate(mask_pixels, size=latent_shape[-2:]).to(device, dtype)  # [1, 1, h, w]

        unet_extra, after_step = None, None
        if nine_channels:  # the inpainting UNet sees [x_t, mask, masked image] stacked as 9 channels
            repeat = 2 if text.guided else 1
            unet_extra = torch.cat([mask_latent.repeat(repeat, 1, 1, 1), masked_latents.repeat(repeat, 1, 1, 1)], dim=1)
        else:
            next_timesteps = timesteps.cpu()  # read once here: indexing a GPU tensor in the loop would wait for the GPU

            def after_step(i, latents):
                # keep the unmasked region on the original image's own noisy trajectory:
                # there x_{t_next} = √ᾱ·x0_image + √(1−ᾱ)·ε, only the masked region is left to the model
                known = image_latents
                if i < len(timesteps) - 1:
                    known = scheduler.add_noise(image_latents, noise, next_timesteps[i + 1 : i + 2])
                # (.contiguous: broadcasting the [1, 1, h, w] mask can yield a channels-last tensor, see above)
                return ((1 - mask_latent) * known + mask_latent * latents).contiguous()

        keep = _keeper(record)
        return self._denoise(latents, timesteps, text, guidance_scale, generator, eta, record, progress,
                             unet_extra=unet_extra, after_step=after_step,
                             prompt=prompt, negative_prompt=negative_prompt, seed=seed, height=height, width=width,
                             mode="inpaint", strength=float(strength), mask=keep(mask_latent[0, 0].float()),
                             init_latents=keep(image_latents[0]) if image_latents is not None else None,
                             skipped_timesteps=keep(skipped))

    def _encode_image(self, pixels: torch.Tensor, generator) -> torch.Tensor:
        """``[1, 3, H, W]`` in [-1, 1] → a latent sample ``[1, C, h, w]``, scaled as the UNet expects."""
        return self.vae.encode(pixels).latent_dist.sample(generator) * self.vae.config.scaling_factor

    def _check_strength(self, strength, num_inference_steps: int) -> int:
        """How many of the timesteps ``strength`` leaves to visit; refuses values that leave none."""
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < strength <= 1:  # (NaN fails too)
            raise ValueError(f"strength must be in (0, 1] (got {strength!r}); 0.3 keeps the picture, 0.9 mostly redraws it")
        visited = min(int(num_inference_steps * strength), num_inference_steps)
        if visited < 1:
            raise ValueError(f"strength × steps = {strength} × {num_inference_steps} leaves no step to take; "
                             f"raise strength to ≥ {1 / num_inference_steps:.2f} or use more steps")
        return visited

    def _strength_timesteps(self, num_inference_steps: int, visited: int):
        """Skip the noisiest timesteps: start where strength says, as diffusers' ``get_timesteps`` does."""
        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        t_start = (num_inference_steps - visited) * scheduler.order
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start)
        return scheduler.timesteps[t_start:], scheduler.timesteps[:t_start]

    def _encode_prompt(self, prompt: str, negative_prompt: str | None, guidance_scale: float) -> "_EncodedPrompt":
        """Tokenize and encode the prompt, and with guidance the negative (or empty) prompt too."""
        # Guidance doubles the batch: row 0 answers "what does an image look like?", row 1 "…of this prompt?"
        # At s = 1 the formula gives row 1 exactly, so that row alone is computed (as diffusers does for s ≤ 1;
        # below 1 diffusers ignores s, while here s = 0 is the unconditional model and s < 0 pushes away).
        guided = guidance_scale != 1 and self.unet.config.time_cond_proj_dim is None
        text = tokenize_prompt(self.tokenizer, prompt)
        embeddings, hidden_states = encode_tokens(self.text_encoder, text, self.device)
        embeddings = embeddings.to(self.text_encoder.dtype)
        uncond = None
        if guided:
            uncond = encode_tokens(self.text_encoder, tokenize_prompt(self.tokenizer, negative_prompt or ""), self.device)[0]
            uncond = uncond.to(self.text_encoder.dtype)
        context = torch.cat([uncond, embeddings]) if guided else embeddings
        return _EncodedPrompt(text, embeddings, hidden_states, uncond, context, guided)

    def _denoise(self, latents, timesteps, text: "_EncodedPrompt", guidance_scale, generator, eta, record, progress,
                 unet_extra=None, after_step=None, **fields) -> Trace:
        """Steps 4 and 5 of every mode: the denoising loop with recorders, the VAE decode, the Trace.

        ``unet_extra`` (``[B, k, h, w]``) is appended to the UNet's input channels (inpainting UNets read
        the mask and the masked image there); ``after_step(i, latents)`` may replace the latents after
        each scheduler step (latent-blending inpainting).
        """
        unet, scheduler, device, guided = self.unet, self.scheduler, self.device, text.guided
        # Before any UNet call: would the recording fit the memory budget? (refuses with advice if not)
        check_budget(estimate_trace(unet, self.text_encoder, record, tuple(latents.shape[1:]), len(timesteps), guided,
                                    text.context.shape[1]), record)
        alpha_bars = alpha_bars_for(scheduler, timesteps).to(device)
        step_kwargs = self.pipeline.prepare_extra_step_kwargs(generator, eta)
        initial_latents = latents

        # 4. The denoising loop: predict the noise, combine with guidance, let the scheduler step.
        steps = StepRecorder(len(timesteps))
        with record_attention(unet, record, tuple(latents.shape[-2:]), len(timesteps), batch_index=1 if guided else 0) as attention:
            for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress, leave=False)):
                model_input = torch.cat([latents] * 2) if guided else latents
                model_input = scheduler.scale_model_input(model_input, t)
                unet_input = model_input if unet_extra is None else torch.cat([model_input, unet_extra], dim=1)
                unet_output = unet(unet_input, t, encoder_hidden_states=text.context, return_dict=False)[0]
                attention.collect(i)  # file this call's maps under step i
                noise_pred = unet_output
                if guided:
                    noise_pred_uncond, noise_pred_text = unet_output.chunk(2)
                    noise_pred = classifier_free_guidance(noise_pred_uncond, noise_pred_text, guidance_scale)
                latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
                if after_step is not None:
                    latents = after_step(i, latents)
                # four copies into preallocated buffers; everything derived waits until after the loop
                steps(i, latents=latents[0], noise_pred=noise_pred[0], unet_output=unet_output, model_input=model_input[0])

        # What the loop saw, taken apart: the UNet's rows are [unconditional, prompt] with guidance.
        buffers = steps.buffers
        unet_outputs = buffers.pop("unet_output")  # [S, B, C, h, w]
        buffers["noise_pred_text"] = unet_outputs[:, -1]
        if guided:
            buffers["noise_pred_uncond"] = unet_outputs[:, 0]
        # x0 at every step at once: x_t (as the UNet saw it) and its prediction give the clean latent
        buffers["pred_x0"] = pred_x0(buffers.pop("model_input"), buffers["noise_pred"], alpha_bars[:, None, None, None],
                                     scheduler.config.prediction_type)
        buffers["latents"] = torch.cat([initial_latents, buffers["latents"]])

        # The records start their way to the host now (one transfer per tensor, not waited for), so
        # they travel while the GPU goes on to the VAE: recording never made the GPU wait.
        keep = _keeper(record)
        buffers = {name: keep(x.contiguous()) for name, x in buffers.items()}
        cross_maps, self_maps = attention.maps("cross", record.to_cpu), attention.maps("self", record.to_cpu)

        # 5. Latent → pixels with the VAE decoder, then to a PIL image exactly as diffusers does.
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        decoded, nsfw = self.pipeline.run_safety_checker(decoded, device, text.context.dtype)
        denormalize = [True] if nsfw is None else [not flagged for flagged in nsfw]
        image = self.pipeline.image_processor.postprocess(decoded, output_type="pil", do_denormalize=denormalize)[0]
        trace = Trace(
            tokens=text.tokenized.tokens,
            words=text.tokenized.words,
            token_ids=text.tokenized.input_ids[0],
            truncated_text=text.tokenized.truncated_text,
            text_embeddings=keep(text.embeddings[0]),
            uncond_embeddings=keep(text.uncond[0]) if guided else None,
            text_hidden_states=keep(text.hidden_states),
            timesteps=keep(timesteps),
            alpha_bars=keep(alpha_bars),
            latents=buffers["latents"],
            noise_pred=buffers["noise_pred"],
            noise_pred_text=buffers["noise_pred_text"],
            noise_pred_uncond=buffers.get("noise_pred_uncond"),
            pred_x0=buffers["pred_x0"],
            image=image,
            guidance_scale=float(guidance_scale),
            scheduler=type(scheduler).__name__,
            prediction_type=scheduler.config.prediction_type,
            model=self.name,
            per_head=record.per_head,
            attention_maps=cross_maps,
            self_attention_maps=self_maps,
            **fields,
        )
        if device.type == "cuda":  # the one wait: every non-blocking copy above has landed before anyone reads it
            torch.cuda.current_stream(device).synchronize()
        return trace

    def _check_image(self, image, name: str) -> Image.Image:
        """An RGB PIL image whose sides are multiples of 8, or a clear error (other modes are converted, with a warning)."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"{name} must be a PIL.Image (got {type(image).__name__}); open a file with PIL.Image.open(path)")
        if image.mode != "RGB":
            warnings.warn(f"{name} is {image.mode}, not RGB; converting it to RGB", stacklevel=4)
            image = image.convert("RGB")
        m = self.vae_scale_factor
        if image.width % m or image.height % m or min(image.size) < m:
            raise ValueError(f"{name} is {image.width}×{image.height}; both sides must be multiples of {m}: "
                             f"resize it, e.g. image.resize(({max(m, image.width // m * m)}, {max(m, image.height // m * m)}))")
        return image

    def _check_inputs(self, prompt, num_inference_steps, guidance_scale, seed, generator, height, width, negative_prompt,
                      eta, record, progress) -> tuple:
        """Refuse bad input before any work, with the fix in the message.

        Returns the settings as plain Python numbers (numpy's integers and floats are accepted):
        ``(num_inference_steps, guidance_scale, seed, height, width, eta, record)``.
        """
        checks.text("prompt", prompt, hint="one trace is one prompt")
        if not prompt.strip():
            raise ValueError("the prompt is empty; describe the image, e.g. pipe('a red circle on the left')")
        checks.text("negative_prompt", negative_prompt, allow_none=True, hint="None means the empty prompt")
        steps = checks.whole_number("num_inference_steps", num_inference_steps, minimum=1, hint="try 20–50")
        if isinstance(self.scheduler, PNDMScheduler) and steps < 4:
            raise ValueError(f"PNDM needs at least 4 steps (got {steps}): its multistep formula starts from 4 earlier "
                             "predictions; use more steps, or a one-step sampler: pipe.set_scheduler('ddim')")
        guidance_scale = checks.real_number("guidance_scale", guidance_scale, hint="7.5 is usual, 1 turns guidance off, 0 is the unconditional model")
        eta = checks.real_number("eta", eta, minimum=0, hint="DDIM's η: 0 is deterministic, 1 adds DDPM's noise")
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator (got {type(generator).__name__}); or pass seed=")
            if seed not in (None, 0):
                raise ValueError("pass either seed= or generator=, not both")
        elif seed is None:
            raise ValueError("seed is None and no generator was given; pass seed=0 (any integer), or generator=torch.Generator().manual_seed(...)")
        else:
            seed = checks.whole_number("seed", seed, minimum=-(2**63), maximum=2**64 - 1,
                                       hint="or pass generator=torch.Generator().manual_seed(...)")
        m = self.vae_scale_factor  # the VAE shrinks each side by this factor
        sizes = []
        for side, size in (("height", height), ("width", width)):
            if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < m or size % m:
                near = int(size) if isinstance(size, numbers.Real) and math.isfinite(size) else self.default_size
                lower = max(m, near // m * m)
                raise ValueError(f"{side} must be a multiple of {m}, at least {m} (got {size!r}); try {lower} or {lower + m}")
            sizes.append(int(size))
        if record is not None and not isinstance(record, RecordOptions):
            raise TypeError(f"record must be a RecordOptions (got {record!r}); e.g. record=isd.RecordOptions(per_head=True), "
                            "or RecordOptions(cross_attention=False) to record no maps")
        checks.flag("progress", progress)
        if self.known_words:
            unknown = sorted({w for w in re.findall(r"[a-z]+", prompt.lower()) if w not in self.known_words})
            if unknown:
                warnings.warn(f"the model never saw {unknown} in training, so it cannot draw them; the words it knows are: "
                              f"{', '.join(sorted(self.known_words))}", stacklevel=4)
        if negative_prompt is not None and guidance_scale == 1:
            warnings.warn("negative_prompt is ignored when guidance_scale = 1 (guidance is off)", stacklevel=4)
        return steps, guidance_scale, seed, sizes[0], sizes[1], eta, record or self.record
