"""tiny-flux-fast: tiny-flux distilled to jump, by *reflow* (Liu et al., "Flow Straight and Fast", 2022) with the
guidance baked in (Flux-dev's guidance embedding).

A flow-matching model learns straight paths between *random* pairs: any noise ε with any picture x₀. Averaged over
all the pictures an ε could become, the velocity it learns bends, so a sampler needs many small steps. Reflow takes
the pairs the trained model itself makes, ε → x₀ = (25 guided Euler steps from ε), and trains a student on the
straight lines between *those*: x_σ = (1 − σ)·x₀ + σ·ε, v = ε − x₀. Each ε now has one picture, the line to it is
the path, and one Euler step of size 1 lands on it.

Two things ride along:
- **guidance distillation**: the teacher's pairs are drawn with real classifier-free guidance at a scale s from
  ``SCALES`` (two passes per step); the student gets s as an *input* (diffusers' ``guidance_embeds``, as Flux-dev),
  and learns in one pass what the teacher needed two for;
- **initialised from the teacher**: the student is tiny-flux's transformer with a guidance embedder added, its last
  layer zero, so before training it *is* the teacher (at any s); training bends it straight.

Stages, in a checkpoint of its own (the teacher is the shipped ``illustrated_sd/assets/tiny-flux``):

    python -m illustrated_sd.train run --stages pairs,reflow --minutes 3,6 --world 2 --out checkpoints/tiny-flux-fast
    python -m illustrated_sd.train export checkpoints/tiny-flux-fast illustrated_sd/assets/tiny-flux-fast
"""

import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FluxPipeline, FluxTransformer2DModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..models.transformers import TINY_FLUX
from ..paths import TINY_FLUX as TEACHER
from ..trace.files import atomic_write, load_weights
from ..world import HELD_OUT, known_words_2, sample_scenes
from .checkpoint import read_log, write_log
from ..lessons.flow_matching import mu_at, shifted
from .flux import SIZE
from .stages import Budget, _autocast, _run_averaged

SCALES = (1.0, 8.0)  # the teacher's guidance scales are drawn uniformly from this range; the student reads s as an input
TEACHER_STEPS = 25  # the teacher's own sampling: 25 guided Euler steps
PAIRS_FILE = "pairs.safetensors"


def teacher_folder(ckpt: Path, asked: Path | None = None) -> Path:
    """The teacher of a tiny-flux-fast checkpoint: the one its pairs came from (its log says), else ``asked``, else the
    shipped tiny-flux; ``ValueError`` if ``asked`` is another than the pairs' (a student learns from one teacher)."""
    known = read_log(Path(ckpt)).get("pairs", {}).get("teacher")
    if known and asked is not None and Path(asked).resolve() != Path(known).resolve():
        raise ValueError(f"{ckpt}'s pairs came from the teacher {known}, not {asked}: distill into a new --out folder")
    return Path(known or asked or TEACHER)


def teacher_pipeline(teacher: Path = TEACHER) -> FluxPipeline:
    """The shipped tiny-flux as a plain ``FluxPipeline`` (its shared parts from tiny-sd's folder)."""
    from ..models.loading import load_pipeline

    if not (Path(teacher) / "transformer").is_dir():
        raise RuntimeError(f"no tiny-flux at {teacher} to distill: train and export it first (scripts/train_tiny_flux.sh)")
    return load_pipeline(teacher).pipeline


def student_transformer(teacher: FluxTransformer2DModel) -> FluxTransformer2DModel:
    """tiny-flux's transformer with a guidance input: the teacher's weights, and a guidance embedder whose last layer is
    zero, so that the student starts as the teacher whatever guidance it is given."""
    student = FluxTransformer2DModel(**{**teacher.config, "guidance_embeds": True})
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("time_text_embed.guidance_embedder.") for k in missing), (missing, unexpected)
    last = student.time_text_embed.guidance_embedder.linear_2
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    return student


