"""The three training stages. Each takes a time budget, resumes from the checkpoint folder, logs
its loss every few steps and saves its weights at the end."""

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models.unet import build_random_pipeline
from ..lessons.clip import ClipHead, ImageTower, text_features
from ..lessons.forward_diffusion import diffusion_loss
from ..trace.files import load_weights
from .checkpoint import read_log, save_weights, write_log
from .data import world_batch


def clip_loss(image_emb, text_emb, logit_scale):
    """Symmetric InfoNCE: in a batch of B pairs, each image must pick its own caption among B, and back.

    logits[i, j] = exp(τ) · cos(image_i, text_j);  loss = (CE(logits, diag) + CE(logitsᵀ, diag)) / 2
    """
    image_emb, text_emb = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class Budget:
    """Stop after ``minutes`` of wall time or ``max_steps`` steps, whichever comes first."""

    def __init__(self, minutes: float, max_steps: int | None):
        self.start, self.deadline, self.max_steps = time.time(), time.time() + 60 * minutes, max_steps

    def used(self, step: int) -> float:
        """The fraction of the budget spent, in [0, 1]."""
        by_time = (time.time() - self.start) / max(self.deadline - self.start, 1e-9)
        return min(1.0, max(by_time, step / self.max_steps if self.max_steps else 0.0))

    def begin_steps(self) -> None:
        """The steps start now, after a stage's setup: the deadline stays, and the learning rate's anneal (``used``)
        spans the time from here to it, not the setup's share too."""
        self.start = time.time()

    def more(self, step: int) -> bool:
        return time.time() < self.deadline and (self.max_steps is None or step < self.max_steps)


