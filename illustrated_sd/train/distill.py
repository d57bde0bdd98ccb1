"""tiny-flux-fast: tiny-flux distilled to jump, by *reflow* (Liu et al., "Flow Straight and Fast", 2022) with the
guidance baked in (Flux-dev's guidance embedding).

A flow-matching model learns straight paths between *random* pairs: any noise ε with any picture x₀. Averaged over
all the pictures an ε could become, the velocity it learns bends, so a sampler needs many small steps. Reflow takes
the pairs the trained model itself makes, ε → x₀ = (25 guided Euler steps from ε), and trains a student on the
straight lines between *those*: x_σ = (1 − σ)·x₀ + σ·ε, v = ε − x₀. Each ε now has one picture, the line to it is
the path, and one Euler step of size 1 lands on it.

Four things ride along:
- **guidance distillation**: the teacher's pairs are drawn with real classifier-free guidance at a scale s from
  ``SCALES`` (two passes per step); the student gets s as an *input* (diffusers' ``guidance_embeds``, as Flux-dev),
  and learns in one pass what the teacher needed two for;
- **initialised from the teacher**: the student is tiny-flux's transformer with a guidance embedder added, its last
  layer zero, so before training it *is* the teacher (at any s); training bends it straight;
- **a low-rank correction**: the teacher's weights stay frozen; each linear layer learns only ``W + B·A`` with thin
  ``B [out, r]`` and ``A [r, in]`` (LoRA; ``B`` starts at zero), as LCM-LoRA and the Flux turbo LoRAs distil. The
  export ships ``A``, ``B`` and the guidance embedder, a fraction of a transformer (``illustrated_sd.models.low_rank``
  adds them into tiny-flux's weights at load): a fast model *is* a small correction of the slow one;
- **asked where it will be asked**: half of each batch sits at the σ's of the 1-, 2- and 4-step schedules (the points
  the student is sampled at), half anywhere on the line.

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
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from ..models.loading import correction_bases, weights_sha256
from ..models.low_rank import A, B, LOW_RANK_FILE
from ..models.transformers import TINY_FLUX
from ..paths import TINY_FLUX as TEACHER
from ..trace.files import atomic_write, load_weights
from ..world import HELD_OUT, known_words_2, sample_scenes
from .checkpoint import read_log, write_log
from ..lessons.flow_matching import mu_at, shifted, sigma_schedule
from .flux import SIZE
from .stages import Budget, _autocast, _run_averaged

SCALES = (1.0, 8.0)  # the teacher's guidance scales are drawn uniformly from this range; the student reads s as an input
TEACHER_STEPS = 25  # the teacher's own sampling: 25 guided Euler steps
PAIRS_FILE = "pairs.safetensors"
RANK = 16  # the rank r of each layer's correction B·A
STUDENT_STEPS = (1, 2, 4)  # the step counts the student is meant for: half of each batch sits at their σ's
GUIDANCE_EMBEDDER = "time_text_embed.guidance_embedder"


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


class LowRankDelta(torch.nn.Module):
    """A linear layer's weight ``W [out, in]`` read as ``W + B·A`` (a ``torch.nn.utils.parametrize`` parametrization:
    the layer stays diffusers' own ``Linear``, its weight is computed). ``B [out, r]`` starts at zero, so the layer starts
    as it was; ``A [r, in]`` is random, as in LoRA, so that ``B``'s first gradients point somewhere."""

    def __init__(self, weight: torch.Tensor, rank: int, generator: torch.Generator):
        super().__init__()
        out_features, in_features = weight.shape
        self.lora_A = torch.nn.Parameter(torch.randn(rank, in_features, generator=generator) / in_features ** 0.5)
        self.lora_B = torch.nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.lora_B @ self.lora_A


def student_transformer(teacher: FluxTransformer2DModel, rank: int = RANK) -> FluxTransformer2DModel:
    """tiny-flux's transformer with a guidance input, ready to distil: the teacher's weights, frozen, each linear layer
    read as ``W + B·A`` (:class:`LowRankDelta`, ``B`` zero) and a guidance embedder (trained whole) whose last layer is
    zero, so that the student starts as the teacher whatever guidance it is given."""
    student = FluxTransformer2DModel(**{**teacher.config, "guidance_embeds": True})
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(GUIDANCE_EMBEDDER + ".") for k in missing), (missing, unexpected)
    last = student.time_text_embed.guidance_embedder.linear_2
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    guidance = set(student.time_text_embed.guidance_embedder.modules())
    student.requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    for name, layer in list(student.named_modules()):
        if isinstance(layer, torch.nn.Linear) and layer not in guidance:
            parametrize.register_parametrization(layer, "weight", LowRankDelta(layer.weight, rank, generator))
    student.time_text_embed.guidance_embedder.requires_grad_(True)
    return student