@torch.no_grad()
def teacher_pairs(pipe: FluxPipeline, captions: list[str], scales: torch.Tensor, generator: torch.Generator,
                  steps: int = TEACHER_STEPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the teacher makes of fresh noise: ``(noise, x0, text, pooled)``, ``noise``/``x0`` packed ``[B, 64, 16]``,
    T5's ``text [B, T, D]`` and CLIP's ``pooled [B, P]`` of ``captions``; each row drawn with real CFG at its own
    ``scales[b]`` against "" by ``steps`` Euler steps on the sampler's own σ schedule (FluxPipeline's loop, batched)."""
    device, batch, length = pipe.transformer.device, len(captions), TINY_FLUX["max_sequence_length"]
    text, pooled, text_ids = pipe.encode_prompt(captions, prompt_2=None, device=device, max_sequence_length=length)
    empty, empty_pooled, _ = pipe.encode_prompt([""], prompt_2=None, device=device, max_sequence_length=length)
    side = SIZE // pipe.vae_scale_factor
    image_ids = pipe._prepare_latent_image_ids(1, side // 2, side // 2, device, text.dtype)
    noise = torch.randn(batch, (side // 2) ** 2, pipe.transformer.config.in_channels, generator=generator, device=device)
    sigmas = shifted(torch.linspace(1.0, 1.0 / steps, steps, device=device), mu_at(pipe, SIZE))
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    both_text, both_pooled = torch.cat([text, empty.expand_as(text)]), torch.cat([pooled, empty_pooled.expand_as(pooled)])
    x, s = noise.clone(), scales.to(device)[:, None, None]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        v = pipe.transformer(hidden_states=torch.cat([x, x]), encoder_hidden_states=both_text, pooled_projections=both_pooled,
                             timestep=sigma.expand(2 * batch), img_ids=image_ids, txt_ids=text_ids, return_dict=False)[0]
        v_text, v_uncond = v.chunk(2)
        x = x + (sigma_next - sigma) * (v_uncond + s * (v_text - v_uncond))  # the Euler step on the guided velocity
    return noise, x, text, pooled


def make_pairs(ckpt: Path, minutes: float, batch_size: int, device, seed: int, max_steps=None, log_every=20, world: int = 2,
               teacher: Path | None = None):
    """Stage ``pairs``: the ``teacher`` (a tiny-flux folder; default the shipped one, or the one this checkpoint's
    earlier pairs came from) draws (noise, picture) pairs of world captions, each at a guidance scale from ``SCALES``,
    until the budget is spent; they are added to the checkpoint's ``pairs.safetensors``."""
    teacher = teacher_folder(ckpt, teacher)
    pipe = teacher_pipeline(teacher).to(device)
    budget, path = Budget(minutes, max_steps), Path(ckpt) / PAIRS_FILE
    old = load_file(path) if path.is_file() else {}
    start = len(old.get("noise", []))
    made, step = {k: [] for k in ("noise", "x0", "text", "pooled", "scale")}, 0
    bar = tqdm(desc="teacher pairs", unit="pair")
    while budget.more(step):
        generator = torch.Generator(device).manual_seed(seed * 1_000_003 + 13 + start + step * batch_size)
        captions = [s.caption for s in sample_scenes([seed, 8, start + step * batch_size], batch_size, version=world)]
        scales = SCALES[0] + (SCALES[1] - SCALES[0]) * torch.rand(batch_size, generator=generator, device=device)
        with _autocast(device):
            noise, x0, text, pooled = teacher_pairs(pipe, captions, scales, generator)
        for key, value in zip(made, (noise, x0, text, pooled, scales)):
            made[key].append(value.float().cpu())
        step += 1
        bar.update(batch_size)
    bar.close()
    pairs = {k: torch.cat([old[k], *v]) if k in old else torch.cat(v) for k, v in made.items() if v}
    with atomic_write(path, "teacher pairs") as tmp:
        save_file({k: v.contiguous() for k, v in pairs.items()}, tmp)
    log = read_log(Path(ckpt))
    log["pairs"] = {"total": len(pairs["noise"]), "teacher": str(teacher), "teacher_steps": TEACHER_STEPS, "scales": list(SCALES)}
    write_log(Path(ckpt), log)
    return step


