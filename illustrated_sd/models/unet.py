"""Stable Diffusion pipelines built from configs with random weights.

Two uses: tests and benchmarks need the real architectures (speed and memory do not depend on the
weights' values, and no weights can be downloaded here), and the package needs a model before its
own tiny one is trained. ``tiny`` layouts are small enough to run on a laptop CPU in a second;
``sd15``, ``sd21-base`` and ``sdxl-base`` are the real sizes (UNet 860M / 865M / 2.6B parameters).
"""

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .transformers import LAYOUTS as DIT_LAYOUTS, build_random_flux, build_random_sd3
from ..paths import CLIP_TOKENIZER

# The noise schedule every Stable Diffusion 1.x/2.x model was trained with.
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")

LAYOUTS = {
    # The embedded default model that illustrated_sd trains itself (see illustrated_sd/train): SD's classes
    # and wiring at a size that runs 25 guided steps on a laptop CPU in about a second.
    "tiny-sd": dict(
        unet=dict(sample_size=16, block_out_channels=(64, 128, 192), layers_per_block=2, cross_attention_dim=128,
                  attention_head_dim=8, norm_num_groups=32,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        text=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, hidden_act="quick_gelu"),
        # 4 groups, not SD's 32: the shipped VAE was regrouped (train/regroup.py; 16 in part 17, 4 in parts 26 and 27) so that
        # its full-resolution norms pool 8 channels: an inpainting's new half moves the kept half less (notebook 07), and
        # no group is so small that a few pixels' spike must set its spread (the speckle at objects' edges: model card)
        vae=dict(block_out_channels=(32, 64, 128, 128), norm_num_groups=4),
        prediction_type="epsilon", pad_token="<|endoftext|>",
    ),
    # 1.x: CLIP ViT-L/14 text tower (quick_gelu), 8 heads everywhere, conv projections in the transformers
    "tiny-sd1": dict(
        unet=dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=64,
                  attention_head_dim=4, norm_num_groups=16,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, hidden_act="quick_gelu"),
        vae=dict(block_out_channels=(16, 32, 32, 32), norm_num_groups=8),
        prediction_type="epsilon", pad_token="<|endoftext|>",
    ),
    # 2.x: OpenCLIP ViT-H text tower (gelu), head size 64 instead of a head count, linear projections,
    # v-prediction as in the 768-v checkpoints
    "tiny-sd2": dict(
        unet=dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=64,
                  attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=16,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, hidden_act="gelu"),
        vae=dict(block_out_channels=(16, 32, 32, 32), norm_num_groups=8),
        prediction_type="v_prediction", pad_token="!",
    ),
    "sd15": dict(
        unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu"),
        vae=dict(block_out_channels=(128, 256, 512, 512), norm_num_groups=32),
        prediction_type="epsilon", pad_token="<|endoftext|>",
    ),
    "sd21-base": dict(
        unet=dict(sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
        text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu"),
        vae=dict(block_out_channels=(128, 256, 512, 512), norm_num_groups=32),
        prediction_type="epsilon", pad_token="!",
    ),
    # SDXL: no attention at the full latent resolution, more transformer layers deeper down (1, 2, 10 per
    # block), a 2048-wide context from two text encoders, and "text_time" added conditioning (loops/sdxl.py).
    "tiny-sdxl": dict(
        unet=dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=64,
                  attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=16,
                  transformer_layers_per_block=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=6 * 8 + 32,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, hidden_act="quick_gelu"),
        text_2=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, hidden_act="gelu",
                    projection_dim=32),
        vae=dict(block_out_channels=(16, 32, 32, 32), norm_num_groups=8, scaling_factor=0.13025),
        prediction_type="epsilon", pad_token="<|endoftext|>",
    ),
    "sdxl-base": dict(
        unet=dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
                  attention_head_dim=(5, 10, 20), use_linear_projection=True, transformer_layers_per_block=(1, 2, 10),
                  addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu"),
        text_2=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu",
                    projection_dim=1280),
        vae=dict(block_out_channels=(128, 256, 512, 512), norm_num_groups=32, scaling_factor=0.13025),
        prediction_type="epsilon", pad_token="<|endoftext|>",
    ),
}


def build_random_pipeline(layout: str = "tiny-sd1", seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A Stable Diffusion pipeline of the given layout with random (seeded) weights.

    Args:
        layout: one of ``LAYOUTS``: ``"tiny-sd1"``, ``"tiny-sd2"``, ``"tiny-sdxl"`` (fast, for tests; also the diffusion
            transformers ``"tiny-sd3"``, ``"tiny-sd35"``, ``"tiny-flux"``, ``"tiny-flux-schnell"``, see ``transformers.py``) or
            ``"sd15"``, ``"sd21-base"``, ``"sdxl-base"`` (real sizes, for benchmarks; build those on
            ``torch.device("meta")`` to count parameters without the memory).
        seed: weights are drawn from ``torch.manual_seed(seed)``, so the same call gives the same model.
    Returns:
        a ``StableDiffusionPipeline`` with a DDIM scheduler on SD's noise schedule and no safety checker; for
        the ``sdxl`` layouts a ``StableDiffusionXLPipeline`` with SDXL's default Euler scheduler.
    Example:
        >>> pipe = build_random_pipeline("tiny-sd2")   # v-prediction, linear projections
    """
    if layout in DIT_LAYOUTS:  # diffusion transformers: a FluxPipeline or StableDiffusion3Pipeline (transformers.py)
        pipe = build_random_flux(layout, seed) if "flux" in layout else build_random_sd3(layout, seed)
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS) + sorted(DIT_LAYOUTS)}")
    spec = LAYOUTS[layout]
    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER, pad_token=spec["pad_token"])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77,
                                                    bos_token_id=49406, eos_token_id=49407, **spec["text"]))
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **spec["unet"])
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1 if layout.startswith("tiny") else 2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **spec["vae"])
    if "text_2" in spec:
        return _random_xl(layout, spec, tokenizer, text_encoder, unet, vae, seed, dtype)
    with torch.device("cpu"):  # a scheduler's tables are data even when the models are built on the meta device
        scheduler = DDIMScheduler(prediction_type=spec["prediction_type"], **SD_SCHEDULE)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def _random_xl(layout, spec, tokenizer, text_encoder, unet, vae, seed, dtype) -> StableDiffusionXLPipeline:
    """The SDXL half of :func:`build_random_pipeline`: a second tokenizer (padding with "!") and text encoder with a projection."""
    tokenizer_2 = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER, pad_token="!")
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=len(tokenizer_2), max_position_embeddings=77,
                                                                    bos_token_id=49406, eos_token_id=49407, **spec["text_2"]))
    schedule = {k: v for k, v in SD_SCHEDULE.items() if k not in ("clip_sample", "set_alpha_to_one")}
    with torch.device("cpu"):
        scheduler = EulerDiscreteScheduler(prediction_type=spec["prediction_type"], **schedule)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