def low_rank_state(student: FluxTransformer2DModel) -> dict[str, torch.Tensor]:
    """What tiny-flux-fast ships of a :func:`student_transformer`: ``NAME.lora_A.weight [r, in]`` and
    ``NAME.lora_B.weight [out, r]`` per corrected layer, and the guidance embedder's tensors (what
    :func:`~illustrated_sd.models.low_rank.fuse_low_rank` adds to tiny-flux's transformer)."""
    state = {}
    for name, layer in student.named_modules():
        if parametrize.is_parametrized(layer, "weight"):
            delta = layer.parametrizations.weight[0]
            state[name + A], state[name + B] = delta.lora_A.detach(), delta.lora_B.detach()
    for key, value in student.time_text_embed.guidance_embedder.state_dict().items():
        state[f"{GUIDANCE_EMBEDDER}.{key}"] = value.detach()
    return state


def visited_sigmas(pipe: FluxPipeline) -> torch.Tensor:
    """The σ's the student's own schedules visit: those of 1, 2 and 4 Euler steps (``STUDENT_STEPS``), ``[7]``. σ = 1
    starts all three, so it is 3 of the 7: the one-step jump gets the most practice."""
    return torch.cat([torch.as_tensor(sigma_schedule(pipe, k, SIZE)[:-1], dtype=torch.float32) for k in STUDENT_STEPS])