def train_reflow(ckpt: Path, minutes: float, batch_size: int, device, seed: int, max_steps=None, log_every=20,
                 ema_decay=0.999, anneal: bool = True, world: int = 2):
    """Stage ``reflow``: the student learns the straight lines between the teacher's pairs (see the module)."""
    path = Path(ckpt) / PAIRS_FILE
    if not path.is_file():
        raise RuntimeError(f"{ckpt} has no teacher pairs yet: run the pairs stage first (--stages pairs)")
    pairs = {k: v.to(device) for k, v in load_file(path).items()}
    pipe = teacher_pipeline(teacher_folder(ckpt))
    student = student_transformer(pipe.transformer)
    load_weights(student, ckpt, "transformer")
    student = student.to(device).float().train()
    side = SIZE // pipe.vae_scale_factor
    image_ids = pipe._prepare_latent_image_ids(1, side // 2, side // 2, device, torch.float32)
    text_ids = torch.zeros(TINY_FLUX["max_sequence_length"], 3, device=device)
    mu = mu_at(pipe, SIZE)
    gen = torch.Generator(device).manual_seed(seed * 1_000_003 + 17 + len(read_log(ckpt).get("reflow", {}).get("step", [])))

    def step_fn(step):
        idx = torch.randint(0, len(pairs["noise"]), (batch_size,), generator=gen, device=device)
        noise, x0 = pairs["noise"][idx], pairs["x0"][idx]
        sigma = shifted(torch.sigmoid(torch.randn(batch_size, generator=gen, device=device)), mu)[:, None, None]
        x_sigma = (1 - sigma) * x0 + sigma * noise  # the straight line between *this* noise and *its* picture
        with _autocast(device):
            v = student(hidden_states=x_sigma, encoder_hidden_states=pairs["text"][idx], pooled_projections=pairs["pooled"][idx],
                        timestep=sigma[:, 0, 0], guidance=pairs["scale"][idx], img_ids=image_ids, txt_ids=text_ids,
                        return_dict=False)[0]
        return F.mse_loss(v.float(), noise - x0)

    return _run_averaged("reflow", step_fn, student, "transformer", 1e-4, ckpt, Budget(minutes, max_steps), log_every, ema_decay,
                         warmup=50, anneal=anneal)


def export_fast(ckpt: Path, folder: Path) -> None:
    """Write tiny-flux-fast's folder: ``transformer/`` (the student, float16), ``scheduler/``, ``model_index.json``;
    every other part is tiny-flux's (``illustrated_sd.json`` says so)."""
    from .export import write_atomically

    teacher = teacher_folder(ckpt)
    pipe = teacher_pipeline(teacher)
    student = student_transformer(pipe.transformer)
    if not load_weights(student, ckpt, "transformer"):
        raise FileNotFoundError(f"{ckpt} has no student weights; run the reflow stage first (--stages reflow)")
    # the teacher's own shared parts (tiny-sd's VAE and CLIP), and its T5: the folder goes beside both
    shared = {**json.loads((teacher / "illustrated_sd.json").read_text())["shares"], "text_encoder_2": teacher.name,
              "tokenizer_2": teacher.name}
    fast = FluxPipeline(**{**pipe.components, "transformer": student})

    def write(tmp: Path) -> None:
        fast.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        for name in shared:
            shutil.rmtree(tmp / name)
        shutil.copy(Path(ckpt) / "train_log.json", tmp / "train_log.json")
        info = {"known_words": known_words_2(), "held_out": HELD_OUT, "image_size": SIZE, "world": 2,
                "shares": shared,
                "defaults": {"num_inference_steps": 4, "guidance_scale": 4.0,
                             "max_sequence_length": TINY_FLUX["max_sequence_length"]}}
        (tmp / "illustrated_sd.json").write_text(json.dumps(info, indent=1))

    write_atomically(folder, write)
