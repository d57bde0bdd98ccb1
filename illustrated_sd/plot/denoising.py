"""The walk from noise to image: latents, predicted x0 and noise per step, and the noise schedule."""

import matplotlib.pyplot as plt
import numpy as np
import torch

from .. import checks
from ..trace.unet import Trace, require_trace


def _pick_steps(num_steps: int, n: int) -> list[int]:
    """``n`` step indices spread evenly from the first to the last."""
    return sorted({round(i) for i in np.linspace(0, num_steps - 1, min(n, num_steps))})


def _as_rgb(latent: torch.Tensor) -> np.ndarray:
    """``[C, h, w]`` → ``[h, w, 3]`` in [0, 1]: channels 0–2 shown as red, green, blue, each stretched to its range."""
    x = latent[:3].float()
    lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-8)).permute(1, 2, 0).numpy()


def _start_title(trace: Trace) -> str:
    """What ``latents[0]`` is: pure noise, or (img2img, inpainting below strength 1) the picture noised to the first timestep."""
    if trace.mode == "text2img" or trace.strength == 1:
        return "start\npure noise"
    at = f"t = {trace.timesteps[0].item():.0f}" if isinstance(trace, Trace) else f"σ = {trace.sigmas[0].item():.2f}"
    return f"start: picture\nnoised to {at}"


def denoising_filmstrip(trace: Trace, what: str = "pred_x0", n: int = 8, decode=None):
    """A row of snapshots of the denoising, from pure noise (left) to the finished latent (right).

    Args:
        trace: a recorded generation (a :class:`Trace`, or a :class:`FlowTrace` of SD3 or Flux: its panels say σ).
        what: ``"latents"`` (x_t after each step, with the starting noise first), ``"pred_x0"`` (the
            clean latent the model believes in at each step), ``"noise"`` (the guided noise prediction; a
            FlowTrace: ``"velocity"``, the guided velocity).
        n: how many snapshots.
        decode: optional callable ``[N, C, h, w] latents → list of PIL images`` (e.g.
            ``pipe.decode_latents``) to show pictures; without it, latent channels 0–2 are shown as
            RGB (labelled as such) and nothing runs a model.
    Returns:
        a Figure with ``n`` panels titled by step and timestep.
    """
    require_trace(trace, "plot.denoising_filmstrip", every_step=True, flow=True)
    flow = not isinstance(trace, Trace)  # flow matching: σ from 1 to 0 instead of t from T to 0
    predicted = ("velocity", trace.velocity) if flow else ("noise", trace.noise_pred)
    series = {"latents": trace.latents, "pred_x0": trace.pred_x0, predicted[0]: predicted[1]}
    if what not in series:
        raise ValueError(f"what must be one of {list(series)}, got {what!r}")
    data = series[what]
    n = checks.whole_number("n", n, minimum=1, hint="how many snapshots to show, e.g. 8")
    steps = _pick_steps(len(data), n)
    pictures = decode(data[steps]) if decode is not None and what != predicted[0] else None
    fig, axes = plt.subplots(1, len(steps), figsize=(1.9 * len(steps), 2.4), squeeze=False, layout="constrained")
    for ax, k, i in zip(axes[0], steps, range(len(steps))):
        ax.imshow(pictures[i] if pictures is not None else _as_rgb(data[k]))
        # latents[0] is the starting noise; latents[k] is after step k-1
        step, t = (k - 1, None) if what == "latents" else (k, None)
        at = (f"σ = {trace.sigmas[step].item():.2f}" if flow else f"t = {trace.timesteps[step].item():.0f}") if step >= 0 else None
        # latents[k] is x_t *after* step k − 1 (which ran at its timestep t); x̂₀ and ε̂ are *at* step k
        # ("from t": the latent shown is already one step further, at the next timestep)
        if step < 0:
            ax.set_title(_start_title(trace), fontsize=9)
        else:
            ax.set_title(f"after step {step}\nfrom {at}" if what == "latents" else f"step {step}\n{at}", fontsize=9)
        ax.set_axis_off()
    how = "decoded by the VAE" if pictures is not None else "latent channels 0–2 as RGB"
    names = {"latents": "x_t, the latent after each step", "pred_x0": "predicted x0, the clean latent the model believes in",
             "noise": "predicted noise ε̂", "velocity": "predicted velocity v̂"}
    fig.suptitle(f"{names[what]} ({how})", fontsize=11)
    return fig


