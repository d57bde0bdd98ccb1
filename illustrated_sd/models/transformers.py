"""Diffusion-transformer pipelines (SD3, SD3.5, Flux) built from configs with random weights, offline; and the real
models' transformer and text-encoder configs (``REAL``), to count and time them without downloading them.

Tests and benchmarks need the real classes and wiring; speed and memory do not depend on the weights' values,
and nothing can be downloaded here. The CLIP tokenizer ships with the package; T5's tokenizer is a SentencePiece
*Unigram* model, and :func:`t5_style_tokenizer` builds a small one of the same kind (pieces that start a word carry
"▁", every text ends with ``</s>``, padding is ``<pad>`` = id 0), so the pipelines tokenize as they would with T5's.

    flux = build_random_flux("tiny-flux")            # FluxPipeline: double- and single-stream blocks, guidance embedding
    sd3 = build_random_sd3("tiny-sd35")              # StableDiffusion3Pipeline: dual attention, RMS-norm on q and k
"""

import string

import torch
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
                       SD3Transformer2DModel, StableDiffusion3Pipeline)
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel,
                          T5Tokenizer)

from ..paths import CLIP_TOKENIZER

# A few whole words, so that a short English prompt is mostly one piece per word (as with T5's 32,000 pieces);
# anything else falls back to letters.
WORDS = ("a an the of on in at and with to is photo picture drawing there red green blue yellow purple orange white black "
         "gray navy circle square triangle star heart small big large left right top bottom center middle corner "
         "background plain cat dog house tree sun moon sky lighthouse sunset").split()


def t5_style_tokenizer(words=WORDS, extra_ids: int = 0) -> T5Tokenizer:
    """A small T5-like (Unigram, "▁"-prefixed pieces) tokenizer: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then a piece per
    word of ``words``, then single characters (so any text can be written), then ``extra_ids`` sentinels
    ``<extra_id_0>``, … (what T5's span corruption puts where it cut a span out).

    Example:
        >>> t5_style_tokenizer().tokenize("a red circle")      # ['▁a', '▁red', '▁circle']
    """
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    letters = string.ascii_letters + string.digits + string.punctuation
    # Unigram picks the segmentation with the highest total log-probability: whole words score above spellings
    pieces = [("▁" + w, -2.0) for w in words] + [("▁", -3.0)] + [("▁" + c, -6.0) for c in letters] + [(c, -5.0) for c in letters]
    return T5Tokenizer(vocab=specials + pieces, extra_ids=extra_ids)


LAYOUTS = {
    # Flux: T5 only for the token sequence (CLIP gives the pooled vector), 2×2 latent patches packed into tokens
    # (in_channels = 4 × latent channels), RoPE over (text, row, column) ids, double- then single-stream blocks
    "tiny-flux": dict(transformer=dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                                       num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                       guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
                      latent_channels=4),
    "tiny-flux-schnell": dict(transformer=dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
                                               num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                               guidance_embeds=False, axes_dims_rope=(4, 6, 6)),
                              latent_channels=4),
    # SD3: CLIP-L ⊕ CLIP-G side by side (77 slots), then T5's tokens, one joint sequence; the transformer patchifies
    "tiny-sd3": dict(transformer=dict(sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                      num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32,
                                      pooled_projection_dim=64, out_channels=4, pos_embed_max_size=32),
                     latent_channels=4),
    # SD3.5 medium: also an image-only self-attention in the first blocks ("dual attention"), RMS-norm on q and k
    "tiny-sd35": dict(transformer=dict(sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                       num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32,
                                       pooled_projection_dim=64, out_channels=4, pos_embed_max_size=32, qk_norm="rms_norm",
                                       dual_attention_layers=(0,)),
                      latent_channels=4),
}
# The released models' shapes (their config.json files), for meta-device counts (notebook 08) and GPU benchmarks
REAL = {
    "flux-dev": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                     joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
    "sd3.5-large": dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64, num_layers=38,
                        num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048,
                        pos_embed_max_size=192, qk_norm="rms_norm"),
    "sd3.5-medium": dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64, num_layers=24,
                         num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
                         pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=tuple(range(13))),
}
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu", vocab_size=32128,
              is_encoder_decoder=False, use_cache=False)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu")
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu")


def real_transformer(name: str):
    """The transformer of a released model (``"flux-dev"``, ``"sd3.5-large"``, ``"sd3.5-medium"``), random weights, built on
    the current device: ``with torch.device("meta"): real_transformer("flux-dev")`` counts its 11.9 B parameters at once."""
    if name not in REAL:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(REAL)}")
    return (FluxTransformer2DModel if name.startswith("flux") else SD3Transformer2DModel)(**REAL[name])


TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
            bos_token_id=49406, eos_token_id=49407)
T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
          is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1)


def _vae(channels: int, scaling: float, shift: float) -> AutoencoderKL:
    """A small VAE with SD3/Flux's settings: a shift and a scale, no quant convs; 8× per side."""
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=channels, block_out_channels=(16, 32, 32, 32),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=1, norm_num_groups=8, scaling_factor=scaling, shift_factor=shift,
                         use_quant_conv=False, use_post_quant_conv=False)


def _t5(tokenizer) -> T5EncoderModel:
    # eval(): a model built from a config starts in training mode, where T5's dropout (0.1) would draw new noise each call
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), **T5)).eval()


def build_random_flux(layout: str = "tiny-flux", seed: int = 0) -> FluxPipeline:
    """A ``FluxPipeline`` of ``layout`` (``"tiny-flux"``: Flux-dev's layout with a guidance embedding;
    ``"tiny-flux-schnell"``: none) with seeded random weights, 64×64 px by default (a 4×4 grid of image tokens).

    Example:
        >>> pipe = build_random_flux()                        # diffusers' own FluxPipeline
    """
    spec = _layout(layout, "flux")
    tokenizer, tokenizer_2 = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER), t5_style_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **TEXT))
        text_encoder_2 = _t5(tokenizer_2)
        transformer = FluxTransformer2DModel(**spec["transformer"])
        vae = _vae(spec["latent_channels"], scaling=0.3611, shift=0.1159)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.default_sample_size = 8  # 64 px images by default: an 8×8 latent, packed into a 4×4 grid of tokens
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_random_sd3(layout: str = "tiny-sd3", seed: int = 0) -> StableDiffusion3Pipeline:
    """A ``StableDiffusion3Pipeline`` of ``layout`` (``"tiny-sd3"``, or ``"tiny-sd35"`` with SD3.5's dual attention and
    RMS-norm) with seeded random weights: two CLIP towers with projections and a T5 encoder; 128×128 px by default.

    Example:
        >>> pipe = build_random_sd3("tiny-sd35")
    """
    spec = _layout(layout, "sd3")
    tokenizer, tokenizer_2 = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER), CLIPTokenizer.from_pretrained(CLIP_TOKENIZER, pad_token="!")
    tokenizer_3 = t5_style_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=len(tokenizer), projection_dim=32, **TEXT))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=len(tokenizer), projection_dim=32, hidden_act="gelu",
                                                                    **{k: v for k, v in TEXT.items()}))
        text_encoder_3 = _t5(tokenizer_3)
        transformer = SD3Transformer2DModel(**spec["transformer"])
        vae = _vae(spec["latent_channels"], scaling=1.5305, shift=0.0609)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                                    text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# tiny-flux, the embedded diffusion transformer (trained by illustrated_sd.train.flux): Flux's layout at a size that fits
# the repository, on tiny-sd 2's latents (4 channels × 16 × 16 at 128², packed 2×2 into an 8×8 grid of 16-value tokens)
# and its CLIP tower's pooled vector (128 values); the token sequence from a tiny T5 trained on the world's captions.
TINY_FLUX = dict(
    # width 96 (3 heads of 32: RoPE turns 8 of each head's dimensions by the first id, which Flux leaves 0 for every token, text and image, 12 by
    # the row, 12 by the column), 2 double-stream blocks then 3 single-stream ones: 1.17 M parameters, 2.3 MB in float16 (the repository
    # keeps to 60 MB; Flux-dev: width 3,072, 19 + 38 blocks, 11.9 B)
    transformer=dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=32, num_attention_heads=3,
                     joint_attention_dim=96, pooled_projection_dim=128, guidance_embeds=False, axes_dims_rope=(8, 12, 12)),
    t5=dict(d_model=96, d_kv=32, d_ff=192, num_layers=2, num_decoder_layers=1, num_heads=3, relative_attention_num_buckets=16,
            feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
    sentinels=8,  # <extra_id_0> … <extra_id_7>: a caption loses at most this many spans in span corruption
    max_sequence_length=64,  # T5 slots: the longest world caption (four objects, every attribute said) takes about 45
    # Flux-dev's σ schedule (bent toward the noise by μ, which grows with the number of image tokens)
    scheduler=dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096),
)


def _layout(layout: str, family: str) -> dict:
    names = sorted(name for name in LAYOUTS if family in name)
    if layout not in names:
        raise ValueError(f"unknown {family} layout {layout!r}; choose one of {names}")
    return LAYOUTS[layout]
