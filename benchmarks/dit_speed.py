"""Traced vs plain diffusers for the diffusion transformers (Flux-dev, SD3.5-large, SD3.5-medium) on a GPU.

The real architectures with random weights (speed does not depend on the weights' values), bfloat16, 1024², 28
steps, every text encoder included (CLIP-L, CLIP-G, T5-XXL, as the checkpoints have them): the whole call is timed,
as a user waits for it. In one process, after a warm-up of each, in rounds alternating the order (plain, traced;
then traced, plain; …):

    plain     diffusers' own FluxPipeline / StableDiffusion3Pipeline
    traced    isd.IllustratedPipeline(the same pipeline): the default trace (image→text, text→image and text→text
              attention of every block, velocities, latents, x̂₀); on a GPU with Triton, the maps made by the
              recording's GPU kernels (illustrated_sd/recording/joint_kernels.py)
    traced_pytorch   the same with the maps made by PyTorch (ISD_FUSED_RECORDING=0; only with --variants)
    traced_on_gpu    the default trace left on the GPU (RecordOptions(to_cpu=False): what the copies to the CPU cost)
    traced_no_maps   the trace without attention maps (RecordOptions(cross_attention=False): what the rest costs)

Each call's result is held until the next call returns, as ``trace = pipe(...)`` run again holds the old trace. The
maps go to page-locked CPU memory, which PyTorch keeps for reuse once a trace is freed; a traced call needs new such
memory only while earlier traces hold what there is: the first timed call (the warm-up's trace is held), and a traced
call right after another. ``--keep-traces`` keeps every trace whose maps are on the CPU, as a notebook that appends
them to a list does: then every traced call needs new memory.

It reports seconds per image (median and min), traced / plain, peak GPU memory of each, the trace's size, and
whether every traced image equals plain's. Results are written after each model.

    python benchmarks/dit_speed.py --models flux-dev --rounds 20 --out docs/gpu_speed_dit.json
    python benchmarks/dit_speed.py --models flux-dev --variants plain,traced,traced_pytorch   (the two roads beside plain)
"""

import argparse
import gc
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel

import illustrated_sd as isd
from illustrated_sd.recording.joint_attention import fused_kernels, kernels_in_use
from illustrated_sd.models.transformers import CLIP_G, CLIP_L, T5_XXL, real_transformer, t5_style_tokenizer
from illustrated_sd.paths import CLIP_TOKENIZER
from common import round_order  # benchmarks/common.py (the script's own folder is on the path)

PROMPT = "a lighthouse on a cliff at sunset, waves below, a small boat on the left"
def vae16(shift: float, scale: float) -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                         scaling_factor=scale, shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False, sample_size=1024)


def clip(config: dict, projection: int | None):
    made = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                          **({"projection_dim": projection} if projection else {}), **config)
    return (CLIPTextModelWithProjection(made) if projection else CLIPTextModel(made)).eval()


