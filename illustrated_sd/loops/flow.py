"""FlowPipeline: SD3, SD3.5 and Flux (diffusers' own pipelines), traced.

One loop per family, each beside its diffusers file: :mod:`~illustrated_sd.loops.flux` and :mod:`~illustrated_sd.loops.sd3`.
This class holds the pipeline, checks a call's inputs (``shared.check_flow_inputs``) and runs its family's loop.
"""

import torch
from PIL import Image
from diffusers import FluxImg2ImgPipeline, FluxPipeline, StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline

from ..recording.edits import Swap, check_edits
from .inputs import check_image, check_strength
from ..recording.recorders import RecordOptions
from .flux import generate_flux
from ..recording.joint_attention import joint_layers
from .sd3 import generate_sd3
from .flow_shared import check_flow_inputs, decode
from ..trace.flow import FlowTrace

FAMILIES = {FluxPipeline: "flux", StableDiffusion3Pipeline: "sd3"}


def flow_family(pipeline) -> str | None:
    """``"flux"`` or ``"sd3"`` for the diffusers pipelines :class:`FlowPipeline` drives, else ``None``."""
    if isinstance(pipeline, (FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline)):
        return None
    return next((family for cls, family in FAMILIES.items() if isinstance(pipeline, cls)), None)


class FlowPipeline:
    """A diffusers ``FluxPipeline`` or ``StableDiffusion3Pipeline`` that returns a :class:`FlowTrace` of what it did.

    The components are the pipeline's own; recorders are installed for one call and removed after it, so the
    image equals the pipeline's own for the same seed.

    Example:
        >>> pipe = isd.IllustratedPipeline(FluxPipeline.from_pretrained("path/to/flux-dev", torch_dtype=torch.bfloat16))
        >>> trace = pipe("a red circle on the left", seed=0)
        >>> trace.cross_attention("circle").shape       # [gh, gw]: where the picture looks for the word
    """

    def __init__(self, pipeline, record: RecordOptions | None = None, name: str | None = None):
        self.family = flow_family(pipeline)
        if self.family is None:
            raise TypeError(f"FlowPipeline wraps a diffusers FluxPipeline or StableDiffusion3Pipeline, got {type(pipeline).__name__}")
        self.pipeline = pipeline
        self.record = record or RecordOptions()
        self.name = name or pipeline.name_or_path or type(pipeline).__name__
        # settings a model is meant to run with, where a call leaves them out (tiny-flux: 25 steps, true CFG 4 against
        # ""); load_pipeline reads them from the folder's illustrated_sd.json
        self.defaults: dict = {}
        self.world: int | None = None  # the synthetic world's version, for a model illustrated_sd trained (tiny-flux: 2)

    transformer = property(lambda self: self.pipeline.transformer)
    vae = property(lambda self: self.pipeline.vae)
    scheduler = property(lambda self: self.pipeline.scheduler)
    device = property(lambda self: self.pipeline.device)
    dtype = property(lambda self: self.pipeline.transformer.dtype)
    is_sdxl = False

    def call_defaults(self) -> dict:
        """What a call uses for each setting it leaves out (``None``): the model's own (``self.defaults``), else the
        family's (Flux-dev 28 steps, distilled guidance 3.5 and 512 T5 slots; schnell 256; SD3 28 steps, guidance 7.0)."""
        flux = self.family == "flux"
        family = dict(num_inference_steps=28, guidance_scale=3.5 if flux else 7.0, true_cfg_scale=1.0, negative_prompt=None,
                      max_sequence_length=512 if flux and self.transformer.config.guidance_embeds else 256)
        return {**family, **self.defaults}

    def guidance_option(self, scale: float) -> dict:
        """The call option that sets this model's guidance to ``scale``: ``{"true_cfg_scale": scale}`` for a Flux model
        that has no guidance input and runs real classifier-free guidance by default (tiny-flux; against its default
        negative prompt ""), else ``{"guidance_scale": scale}`` (SD3's CFG, Flux-dev's distilled guidance)."""
        defaults = self.call_defaults()
        if self.family == "flux" and not self.transformer.config.guidance_embeds and defaults["true_cfg_scale"] > 1:
            return {"true_cfg_scale": scale}
        return {"guidance_scale": scale}

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's factor times the 2×2 patch."""
        return self.pipeline.vae_scale_factor * 2

    @property
    def default_size(self) -> int:
        """The pipeline's default image side in pixels (1024 for Flux and SD3 checkpoints)."""
        return self.pipeline.default_sample_size * self.pipeline.vae_scale_factor

    @property
    def attention_layers(self) -> list[str]:
        """The joint-attention layers' names, in the order the transformer runs them (``RecordOptions(layers=...)``)."""
        return list(joint_layers(self.transformer))

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> list:
        """Latents ``[N, C, h, w]`` (as a trace stores them, unpacked) → PIL images, as the pipeline decodes them."""
        return decode(self.pipeline, latents.to(self.device, self.vae.dtype))

    def __repr__(self) -> str:
        return f"FlowPipeline({self.family}, {self.name!r}, {type(self.scheduler).__name__}, {self.device}, {self.dtype})"

    @torch.no_grad()
    def __call__(self, prompt: str, num_inference_steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                 negative_prompt: str | None = None, height: int | None = None, width: int | None = None, *,
                 true_cfg_scale: float | None = None, max_sequence_length: int | None = None, record: RecordOptions | None = None,
                 progress: bool = True, image: Image.Image | None = None, strength: float | None = None,
                 concepts: list[str] | None = None, concept_layers: list[int] | None = None, edits: list | None = None,
                 **unsupported) -> FlowTrace:
        """Generate one image from ``prompt`` and record how it was made.

        Args:
            prompt: what to draw. num_inference_steps: Euler steps ``S`` (28 is SD3's and Flux-dev's default).
                Left out (``None``), these settings take the model's own defaults (``self.defaults``: tiny-flux runs 25
                steps with ``true_cfg_scale=4`` against the negative prompt ""), else the values below.
            guidance_scale: SD3: classifier-free guidance (default 7.0; ≤ 1 is the prompt alone). Flux-dev: the distilled
                guidance the transformer reads (default 3.5; ignored by schnell, which has no such input).
            seed: the initial noise, as ``torch.Generator("cpu").manual_seed(seed)`` in diffusers.
            negative_prompt: SD3: the unconditional row's text (``None`` = ""). Flux: used only with ``true_cfg_scale > 1``.
            height, width: multiples of 16 (the VAE's 8 × the 2×2 patch); default the model's size.
            true_cfg_scale: Flux only: real classifier-free guidance with ``negative_prompt`` (two passes per step; 1 = off).
            max_sequence_length: T5's slots (Flux-dev 512, schnell and SD3 256 by default); a longer prompt is cut, with a warning.
            record: what to record (default ``self.record``): ``RecordOptions(quadrants=...)`` picks the quadrants.
            progress: a progress bar over the steps.
            image, strength: start from a picture instead of noise (:meth:`img2img` explains them).
            concepts: words to map with ConceptAttention (:mod:`~illustrated_sd.recording.concepts`); the picture is unchanged.
                concept_layers: the blocks whose maps to keep (indices of Flux's double-stream blocks or SD3's joint
                blocks; ``None`` = all).
            edits: ``[isd.edits.Reweight(word, factor), isd.edits.Remove(word)]`` on the picture's attention to the word,
                or ``isd.edits.Swap(source)``: the source trace's image→text maps for the first steps, for a prompt of the
                same text layout (:mod:`~illustrated_sd.recording.flow_edits`; ``layers`` are names of ``pipe.attention_layers``).
        Returns:
            a :class:`FlowTrace` whose ``image`` equals the diffusers pipeline's for the same settings.
        """
        if unsupported:  # an option of the UNet pipelines (edits, img2img, guidance_rescale, eta, …): say so, not "unexpected keyword"
            name = sorted(unsupported)[0]
            raise TypeError(f"{name} is an option of SD 1/2 and SDXL pipelines, not of this {self.family} pipeline yet; it takes "
                            "prompt, num_inference_steps, guidance_scale, seed, negative_prompt, height, width, true_cfg_scale "
                            "(Flux), max_sequence_length, record and progress")
        flux = self.family == "flux"
        given = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, true_cfg_scale=true_cfg_scale,
                     negative_prompt=negative_prompt, max_sequence_length=max_sequence_length)
        defaults = self.call_defaults()
        num_inference_steps, guidance_scale, true_cfg_scale, negative_prompt, max_sequence_length = (
            defaults[k] if v is None else v for k, v in given.items())
        if image is not None:  # img2img: the picture sets the size
            if height is not None or width is not None:
                raise ValueError("height and width come from the input image; resize the image instead of passing them")
            image = check_image(image, "image", self.size_multiple)
            height, width = image.height, image.width
            strength = 0.6 if strength is None else strength
        elif strength is not None:
            raise ValueError("strength belongs to an input image: pass image= too (see pipe.img2img)")
        settings = check_flow_inputs(self, prompt, num_inference_steps, guidance_scale, seed, negative_prompt, height, width,
                                     true_cfg_scale, max_sequence_length, record, progress)
        if image is not None:
            check_strength(strength, settings.steps)  # (a strength that leaves no step is refused)
            strength = float(strength)
        edits = check_edits(edits)
        for edit in edits:
            if isinstance(edit, Swap):
                self._check_swap_source(edit.source, settings)
        if concepts is not None or concept_layers is not None:
            concepts, concept_layers = self._check_concepts(concepts, concept_layers)
        generate = generate_flux if flux else generate_sd3
        return generate(self, prompt, negative_prompt, settings, progress, image=image, strength=strength, concepts=concepts,
                        concept_layers=concept_layers, edits=edits)

    def _check_swap_source(self, source, settings) -> None:
        """A Swap's source must be a trace of this family at this size, with every step's maps (the text layout, the
        layers and the heads are checked against the call's in :class:`~illustrated_sd.recording.flow_edits.FlowEditPlan`)."""
        if not isinstance(source, FlowTrace) or source.family != self.family:
            made = f"a {source.family} FlowTrace" if isinstance(source, FlowTrace) else f"a {type(source).__name__} of SD 1/2's UNet"
            raise ValueError(f"the Swap's source is {made}, and this is a {self.family} pipeline: make the source with this "
                             "pipeline, e.g. source = pipe('a red circle on the left', seed=0)")
        if settings.record.compact:
            raise ValueError("a Swap changes the maps of its steps, which a compact recording has already summed; record "
                             "the edited call in full (the default RecordOptions())")
        if (source.height, source.width) != (settings.height, settings.width):
            raise ValueError(f"the Swap's source is {source.width}×{source.height} px and this call {settings.width}×"
                             f"{settings.height}: generate both at the same size, so that patch i is the same place in both")

    def _check_concepts(self, concepts, layers) -> tuple[list[str], list[int] | None]:
        """ConceptAttention's arguments, checked (a list of distinct words, existing blocks with text projections)."""
        if concepts is None or isinstance(concepts, str) or not isinstance(concepts, (list, tuple)) or not concepts:
            raise TypeError(f"concepts must be a non-empty list of words, e.g. concepts=['circle', 'background'] (got {concepts!r})")
        for concept in concepts:
            if not isinstance(concept, str) or not concept.strip():
                raise ValueError(f"each concept is a word, e.g. 'circle' (got {concept!r})")
        if len(set(concepts)) != len(concepts):
            raise ValueError(f"concepts holds a word twice ({concepts}); give each once")
        blocks = len(self.transformer.transformer_blocks)
        kind = "double-stream" if self.family == "flux" else "joint"  # the blocks whose text has weights of its own
        if layers is not None:
            if isinstance(layers, (str, bool)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers) or not layers:
                raise TypeError(f"concept_layers must be a list of {kind} block indices, 0–{blocks - 1} (got {layers!r})")
            bad = [i for i in layers if not 0 <= i < blocks]
            if bad:
                raise ValueError(f"concept_layers {bad} do not exist: this transformer has {blocks} {kind} blocks, 0–{blocks - 1}")
            layers = sorted(set(layers))
        return list(concepts), layers

    def img2img(self, prompt: str, image: Image.Image, strength: float = 0.6, num_inference_steps: int | None = None, **kwargs) -> FlowTrace:
        """Alter ``image`` toward ``prompt``: encode it, move it part of the way toward noise along the straight path
        (x_σ = (1 − σ)·x₀ + σ·ε at the first visited σ), and denoise from there.

        ``strength`` ∈ (0, 1]: how far toward the noise; of ``num_inference_steps`` steps the last ``int(steps × strength)``
        are visited. ``image``: an RGB ``PIL.Image`` whose sides are multiples of 16. Other arguments as in :meth:`__call__`.
        The image equals diffusers' ``FluxImg2ImgPipeline`` / ``StableDiffusion3Img2ImgPipeline`` for the same settings.

        Example:
            >>> trace = pipe.img2img("a blue circle on the left", start.image, strength=0.6, seed=0)
        """
        return self(prompt, num_inference_steps, image=image, strength=strength, **kwargs)
