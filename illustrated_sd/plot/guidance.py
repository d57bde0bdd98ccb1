"""Where classifier-free guidance pulls: the prompt's part of the noise prediction, pixel by pixel."""

import matplotlib.pyplot as plt
import numpy as np

from .. import checks
from ..trace.unet import Trace, require_trace
from .attention import upsample
from .denoising import _pick_steps
from .labels import quoted


def guidance_map(trace: Trace, n: int = 6, cmap: str = "magma"):
    """‖ε_text − ε_uncond‖ at each latent pixel, at ``n`` steps: what the prompt adds to the noise
    prediction, and so where guidance (which multiplies it by ``s``) pushes the picture.

    The norm runs over the latent channels, so each panel is ``[h, w]``, upsampled to the image and laid
    over it in grey. All panels share one colour scale, so the fading of the pull over the steps shows too.

    Args:
        trace: a generation made with guidance (``guidance_scale ≠ 1``), which records both predictions.
        n: how many steps to show, spread from the first to the last. cmap: the colormap.
    Returns:
        a Figure: the final image, then ``n`` panels titled by step and timestep, and a colourbar
        (the norm, in the latent's units).
    """
    require_trace(trace, "plot.guidance_map", every_step=True)
    if trace.noise_pred_uncond is None:
        raise ValueError("this trace has no unconditional prediction: it was made with guidance_scale = 1 (guidance "
                         "off, one UNet row); generate with guidance, e.g. guidance_scale=7.5")
    n = checks.whole_number("n", n, minimum=1, hint="how many steps to show, e.g. 6")
    pull = (trace.noise_pred_text - trace.noise_pred_uncond).float().norm(dim=1)  # [S, h, w]
    steps = _pick_steps(trace.num_steps, n)
    image = np.asarray(trace.image.convert("RGB"))
    fig, axes = plt.subplots(1, len(steps) + 1, figsize=(2.1 * (len(steps) + 1) + 0.6, 2.5), squeeze=False, layout="constrained")
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    top = float(pull[steps].max())
    for ax, step in zip(axes[1:], steps):
        ax.imshow(image.mean(-1), cmap="gray", vmin=0, vmax=255)
        im = ax.imshow(upsample(pull[step], image.shape[:2]), cmap=cmap, alpha=0.7, vmin=0, vmax=top)
        ax.set_title(f"step {step}\nt = {trace.timesteps[step].item():.0f}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(im, ax=axes, shrink=0.8, label="‖ε_text − ε_uncond‖")
    fig.suptitle(f"where the prompt pulls — {quoted(trace.prompt)}, guidance ×{trace.guidance_scale:g}", fontsize=10)
    return fig