def latent_channels(trace: Trace, step: int = -1, what: str = "latents", cmap: str = "RdBu_r"):
    """The 4 (or C) channels of one latent as separate heat maps.

    Args:
        step: index into ``trace.latents`` (``-1`` = the final latent) or into ``pred_x0``/``noise``.
        what: ``"latents"``, ``"pred_x0"`` or ``"noise_pred"`` (also ``"noise"``).
    Returns:
        a Figure with one panel per channel on a shared, zero-centred diverging scale.
    """
    require_trace(trace, "plot.latent_channels", every_step=True)
    series = {"latents": trace.latents, "pred_x0": trace.pred_x0, "noise_pred": trace.noise_pred, "noise": trace.noise_pred}
    if what not in series:
        raise ValueError(f"what={what!r} is not recorded per step; choose one of {list(series)}")
    data = series[what]
    latent = data[checks.step_index(step, len(data))].float()
    limit = float(latent.abs().max())
    fig, axes = plt.subplots(1, len(latent), figsize=(2.3 * len(latent), 2.6), squeeze=False, layout="constrained")
    for c, ax in enumerate(axes[0]):
        im = ax.imshow(latent[c].numpy(), cmap=cmap, vmin=-limit, vmax=limit)
        ax.set_title(f"channel {c}", fontsize=10)
        ax.set_xlabel("latent x")
        ax.set_ylabel("latent y") if c == 0 else ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8, label="value")
    h, w = latent.shape[-2:]
    fig.suptitle(f"{what}[{step}]: {len(latent)} channels × {h}×{w} = {latent.numel()} numbers", fontsize=11)
    return fig


def latent_parts(trace: Trace, steps=None, channel: int = 0, cmap: str = "RdBu_r"):
    """What a noisy latent is made of, at a few steps: x_t = √ᾱ·x̂₀ (the picture it holds) + √(1−ᾱ)·ε̂ (the noise it holds).

    ε̂ is the UNet's estimate of a unit-variance noise; the latent holds it scaled by √(1−ᾱ), which shrinks to nearly
    0 at the end. Every panel shares one colour scale, so sizes compare across rows and columns.

    Args:
        trace: a full trace of an ε-predicting model (the embedded one, SD 1.5).
        steps: step indices (default: the first, the middle and the last).
        channel: which latent channel to show.
    Returns:
        a Figure, one row per step: x_t, √ᾱ·x̂₀, √(1−ᾱ)·ε̂, each ``[h, w]``, titled with its standard deviation.
    """
    require_trace(trace, "plot.latent_parts", every_step=True)
    if trace.prediction_type != "epsilon":
        raise ValueError(f"plot.latent_parts splits x_t with the predicted noise ε̂; this model predicts {trace.prediction_type!r}")
    steps = [0, trace.num_steps // 2, trace.num_steps - 1] if steps is None else [checks.step_index(k, trace.num_steps) for k in steps]
    channel = checks.whole_number("channel", channel, minimum=0, maximum=trace.latents.shape[1] - 1)
    rows = []
    for k in steps:
        a = trace.alpha_bars[k].float()
        signal, noise = a.sqrt() * trace.pred_x0[k, channel].float(), (1 - a).sqrt() * trace.noise_pred[k, channel].float()
        rows.append((k, [signal + noise, signal, noise]))
    limit = max(float(x.abs().max()) for _, parts in rows for x in parts)
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.2, 2.3 * len(rows)), squeeze=False, layout="constrained")
    names = ["x_t, as the UNet sees it", "√ᾱ·x̂₀: the picture in it", "√(1−ᾱ)·ε̂: the noise in it"]
    for (k, parts), row in zip(rows, axes):
        for name, x, ax in zip(names, parts, row):
            im = ax.imshow(x.numpy(), cmap=cmap, vmin=-limit, vmax=limit)
            ax.set_title(f"{name}\nstep {k}, t = {trace.timesteps[k].item():.0f}: std {x.std():.2f}", fontsize=9)
            ax.set_axis_off()
    fig.colorbar(im, ax=axes, shrink=0.6, label=f"channel {channel} value")
    return fig


