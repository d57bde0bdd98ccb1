"""Recorders: small objects that watch one generation and write what they see into buffers.

They observe and never compute anything the model uses: the UNet keeps its own attention processors
(PyTorch's fused ``scaled_dot_product_attention``), so the image is exactly the one plain diffusers
makes. Each recorder is installed for one call and removed after it (``with`` blocks below), in the
spirit of DAAM's ``trace(pipe)``.
"""

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from einops import rearrange

from .attention_layers import attention_layers, grid_from_queries, layer_grid


@dataclass
class RecordOptions:
    """What a generation records besides the image.

    Attributes:
        cross_attention: record cross-attention probabilities (token heatmaps).
        layers: names of the cross-attention layers to record (see ``pipe.cross_attention_layers``);
            ``None`` records every one of them.
        per_head: keep one map per attention head (``[S, heads, H, W, 77]``) instead of their mean
            (``[S, 1, H, W, 77]``); costs ``heads``× the memory.
        self_attention_resolutions: record self-attention maps of the layers working at these
            resolutions (e.g. ``(8,)`` for the 8×8 layers of SD at 512 px, ``[S, heads, 8, 8, 64]``).
            Off by default: at 64×64 one map is 4096×4096.
        to_cpu: move the recorded maps to the CPU once generation ends (one transfer). ``False`` keeps
            them on the model's device.
        map_dtype: dtype of the stored maps; probabilities are always computed in float32 first.
    """

    cross_attention: bool = True
    layers: list[str] | None = None
    per_head: bool = False
    self_attention_resolutions: tuple[int, ...] = ()
    to_cpu: bool = True
    map_dtype: torch.dtype = torch.float32


class StepRecorder:
    """Keeps one tensor per denoising step for each quantity the loop hands it.

    The loop calls ``recorder(step, latents=..., noise_pred=...)``; the first call allocates a
    ``[num_steps, *shape]`` buffer per name on the tensors' own device, later calls copy into it, so
    recording never waits for the GPU.
    """

    def __init__(self, num_steps: int):
        self.num_steps = num_steps
        self.buffers: dict[str, torch.Tensor] = {}

    def __call__(self, step: int, **tensors: torch.Tensor) -> None:
        for name, x in tensors.items():
            if name not in self.buffers:
                self.buffers[name] = x.new_empty((self.num_steps, *x.shape))
            self.buffers[name][step] = x


class AttentionRecorder:
    """Records the attention probabilities of one diffusers ``Attention`` layer.

    Instead of replacing the layer's processor (which would force the slow path that materializes
    the whole attention matrix for every layer), it hooks the layer's query and key projections,
    keeps their outputs, and once the layer has run computes

        P = softmax(Q Kᵀ / √d)          # [heads, queries, keys]

    for the prompt's half of the batch only. For cross-attention there are just 77 keys, so this is
    cheap; the layer's own output still comes from ``scaled_dot_product_attention``.

    The maps go into ``self.maps``: ``[num_steps, heads or 1, H, W, keys]`` on the model's device.
    """

    def __init__(self, name: str, attn, latent_hw: tuple[int, int], num_steps: int, batch_index: int, options: RecordOptions):
        self.name, self.attn, self.latent_hw = name, attn, latent_hw
        self.num_steps, self.batch_index, self.options = num_steps, batch_index, options
        self.step = 0
        self.maps: torch.Tensor | None = None
        self._query = self._key = None
        self._handles = []

    def install(self) -> None:
        self._handles = [
            self.attn.to_q.register_forward_hook(self._keep_query),
            self.attn.to_k.register_forward_hook(self._keep_key),
            self.attn.register_forward_hook(self._record),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._query = self._key = None

    def _keep_query(self, module, inputs, output):
        self._query = output[self.batch_index]  # [queries, heads·d] of the prompt's half

    def _keep_key(self, module, inputs, output):
        self._key = output[self.batch_index]  # [keys, heads·d]

    def _record(self, module, inputs, output):
        heads = self.attn.heads
        q = rearrange(self._query, "n (h d) -> h n d", h=heads).float()
        k = rearrange(self._key, "m (h d) -> h m d", h=heads).float()
        if self.attn.norm_q is not None:  # SD has none; later models normalise q and k per head
            q, k = self.attn.norm_q(q), self.attn.norm_k(k)
        # scaled_dot_product_attention's default scale is 1/√d with d the head size: use the same
        probs = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # [heads, n, m]
        if not self.options.per_head:
            probs = probs.mean(dim=0, keepdim=True)
        h, w = grid_from_queries(q.shape[1], self.latent_hw)
        probs = rearrange(probs, "h (y x) m -> h y x m", y=h, x=w).to(self.options.map_dtype)
        if self.maps is None:
            self.maps = probs.new_zeros((self.num_steps, *probs.shape))
        self.maps[self.step] = probs
        self._query = self._key = None


@dataclass
class AttentionRecording:
    """The attention recorders of one generation; the loop sets ``step`` before each UNet call."""

    cross: dict[str, AttentionRecorder] = field(default_factory=dict)
    self_: dict[str, AttentionRecorder] = field(default_factory=dict)

    def set_step(self, step: int) -> None:
        for recorder in (*self.cross.values(), *self.self_.values()):
            recorder.step = step

    def maps(self, which: str, to_cpu: bool) -> dict[str, torch.Tensor]:
        recorders = self.cross if which == "cross" else self.self_
        maps = {name: r.maps for name, r in recorders.items() if r.maps is not None}
        return {name: m.cpu() for name, m in maps.items()} if to_cpu else maps


@contextmanager
def record_attention(unet, options: RecordOptions, latent_hw: tuple[int, int], num_steps: int, batch_index: int):
    """Install attention recorders on ``unet`` for the duration of the ``with`` block.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        options: which layers and how (see :class:`RecordOptions`).
        latent_hw: ``(h, w)`` of the latent, to turn a layer's query count back into its grid.
        num_steps: how many UNet calls the loop will make.
        batch_index: which row of the UNet batch is the prompt (1 with classifier-free guidance, whose
            batch is ``[unconditional, prompt]``; 0 without).
    Yields:
        an :class:`AttentionRecording`; the hooks are removed when the block exits, even on error.
    """
    layers = attention_layers(unet)
    recording = AttentionRecording()
    if options.cross_attention:
        wanted = options.layers if options.layers is not None else list(layers["cross"])
        unknown = [name for name in wanted if name not in layers["cross"]]
        if unknown:
            raise ValueError(f"unknown cross-attention layers {unknown}; the UNet has: {list(layers['cross'])}")
        recording.cross = {name: AttentionRecorder(name, layers["cross"][name], latent_hw, num_steps, batch_index, options) for name in wanted}
    if options.self_attention_resolutions:
        for name, attn in layers["self"].items():
            if layer_grid(name, unet, latent_hw)[0] in options.self_attention_resolutions:
                recording.self_[name] = AttentionRecorder(name, attn, latent_hw, num_steps, batch_index, options)
    recorders = [*recording.cross.values(), *recording.self_.values()]
    try:
        for recorder in recorders:
            recorder.install()
        yield recording
    finally:
        for recorder in recorders:
            recorder.remove()