def student_sigmas(visited: torch.Tensor, mu: float, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """``n`` noise levels σ ``[n]`` to train at: the first half drawn from ``visited`` (:func:`visited_sigmas`, on
    ``device``), the rest logit-normal and shifted by ``mu``, as tiny-flux trained."""
    half = n // 2
    chosen = visited[torch.randint(0, len(visited), (half,), generator=generator, device=device)]
    anywhere = shifted(torch.sigmoid(torch.randn(n - half, generator=generator, device=device)), mu)
    return torch.cat([chosen, anywhere])


def correction_rank(folder: Path) -> int:
    """The rank r of a tiny-flux-fast folder's correction (its ``A`` matrices are ``[r, in]``); ``FileNotFoundError``
    naming the file if the folder has none."""
    from safetensors import safe_open

    path = Path(folder) / "transformer" / LOW_RANK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--init: {path} is missing; pass an exported tiny-flux-fast folder")
    with safe_open(path, "pt") as f:
        return next(f.get_slice(k).get_shape()[0] for k in f.keys() if k.endswith(A))


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
    sigmas = torch.as_tensor(sigma_schedule(pipe, steps, SIZE), dtype=torch.float32, device=device)  # [steps + 1], to 0
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


def start_from(student: FluxTransformer2DModel, state: dict[str, torch.Tensor]) -> None:
    """Start a :func:`student_transformer` from an exported correction (:func:`low_rank_state`) of rank r₀ ≤ its rank r:
    its ``A`` and ``B`` fill the first r₀ ranks (the rest keep ``B`` = 0), so the student starts as that model; a
    ``ValueError`` if r₀ > r or if the correction lacks one of the student's layers."""
    for name, layer in student.named_modules():
        if parametrize.is_parametrized(layer, "weight"):
            if name + A not in state:
                raise ValueError(f"the correction to start from corrects no {name}: it was made for another transformer layout")
            delta, a, b = layer.parametrizations.weight[0], state[name + A], state[name + B]
            if len(a) > len(delta.lora_A):
                raise ValueError(f"the correction to start from has rank {len(a)}, more than the student's {len(delta.lora_A)}: "
                                 f"pass --rank {len(a)} or more")
            with torch.no_grad():
                delta.lora_A[: len(a)] = a
                delta.lora_B[:, : len(a)] = b
    guidance = {k[len(GUIDANCE_EMBEDDER) + 1:]: v for k, v in state.items() if k.startswith(GUIDANCE_EMBEDDER + ".")}
    student.time_text_embed.guidance_embedder.load_state_dict(guidance)


def corrects_weights_of(folder: Path, teacher: Path) -> bool:
    """Whether a tiny-flux-fast ``folder``'s correction fits ``teacher``'s transformer: the weights it was moved onto
    (``bases_sha256``), else the teacher it was distilled from (``teacher_sha256``); ``True`` if it names neither."""
    known = correction_bases(json.loads((Path(folder) / "illustrated_sd.json").read_text())).get("transformer")
    return known is None or known == weights_sha256(teacher)


def student_rank(ckpt: Path) -> int | None:
    """The rank a checkpoint's student was begun at (its log says), or ``None`` before the reflow stage first ran."""
    return read_log(Path(ckpt)).get("student", {}).get("rank")


def train_reflow(ckpt: Path, minutes: float, batch_size: int, device, seed: int, max_steps=None, log_every=20,
                 ema_decay=0.999, anneal: bool = True, world: int = 2, rank: int | None = None, init: Path | None = None):
    """Stage ``reflow``: the student learns the straight lines between the teacher's pairs (see the module). A new
    student has corrections of rank ``rank`` (default ``RANK``), started from ``init`` (a tiny-flux-fast folder
    distilled from the same teacher) if given; a checkpoint's student goes on at its own rank (``ValueError`` if
    ``rank`` or ``init`` asks for another: distil into a new folder)."""
    path = Path(ckpt) / PAIRS_FILE
    if not path.is_file():
        raise RuntimeError(f"{ckpt} has no teacher pairs yet: run the pairs stage first (--stages pairs)")
    teacher = teacher_folder(ckpt)
    log = read_log(Path(ckpt))
    begun = student_rank(ckpt)
    if begun is not None and rank is not None and rank != begun:
        raise ValueError(f"{ckpt}'s student was begun at rank {begun}; distil rank {rank} into a new --out folder")
    rank = begun or rank or RANK
    pipe = teacher_pipeline(teacher)
    student = student_transformer(pipe.transformer, rank)
    if load_weights(student, ckpt, "transformer"):
        if init is not None:
            raise ValueError(f"{ckpt} already has a student; --init starts a new one: pass a new --out folder")
    elif init is not None:
        if not corrects_weights_of(init, teacher):
            raise ValueError(f"{init} corrects other weights than {teacher}'s: start from a correction of this teacher "
                             f"(or move it onto them first: python -m illustrated_sd.train rebase)")
        start_from(student, load_file(Path(init) / "transformer" / LOW_RANK_FILE))
        earlier = Path(init) / "train_log.json"  # the history of what it starts from travels with it
        log["student"] = {"rank": rank, "started_from": str(init),
                          "earlier_log": json.loads(earlier.read_text()) if earlier.is_file() else None}
    log.setdefault("student", {"rank": rank})
    write_log(Path(ckpt), log)
    pairs = {k: v.to(device) for k, v in load_file(path).items()}
    student = student.to(device).float().train()
    side = SIZE // pipe.vae_scale_factor
    image_ids = pipe._prepare_latent_image_ids(1, side // 2, side // 2, device, torch.float32)
    text_ids = torch.zeros(TINY_FLUX["max_sequence_length"], 3, device=device)
    gen = torch.Generator(device).manual_seed(seed * 1_000_003 + 17 + len(read_log(ckpt).get("reflow", {}).get("step", [])))
    visited, mu = visited_sigmas(pipe).to(device), mu_at(pipe, SIZE)

    def step_fn(step):
        idx = torch.randint(0, len(pairs["noise"]), (batch_size,), generator=gen, device=device)
        noise, x0 = pairs["noise"][idx], pairs["x0"][idx]
        sigma = student_sigmas(visited, mu, batch_size, gen, device)[:, None, None]
        x_sigma = (1 - sigma) * x0 + sigma * noise  # the straight line between *this* noise and *its* picture
        # float32, not bfloat16 autocast: early on B·A is tiny beside the weight W it is added to, and W + B·A cast to
        # bfloat16's 8 bits of mantissa would hide it from the forward pass (a first run in bfloat16 also failed in
        # cuBLAS on the H100); tiny-flux is small enough that float32 costs little
        v = student(hidden_states=x_sigma, encoder_hidden_states=pairs["text"][idx], pooled_projections=pairs["pooled"][idx],
                    timestep=sigma[:, 0, 0], guidance=pairs["scale"][idx], img_ids=image_ids, txt_ids=text_ids,
                    return_dict=False)[0]
        return F.mse_loss(v.float(), noise - x0)

    # a low-rank correction learns at LoRA's usual rate, higher than a whole network's
    return _run_averaged("reflow", step_fn, student, "transformer", 4e-4, ckpt, Budget(minutes, max_steps), log_every, ema_decay,
                         warmup=50, anneal=anneal)


def export_fast(ckpt: Path, folder: Path) -> None:
    """Write tiny-flux-fast's folder: ``transformer/`` (its config and ``low_rank.safetensors``, float16: the student's
    correction of tiny-flux's transformer), ``scheduler/``, ``model_index.json``; every other part is tiny-flux's
    (``illustrated_sd.json`` says so: ``shares`` and ``corrects``)."""
    from .export import write_atomically

    teacher = teacher_folder(ckpt)
    pipe = teacher_pipeline(teacher)
    student = student_transformer(pipe.transformer, student_rank(ckpt) or RANK)
    if not load_weights(student, ckpt, "transformer"):
        raise FileNotFoundError(f"{ckpt} has no student weights; run the reflow stage first (--stages reflow)")
    correction = {k: v.to(torch.float16).contiguous() for k, v in low_rank_state(student).items()}
    # the teacher's own shared parts (tiny-sd's VAE and CLIP), and its T5: the folder goes beside both
    shared = {**json.loads((teacher / "illustrated_sd.json").read_text())["shares"], "text_encoder_2": teacher.name,
              "tokenizer_2": teacher.name}
    plain = FluxTransformer2DModel(**{**pipe.transformer.config, "guidance_embeds": True})  # what the folder's config says
    fast = FluxPipeline(**{**pipe.components, "transformer": plain})

    def write(tmp: Path) -> None:
        fast.save_pretrained(tmp, safe_serialization=True)
        for name in shared:
            shutil.rmtree(tmp / name)
        for weights in (tmp / "transformer").glob("*.safetensors"):
            weights.unlink()  # the transformer's weights are tiny-flux's plus the correction
        save_file(correction, tmp / "transformer" / LOW_RANK_FILE)
        shutil.copy(Path(ckpt) / "train_log.json", tmp / "train_log.json")
        info = {"known_words": known_words_2(), "held_out": HELD_OUT, "image_size": SIZE, "world": 2,
                "shares": shared, "corrects": {"transformer": teacher.name}, "teacher_sha256": weights_sha256(teacher),
                "defaults": {"num_inference_steps": 4, "guidance_scale": 4.0,
                             "max_sequence_length": TINY_FLUX["max_sequence_length"]}}
        (tmp / "illustrated_sd.json").write_text(json.dumps(info, indent=1))

    write_atomically(folder, write)


def svd_correction(target: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` product ``B [out, r] · A [r, in]`` for a matrix ``target [out, in]`` (Eckart–Young: its
    truncated SVD, √S shared between the two halves; exact, padded with zeros, where the matrix has fewer than
    ``rank`` singular values)."""
    u, s, vh = torch.linalg.svd(target.float(), full_matrices=False)
    k = min(rank, len(s))
    root = s[:k].sqrt()
    b, a = target.new_zeros(target.shape[0], rank), target.new_zeros(rank, target.shape[1])
    b[:, :k], a[:k] = u[:, :k] * root, root[:, None] * vh[:k]
    return b, a


@torch.no_grad()
def _fast_pictures(transformer, pipe: FluxPipeline, text, pooled, noise, scales, steps: int) -> torch.Tensor:
    """A guidance-distilled transformer's pictures (packed latents ``[B, 64, 16]``) from ``noise`` by ``steps`` Euler
    steps, one pass a step, each row at its own guidance input ``scales [B]``."""
    side = SIZE // pipe.vae_scale_factor
    image_ids = pipe._prepare_latent_image_ids(1, side // 2, side // 2, noise.device, noise.dtype)
    text_ids = torch.zeros(text.shape[1], 3, device=noise.device)
    sigmas = torch.as_tensor(sigma_schedule(pipe, steps, SIZE), dtype=torch.float32, device=noise.device)
    x = noise.clone()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        v = transformer(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=sigma.expand(len(x)),
                        guidance=scales, img_ids=image_ids, txt_ids=text_ids, return_dict=False)[0]
        x = x + (sigma_next - sigma) * v
    return x


def rebase_correction(fast: Path, old_base: Path, minutes: float = 5.0, batch_size: int = 64, samples: int = 1024,
                      seed: int = 0, max_steps: int | None = None) -> dict:
    """Move a tiny-flux-fast folder's correction onto the tiny-flux beside it, when that tiny-flux was retrained.

    A low-rank correction is tied to the weights it was trained on, as a LoRA is to its checkpoint: ``W_old + B·A`` is
    the student, and ``W_new + B·A`` is not. This finds ``B'·A'`` (same rank, same file size) with ``W_new + B'·A'`` acting
    as the student did, without its teacher's pairs or a GPU: it starts from the truncated SVD of
    ``W_old + B·A − W_new`` (:func:`svd_correction`), ships the few whole tensors that are not corrected (biases, norms)
    as the student had them, and then trains ``A'``, ``B'`` so that the new model's velocity, reading the new T5, matches
    the old student's, reading its own T5, on the states reflow trains on (the lines between fresh noise and the old
    student's 4-step pictures of world captions; half at the σ's of the 1-, 2- and 4-step schedules). ``old_base``: the
    tiny-flux folder the correction was made for (say, ``git archive`` of an earlier commit). The folder's
    ``illustrated_sd.json`` records the new bases' hashes (``bases_sha256``), which ``load_pipeline`` checks.
    Returns the log: the loss, and the RMS gap between the old and the new model's 1-, 2- and 4-step pictures (latents)
    on the held-out prompts, before training (SVD alone) and after."""
    from transformers import T5EncoderModel

    from ..evaluate import prompt_group, prompt_set
    from ..models.loading import load_pipeline
    from ..models.low_rank import load_corrected
    from .export import write_atomically

    fast, old_base = Path(fast), Path(old_base)
    info = json.loads((fast / "illustrated_sd.json").read_text())
    new_base = fast.parent / info["corrects"]["transformer"]
    rank = correction_rank(fast)
    old = load_corrected(FluxTransformer2DModel, fast / "transformer", old_base / "transformer").float().eval()
    old_t5 = T5EncoderModel.from_pretrained(old_base / "text_encoder_2").float().eval()
    pipe = load_pipeline(new_base).pipeline  # the new tiny-flux: its transformer, its T5, tiny-sd's CLIP
    was = old.state_dict()  # the student as it was: its base's weights with the correction added in
    student = student_transformer(pipe.transformer.float(), rank)
    corrected = {name for name, layer in student.named_modules() if parametrize.is_parametrized(layer, "weight")}
    with torch.no_grad():  # start: B'·A' from the SVD of what the new weights lack, every other tensor as the student had it
        for name, layer in student.named_modules():
            if name in corrected:
                delta = layer.parametrizations.weight[0]
                b, a = svd_correction(was[name + ".weight"] - layer.parametrizations.weight.original, rank)
                delta.lora_B.copy_(b), delta.lora_A.copy_(a)
        whole = {k: v for k, v in was.items() if k[: -len(".weight")] not in corrected}  # biases, norms, the guidance embedder
        student.load_state_dict(whole, strict=False)
    student.requires_grad_(False)
    lora = [p for n, p in student.named_parameters() if n.endswith(("lora_A", "lora_B"))]
    for p in lora:
        p.requires_grad_(True)

    def encode(captions, t5):  # (T5 states, CLIP pooled) as FluxPipeline makes them, with the T5 asked for
        own, pipe.text_encoder_2 = pipe.text_encoder_2, t5
        try:
            text, pooled, _ = pipe.encode_prompt(captions, prompt_2=None, max_sequence_length=TINY_FLUX["max_sequence_length"])
        finally:
            pipe.text_encoder_2 = own
        return text, pooled

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the states to match on, drawn once: fresh noise, world captions, the old student's pictures
        captions = [s.caption for s in sample_scenes([seed, 21], samples, version=2)]
        captions = [c if torch.rand(1, generator=gen) > 0.1 else "" for c in captions]  # some unguided, as reflow's teacher
        data = {k: [] for k in ("noise", "x0", "old_text", "new_text", "pooled", "scale")}
        for i in tqdm(range(0, samples, 128), desc="the old student's pictures", unit="batch"):
            old_text, pooled = encode(captions[i:i + 128], old_t5)
            new_text, _ = encode(captions[i:i + 128], pipe.text_encoder_2)
            noise = torch.randn(len(old_text), 64, 16, generator=gen)
            scale = SCALES[0] + (SCALES[1] - SCALES[0]) * torch.rand(len(old_text), generator=gen)
            x0 = _fast_pictures(old, pipe, old_text, pooled, noise, scale, 4)
            for key, value in zip(data, (noise, x0, old_text, new_text, pooled, scale)):
                data[key].append(value)
        data = {k: torch.cat(v) for k, v in data.items()}
        prompts = [prompt for prompt, _, _ in prompt_group(prompt_set(world=2), "held-out")]
        check = dict(zip(("old_text", "pooled"), encode(prompts, old_t5)), new_text=encode(prompts, pipe.text_encoder_2)[0],
                     noise=torch.randn(len(prompts), 64, 16, generator=gen), scale=torch.full((len(prompts),), 4.0))

    def gap() -> dict[int, float]:  # RMS between the old and the new model's pictures (latents) of the held-out prompts
        with torch.no_grad():
            return {k: round(float((_fast_pictures(old, pipe, check["old_text"], check["pooled"], check["noise"], check["scale"], k)
                                    - _fast_pictures(student, pipe, check["new_text"], check["pooled"], check["noise"],
                                                     check["scale"], k)).pow(2).mean().sqrt()), 4) for k in STUDENT_STEPS}

    log = {"from": str(old_base), "rank": rank, "gap_before": gap(), "step": [], "loss": []}
    side = SIZE // pipe.vae_scale_factor
    image_ids = pipe._prepare_latent_image_ids(1, side // 2, side // 2, "cpu", torch.float32)
    text_ids = torch.zeros(TINY_FLUX["max_sequence_length"], 3)
    visited, mu = visited_sigmas(pipe), mu_at(pipe, SIZE)
    optimiser = torch.optim.Adam(lora, lr=2e-4)
    budget, step = Budget(minutes, max_steps), 0
    bar = tqdm(desc="rebase", unit="step")
    while budget.more(step):
        idx = torch.randint(0, samples, (batch_size,), generator=gen)
        sigma = student_sigmas(visited, mu, batch_size, gen, "cpu")
        x = (1 - sigma[:, None, None]) * data["x0"][idx] + sigma[:, None, None] * data["noise"][idx]
        common = dict(hidden_states=x, pooled_projections=data["pooled"][idx], timestep=sigma, guidance=data["scale"][idx],
                      img_ids=image_ids, txt_ids=text_ids, return_dict=False)
        with torch.no_grad():
            target = old(encoder_hidden_states=data["old_text"][idx], **common)[0]
        loss = F.mse_loss(student(encoder_hidden_states=data["new_text"][idx], **common)[0], target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        bar.update()
        if step % 20 == 0:
            log["step"].append(step), log["loss"].append(round(loss.item(), 6))
            bar.set_postfix(loss=f"{loss.item():.5f}")
    bar.close()
    student.eval()
    log["total_steps"], log["gap_after"] = step, gap()
    correction = {k: v.to(torch.float16).contiguous() for k, v in low_rank_state(student).items()}
    correction.update({k: v.to(torch.float16).contiguous() for k, v in whole.items()})  # the student's own, not the new base's

    def write(tmp: Path) -> None:
        shutil.copytree(fast, tmp, dirs_exist_ok=True)
        save_file(correction, tmp / "transformer" / LOW_RANK_FILE)
        bases = {"transformer": weights_sha256(new_base), "text_encoder_2": weights_sha256(new_base, "text_encoder_2")}
        (tmp / "illustrated_sd.json").write_text(json.dumps({**info, "bases_sha256": bases}, indent=1))
        train_log = json.loads((fast / "train_log.json").read_text())
        train_log.setdefault("rebased", []).append(log)
        (tmp / "train_log.json").write_text(json.dumps(train_log, indent=1))

    write_atomically(fast, write)
    return log