def noise_schedule(scheduler, trace: Trace | None = None):
    """β_t, ᾱ_t and the signal-to-noise ratio ᾱ/(1−ᾱ) over the training timesteps, with the timesteps a sampler visits.

    Args:
        scheduler: a diffusers scheduler (or an ``IllustratedPipeline``, whose scheduler is used).
        trace: optional; its ``timesteps`` are marked on the curves.
    Returns:
        a Figure with three panels, each with labelled axes.
    """
    scheduler = getattr(scheduler, "scheduler", scheduler)
    betas, alpha_bar = scheduler.betas.float().numpy(), scheduler.alphas_cumprod.float().numpy()
    t = np.arange(len(betas))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), layout="constrained")
    curves = [(betas, "β_t (variance of the noise added at step t)", "linear"), (alpha_bar, "ᾱ_t (signal variance left)", "linear"),
              (alpha_bar / (1 - alpha_bar), "SNR = ᾱ/(1−ᾱ)", "log")]
    for ax, (y, label, scale) in zip(axes, curves):
        ax.plot(t, y, color="C0")
        ax.set_yscale(scale)
        ax.set_xlabel("timestep t")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if trace is not None:
            visited = trace.timesteps.long().clamp(0, len(t) - 1).numpy()
            ax.plot(visited, y[visited], "o", color="C1", markersize=3, label="visited by the sampler")
            ax.legend(fontsize=8)
    fig.suptitle(f"{type(scheduler).__name__}: {scheduler.config.beta_schedule} schedule over {len(t)} steps", fontsize=11)
    return fig


def latent_roads(traces: list, labels: list[str] | None = None):
    """The roads of several generations from noise to picture, drawn in one plane (a projection fitted to all their
    points together, :func:`~illustrated_sd.lessons.paths.project_roads`): a dot per step, the start a circle, the end
    a square, and in the legend each road's detour (:func:`~illustrated_sd.lessons.paths.detour`: its length over the
    straight line between its ends; 1 = straight).

    Args:
        traces: :class:`Trace` or :class:`FlowTrace` objects whose ``latents`` ``[S + 1, C, h, w]`` share one latent
            shape (tiny-sd 2 and tiny-flux do: the same VAE; from the same seed they start at the same noise).
        labels: a name per trace (default: its model and step count).
    Returns:
        a Figure.
    """
    from ..lessons.paths import detour, project_roads

    traces = list(traces)
    if not traces:
        raise ValueError("pass at least one trace")
    for trace in traces:
        require_trace(trace, "plot.latent_roads", every_step=True, flow=True)
    labels = labels or [f"{trace.model}, {len(trace.latents) - 1} steps" for trace in traces]
    if len(labels) != len(traces):
        raise ValueError(f"{len(labels)} labels for {len(traces)} traces: give one label per trace")
    fig, ax = plt.subplots(figsize=(5.5, 4.5), layout="constrained")
    for k, (trace, points, label) in enumerate(zip(traces, project_roads([t.latents for t in traces]), labels)):
        colour = f"C{k}"
        ax.plot(points[:, 0], points[:, 1], "-o", color=colour, markersize=3, lw=1.2,
                label=f"{label}: detour {detour(trace.latents):.2f}")
        ax.plot(*points[0], "o", color=colour, markersize=9, markerfacecolor="none")
        ax.plot(*points[-1], "s", color=colour, markersize=8)
    ax.set(xlabel="direction of most spread", ylabel="second direction", title="the road from noise (○) to picture (□)")
    ax.legend(fontsize=8)
    return fig