def build(model: str):
    """The diffusers pipeline of ``model``'s architecture, random bf16 weights drawn on the GPU (a ``tiny-`` layout:
    the package's tiny random one, to try this script on a CPU)."""
    if model.startswith("tiny"):
        return isd.build_random_pipeline(model)
    torch.set_default_dtype(torch.bfloat16)  # weights made in bf16 at once: T5-XXL's 4.7 B in float32 would be 19 GB more
    try:
        with torch.device("cuda"):
            torch.manual_seed(0)
            t5 = T5EncoderModel(T5Config(**T5_XXL)).eval()
            transformer = real_transformer(model)
            if model == "flux-dev":
                parts = dict(transformer=transformer, vae=vae16(0.1159, 0.3611), text_encoder=clip(CLIP_L, None), text_encoder_2=t5)
            else:
                parts = dict(transformer=transformer, vae=vae16(0.0609, 1.5305), text_encoder=clip(CLIP_L, 768), text_encoder_2=clip(CLIP_G, 1280),
                             text_encoder_3=t5)
    finally:
        torch.set_default_dtype(torch.float32)  # (the scheduler's σ tables are made below, in float32 as usual)
    if model == "flux-dev":
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                                      base_image_seq_len=256, max_image_seq_len=4096),
                            tokenizer=CLIPTokenizer.from_pretrained(CLIP_TOKENIZER), tokenizer_2=t5_style_tokenizer(), **parts)
    else:
        pipe = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), tokenizer=CLIPTokenizer.from_pretrained(CLIP_TOKENIZER),
                                        tokenizer_2=CLIPTokenizer.from_pretrained(CLIP_TOKENIZER, pad_token="!"),
                                        tokenizer_3=t5_style_tokenizer(), **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(model: str, rounds: int, steps: int, size: int, variants: list[str], keep_traces: bool = False) -> dict:
    began = time.perf_counter()
    pipe = build(model)
    built = time.perf_counter() - began
    traced_pipe = isd.IllustratedPipeline(pipe)
    flux = "flux" in model
    settings = dict(guidance_scale=3.5) if flux else dict(guidance_scale=7.0, negative_prompt="blurry")

    def plain():
        return pipe(PROMPT, num_inference_steps=steps, height=size, width=size, generator=torch.Generator().manual_seed(0),
                    max_sequence_length=512 if flux else 256, **settings).images[0]

    def traced(record=None):  # the default trace, or the one ``record`` (a RecordOptions) asks for
        chosen = {} if record is None else {"record": record}
        return traced_pipe(PROMPT, num_inference_steps=steps, height=size, width=size, seed=0, progress=False, **chosen, **settings)

    def traced_pytorch():
        before = os.environ.get("ISD_FUSED_RECORDING")
        os.environ["ISD_FUSED_RECORDING"] = "0"
        try:
            return traced()
        finally:  # as it was
            if before is None:
                del os.environ["ISD_FUSED_RECORDING"]
            else:
                os.environ["ISD_FUSED_RECORDING"] = before

    made = {"plain": plain, "traced": traced, "traced_pytorch": traced_pytorch,
            "traced_on_gpu": lambda: traced(isd.RecordOptions(to_cpu=False)),
            "traced_no_maps": lambda: traced(isd.RecordOptions(cross_attention=False))}
    runs = {name: made[name] for name in variants}
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    reference = np.asarray(plain())
    with warnings.catch_warnings(record=True) as caught:  # warm-up of both; did the recording's GPU kernels run?
        warnings.simplefilter("always")
        traced()
    failed = [str(w.message) for w in caught if "GPU kernels failed" in str(w.message)]
    gpu_kernels = cuda and bool(fused_kernels(torch.zeros(1, 1, 16, 128, device="cuda", dtype=torch.bfloat16), 33)) and not failed
    peaks, maps = {}, {}  # each traced variant's maps, on the CPU (maps left on the GPU would raise the next peaks)
    for name, run in runs.items():
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        out = run()
        sync()
        peaks[name] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
        if name == "traced":
            trace = out  # the default trace, for its size and layout below
        if name != "plain":
            maps[name] = {quadrant: m.cpu() for quadrant, m in out.attention.items()}
        del out
    times, equal, kept = {name: [] for name in runs}, [], []
    for r in range(rounds):  # no variant always first (see round_order)
        for name in round_order(variants, r):
            sync()
            t = time.perf_counter()
            out = runs[name]()
            sync()
            times[name].append(time.perf_counter() - t)
            if keep_traces and name != "traced_on_gpu":  # (those would fill the GPU)
                kept.append(out)
            if name != "plain":
                equal.append(bool(np.array_equal(np.asarray(out.image), reference)))
    copies = {}  # do the maps copied to the CPU equal those a call left on the GPU? (two calls: determinism asked too)
    if "traced_on_gpu" in maps:
        copies = {quadrant: bool(torch.equal(maps["traced"][quadrant], m)) for quadrant, m in maps["traced_on_gpu"].items()}
    roads = {}
    if "traced_pytorch" in maps:  # the two roads' maps (each rounded to bf16 in the trace)
        roads = {quadrant: float((maps["traced"][quadrant].float() - m.float()).abs().max()) for quadrant, m in maps["traced_pytorch"].items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    trace_bytes = sum(x.numel() * x.element_size() for x in [*trace.attention.values(), trace.latents, trace.velocity, trace.pred_x0])
    return {"model": model + " architecture, random weights", "params_b": round(sum(p.numel() for p in pipe.transformer.parameters()) / 1e9, 2),
            "dtype": "bfloat16", "size": size, "steps": steps, "rounds": rounds, "build_s": round(built, 1),
            "s_median": {k: round(v, 3) for k, v in med.items()}, "s_min": {k: round(min(v), 3) for k, v in times.items()},
            **{f"{name}_over_plain": round(med[name] / med["plain"], 4) for name in runs if name != "plain"}, "peak_gib": peaks,
            "peak_extra_gib": round(peaks["traced"] - peaks["plain"], 2) if cuda else None, "images_equal": f"{sum(equal)} of {len(equal)}",
            "recording_kernels": "triton" if gpu_kernels else f"pytorch{' (' + failed[0] + ')' if failed else ''}", "maps_kernels_vs_pytorch_max_abs": roads,
            "maps_copied_equal_gpu": copies, "keep_traces": keep_traces,
            "trace_gib": round(trace_bytes / 2**30, 3), "layers": len(trace.layers), "text_tokens_kept": len(trace.tokens),
            "text_slots": trace.text_length, "padding_share": round(trace.padding_share(), 4),
            "attention_kernels": kernels_in_use(),
            "times": {k: [round(x, 4) for x in v] for k, v in times.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="flux-dev,sd3.5-large,sd3.5-medium")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--out", default="docs/gpu_speed_dit.json")
    parser.add_argument("--variants", default="plain,traced", help="plain, traced, traced_pytorch, traced_on_gpu, traced_no_maps; comma-separated")
    parser.add_argument("--keep-traces", action="store_true", help="keep every trace whose maps are on the CPU (each traced call then needs new page-locked memory)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if len(set(variants)) < len(variants):
        parser.error(f"--variants names a variant twice: {args.variants}")
    others = {"traced_pytorch", "traced_on_gpu", "traced_no_maps"}
    if not {"plain", "traced"} <= set(variants) or not set(variants) <= {"plain", "traced"} | others:
        parser.error(f"--variants must hold plain and traced (and may add {', '.join(sorted(others))}), got {args.variants}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results = {"device": device, "torch": torch.__version__, "runs": []}
    for model in args.models.split(","):
        results["runs"].append(measure(model, args.rounds, args.steps, args.size, variants, args.keep_traces))
        print(json.dumps(results["runs"][-1], indent=None)[:1500], flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        gc.collect()  # the last model's pipeline sits in reference cycles: collect it before the next one's peaks are read
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