class EMA:
    """An exponential moving average of a module's weights: it samples better than the last step's weights.

    Its decay ramps up, min(decay, (1 + n) / (10 + n)) after n updates, so that the starting weights
    are forgotten quickly.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module, self.decay = module, decay
        self.weights = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, n: int) -> None:
        decay = min(self.decay, (1 + n) / (10 + n))
        live = []
        for k, v in self.module.state_dict().items():
            if v.is_floating_point():
                live.append((self.weights[k], v))
            else:
                self.weights[k].copy_(v)  # counters (e.g. BatchNorm's batches seen) are not averaged: the latest
        # one kernel for all the weights (on a GPU a small model's step is mostly launches: one per tensor adds up)
        torch._foreach_lerp_([average for average, _ in live], [v for _, v in live], 1 - decay)


def _autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


SAVE_EVERY = 120.0  # seconds between a stage's saves while it runs (see _run's ``save``)


def _run(stage, step_fn, params, lr, ckpt, budget, log_every, warmup=200, after_step=None, anneal=False, save=None,
         save_every: float = SAVE_EVERY):
    """A generic loop: AdamW with linear warm-up, loss logged to the checkpoint's JSON every ``log_every`` steps.

    With ``anneal``, the learning rate falls linearly to 10% over the second half of the budget. ``save`` (a function
    of no arguments that writes the stage's weights) is also called every ``save_every`` seconds, with the log beside
    it, so that a run killed from outside (a GPU call's time limit) keeps all but its last minutes: started again, it
    trains on from the last save. (The caller still saves at the end.)
    """
    log = read_log(ckpt)
    curve = log.setdefault(stage, {"step": [], "loss": [], "seconds": []})
    start_step = curve.get("total_steps", 0)
    elapsed0 = curve["seconds"][-1] if curve["seconds"] else 0.0
    # fused: one kernel updates every parameter (on a GPU), instead of several per parameter tensor
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=all(p.is_cuda for p in params))
    step, t0, running = start_step, time.time(), []
    last_save = t0
    bar = tqdm(desc=stage, unit="step")
    while budget.more(step - start_step):
        factor = min(1.0, (step - start_step + 1) / warmup)  # warm up again on resume: Adam's moments start from zero
        if anneal:
            factor *= max(0.1, min(1.0, 2 * (1 - budget.used(step - start_step))))
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        loss = step_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if after_step is not None:
            after_step(step - start_step)
        running.append(loss.detach())
        if (step + 1) % log_every == 0:
            curve["step"].append(step)
            curve["loss"].append(torch.stack(running).mean().item())
            curve["seconds"].append(elapsed0 + time.time() - t0)
            bar.set_postfix(loss=f"{curve['loss'][-1]:.4f}")
            running = []
        step += 1
        bar.update()
        if save is not None and time.time() - last_save >= save_every:
            save()
            curve["total_steps"] = step  # the log says how many steps the saved weights have had
            write_log(ckpt, log)
            last_save = time.time()
    bar.close()
    curve["total_steps"] = step
    write_log(ckpt, log)
    return step - start_step


def _run_averaged(stage: str, step_fn, module: torch.nn.Module, weights: str, lr: float, ckpt: Path, budget: Budget, log_every: int,
                  ema_decay: float, write=None, **options) -> int:
    """:func:`_run` on ``module``'s parameters while an :class:`EMA` averages its weights; then the averaged weights
    (what ships: they sample better than the last step's) are loaded back and saved as ``weights``. The steps taken.
    ``write(state_dict)``, if given, saves instead (a module of several parts, each kept under its own name)."""
    write = write or (lambda state: save_weights(state, ckpt, weights))
    ema = EMA(module, ema_decay)
    steps = _run(stage, step_fn, list(module.parameters()), lr, ckpt, budget, log_every, after_step=ema.update,
                 save=lambda: write(ema.weights), **options)
    if steps:
        module.load_state_dict(ema.weights)
    write(module.state_dict())
    return steps


def train_clip(ckpt: Path, minutes: float, batch_size: int, device, seed: int, max_steps=None, log_every=20, world: int = 1):
    pipe = build_random_pipeline("tiny-sd", seed=seed)
    text_encoder, tokenizer = pipe.text_encoder.to(device).train(), pipe.tokenizer
    tower, head = ImageTower().to(device), ClipHead(text_encoder.config.hidden_size).to(device)
    for module, name in ((text_encoder, "text_encoder"), (tower, "clip_image_tower"), (head, "clip_head")):
        if load_weights(module, ckpt, name):
            module.float()

    def step_fn(step):
        images, ids, _ = world_batch([seed, 1, step], batch_size, device, tokenizer, world=world)
        with _autocast(device):
            return clip_loss(tower(images), text_features(text_encoder, head, ids), head.logit_scale).float()

    params = [*text_encoder.parameters(), *tower.parameters(), *head.parameters()]

    def save():
        for module, name in ((text_encoder, "text_encoder"), (tower, "clip_image_tower"), (head, "clip_head")):
            save_weights(module, ckpt, name)

    steps = _run("clip", step_fn, params, 5e-4, ckpt, Budget(minutes, max_steps), log_every, save=save)
    save()
    return steps


def train_vae(ckpt: Path, minutes: float, batch_size: int, device, seed: int, max_steps=None, log_every=20, world: int = 1):
    pipe = build_random_pipeline("tiny-sd", seed=seed)
    vae, tokenizer = pipe.vae.to(device).train(), pipe.tokenizer
    load_weights(vae, ckpt, "vae")

    def step_fn(step):
        images, _, _ = world_batch([seed, 2, step], batch_size, device, tokenizer, world=world)
        with _autocast(device):
            posterior = vae.encode(images).latent_dist
            recon = vae.decode(posterior.sample()).sample.float()
        # pixels first (MSE drives PSNR, L1 keeps edges crisp); a tiny KL term keeps the latent tame, as in SD
        return F.mse_loss(recon, images) + 0.5 * F.l1_loss(recon, images) + 1e-6 * posterior.kl().mean()

    steps = _run("vae", step_fn, list(vae.parameters()), 4e-4, ckpt, Budget(minutes, max_steps), log_every,
                 save=lambda: save_weights(vae, ckpt, "vae"))
    save_weights(vae, ckpt, "vae")
    # SD scales latents to unit variance before diffusion (0.18215 for its VAE); measure ours the same way
    vae.eval()
    with torch.no_grad(), _autocast(device):
        images, _, _ = world_batch([seed, 2, 10**6], 256 if device.type == "cuda" else 8, device, tokenizer, world=world)
        std = vae.encode(images).latent_dist.mean.float().std().item()
    log = read_log(ckpt)
    log["vae_scaling_factor"] = 1.0 / std
    write_log(ckpt, log)
    return steps


@torch.no_grad()
def encode_world(vae, text_encoder, tokenizer, seed, n: int, device, chunk: int = 1000, world: int = 1):
    """Draw ``n`` scenes once and keep what the UNet needs, on ``device``.

    The VAE and the text encoder are frozen while the UNet trains (as in Stable Diffusion), so their
    outputs can be computed once: the latent posterior ``(mean, std) [n, 4, 16, 16]`` of each image
    and the ``[n, 77, D]`` hidden states of its caption. Training then samples a fresh latent from
    the posterior and fresh noise every time it sees an example.
    """
    means, stds, contexts = [], [], []
    for start in tqdm(range(0, n, chunk), desc="encoding the world", unit="chunk"):
        images, ids, _ = world_batch([seed, 3, start], min(chunk, n - start), device, tokenizer, world=world)
        with _autocast(device):
            posterior = vae.encode(images).latent_dist
            contexts.append(text_encoder(ids)[0].to(torch.bfloat16 if device.type == "cuda" else torch.float32))
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds), torch.cat(contexts), empty_context(text_encoder, tokenizer, device).to(contexts[0].dtype)


def empty_context(text_encoder, tokenizer, device) -> torch.Tensor:
    """The ``[1, 77, D]`` hidden states of the empty prompt "": what a dropped caption is replaced by."""
    empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids.to(device)
    return text_encoder(empty)[0]


def train_unet(ckpt: Path, minutes: float, batch_size: int, device, seed: int, max_steps=None, log_every=20,
               ema_decay=0.999, dataset_size: int = 100_000, drop_caption: float = 0.1, anneal: bool = False, world: int = 1,
               compile: bool = False):
    pipe = build_random_pipeline("tiny-sd", seed=seed)
    unet, vae, text_encoder, tokenizer, scheduler = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    if not (load_weights(vae, ckpt, "vae") and load_weights(text_encoder, ckpt, "text_encoder")):
        raise RuntimeError(f"{ckpt} has no trained VAE and text encoder yet: run the clip and vae stages first")
    scaling = read_log(ckpt)["vae_scaling_factor"]
    vae, text_encoder = vae.to(device).float().eval(), text_encoder.to(device).float().eval()
    means, stds, contexts, empty = encode_world(vae, text_encoder, tokenizer, seed, dataset_size, device, world=world)
    del vae, text_encoder
    unet = unet.to(device).train()
    load_weights(unet, ckpt, "unet")
    unet.float()
    forward = unet
    if device.type == "cuda":
        # convolutions in bf16 run fastest with channels last (NHWC) on tensor cores; compiling fuses the
        # many small GroupNorm/SiLU/attention kernels of a small UNet, whose steps are launch-bound
        unet.to(memory_format=torch.channels_last)
        if compile:
            forward = torch.compile(unet)
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    gen = torch.Generator(device).manual_seed(seed * 1_000_003 + len(read_log(ckpt).get("unet", {}).get("step", [])))

    def step_fn(step):
        idx = torch.randint(0, len(means), (batch_size,), generator=gen, device=device)
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen, device=device)) * scaling
        # caption dropout: 10% of examples see the empty prompt, so the model also learns ε(x_t, "")
        dropped = torch.rand(batch_size, generator=gen, device=device) < drop_caption
        context = torch.where(dropped[:, None, None], empty, contexts[idx])
        with _autocast(device):  # forward diffusion in one jump, then the UNet names the noise
            return diffusion_loss(forward, latents, context, alphas_cumprod, generator=gen)

    return _run_averaged("unet", step_fn, unet, "unet", 3e-4, ckpt, Budget(minutes, max_steps), log_every, ema_decay, anneal=anneal)
