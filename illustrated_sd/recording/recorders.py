"""Recorders: small objects that watch one generation and write what they see into buffers.

They observe and never compute anything the model uses: the UNet keeps its own attention processors
(PyTorch's fused ``scaled_dot_product_attention``), so the image is exactly the one plain diffusers
makes. Each recorder is installed for one call and removed after it (``with`` blocks below), in the
spirit of DAAM's ``trace(pipe)``.
"""

from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from einops import rearrange

from .. import checks
from .attention_layers import attention_layers, grid_from_queries, layer_grid
from .budget import check_budget, estimate_trace
from ..trace.unet import spread_steps


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
        map_dtype: dtype of the stored maps; ``None`` = the model's own (float16 maps for a float16 model,
            which halves the trace). The softmax is always computed in float32 first.
        compact: a small trace for prompt sets (``illustrated-sd batch``): the attention is added up on the
            model's device as the loop goes, into one map per resolution (the mean over every step, layer and
            head), and latents, noise and x̂₀ are kept at ``keep_steps`` steps only (see ``Trace.kept_steps``).
            SD 1.5 at 512², 50 steps: under 2 MiB instead of 209 (the image included).
        keep_steps: how many steps a compact trace keeps (spread evenly, the first and the last among them).
        quadrants: for a diffusion transformer (SD3, Flux), which quadrants of its joint attention to record:
            ``"image_to_text"`` (where the picture looks for each word), ``"text_to_image"`` (what each word reads
            from the picture), ``"text_to_text"``, and ``"image_to_image"`` (the picture's self-attention: N² per
            layer, off by default). See :mod:`illustrated_sd.recording.joint_attention`.
        memory_budget_gib: the most a trace may take (GiB, on the host, or on the GPU with
            ``to_cpu=False``). The pipeline estimates the recording before it starts and refuses one
            that would not fit, saying what to change (see :mod:`illustrated_sd.recording.budget`). ``None``: no limit.
    """

    compact: bool = False
    keep_steps: int = 3
    cross_attention: bool = True
    layers: list[str] | None = None
    per_head: bool = False
    self_attention_resolutions: tuple[int, ...] = ()
    to_cpu: bool = True
    map_dtype: torch.dtype | None = None
    memory_budget_gib: float | None = 2.0
    quadrants: tuple[str, ...] = ("image_to_text", "text_to_image", "text_to_text")

    def __post_init__(self):
        # Checked here, when the options are made, so a typo fails at once and not deep inside a generation.
        for name in ("cross_attention", "per_head", "to_cpu", "compact"):
            checks.flag(name, getattr(self, name))
        self.keep_steps = checks.whole_number("keep_steps", self.keep_steps, minimum=1, hint="steps a compact trace keeps, e.g. 5")
        if self.layers is not None:
            if isinstance(self.layers, str) or not all(isinstance(n, str) for n in self.layers):
                raise TypeError(f"layers must be a list of layer names (got {self.layers!r}), e.g. "
                                "layers=[pipe.cross_attention_layers[0]]; None records every layer")
            self.layers = list(self.layers)
            if not self.layers:
                raise ValueError("layers=[] records no layer; to record no maps say RecordOptions(cross_attention=False)")
        if isinstance(self.self_attention_resolutions, (str, int)) or not hasattr(self.self_attention_resolutions, "__iter__"):
            raise TypeError(f"self_attention_resolutions must be a tuple of grid sizes such as (8,) (got {self.self_attention_resolutions!r})")
        self.self_attention_resolutions = tuple(checks.whole_number("self_attention_resolutions", r, minimum=1)
                                                for r in self.self_attention_resolutions)
        if self.map_dtype is not None:
            checks.float_dtype("map_dtype", self.map_dtype)
        known = ("image_to_text", "text_to_image", "text_to_text", "image_to_image")
        if isinstance(self.quadrants, str) or not hasattr(self.quadrants, "__iter__") or not set(self.quadrants) <= set(known):
            raise ValueError(f"quadrants must be a tuple of {known} (got {self.quadrants!r}), e.g. quadrants=('image_to_text',)")
        self.quadrants = tuple(q for q in known if q in self.quadrants)
        if self.memory_budget_gib is not None:
            self.memory_budget_gib = checks.real_number("memory_budget_gib", self.memory_budget_gib, hint="in GiB, e.g. 2.0; None for no limit")
            if self.memory_budget_gib <= 0:
                raise ValueError(f"memory_budget_gib must be > 0 GiB (got {self.memory_budget_gib:g}); None for no limit")

        if self.compact and (self.per_head or self.self_attention_resolutions):
            raise ValueError("a compact trace keeps one head-averaged map per resolution and no self-attention; "
                             "drop per_head and self_attention_resolutions, or compact")

    def dtype_for(self, model_dtype: torch.dtype) -> torch.dtype:
        """The dtype maps are stored in for a model of ``model_dtype``."""
        return self.map_dtype or model_dtype


class StepRecorder:
    """Keeps one tensor per denoising step for each quantity the loop hands it.

    The loop calls ``recorder(step, latents=..., noise_pred=...)``; the first call allocates a
    ``[num_steps, *shape]`` buffer per name on the tensors' own device, later calls copy into it, so
    recording never waits for the GPU.
    """

    def __init__(self, num_steps: int, kept: list[int] | None = None):
        self.num_steps = num_steps
        # a compact trace keeps a few steps: step → its row in the buffers (the others are not kept)
        self.rows = {step: row for row, step in enumerate(kept if kept is not None else range(num_steps))}
        self.buffers: dict[str, torch.Tensor] = {}

    def __call__(self, step: int, **tensors: torch.Tensor) -> None:
        row = self.rows.get(step)
        if row is None:
            return
        for name, x in tensors.items():
            if name not in self.buffers:
                self.buffers[name] = x.new_empty((len(self.rows), *x.shape))
            self.buffers[name][row] = x


class AttentionRecorder:
    """Watches one diffusers ``Attention`` layer: keeps the outputs of its query and key projections.

    Instead of replacing the layer's processor (which would force the slow path that materializes
    the whole attention matrix in every layer), it hooks ``to_q`` and ``to_k``; the layer's own output
    still comes from the fused ``scaled_dot_product_attention``. The probabilities are computed after
    the UNet call, for all layers of one shape at once (:meth:`AttentionRecording.collect`).

    The hooks only keep a reference (no tensor operation, no copy) and do not know which step it is:
    that keeps them cheap and lets them be traced into a ``torch.compile``-d UNet without recompiling.
    """

    def __init__(self, name: str, attn):
        self.name, self.attn = name, attn
        self.query = self.key = None  # [batch, queries, heads·d], [batch, keys, heads·d]
        self._handles = []

    def install(self) -> None:
        if self.attn.norm_q is not None:  # SD's UNets have none; later models (SD3, Flux) normalise q and k
            raise NotImplementedError(f"{self.name} normalises its queries and keys; recording such layers is not supported")
        self._handles = [self.attn.to_q.register_forward_hook(self._keep_query),
                         self.attn.to_k.register_forward_hook(self._keep_key)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.query = self.key = None

    def _keep_query(self, module, inputs, output):
        self.query = output

    def _keep_key(self, module, inputs, output):
        self.key = output


def heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[L, n, heads·d]`` → ``[L·heads, n, d]`` in float32, made contiguous by the same single copy."""
    return rearrange(x, "l n (h d) -> l h n d", h=heads).to(torch.float32, memory_format=torch.contiguous_format).flatten(0, 1)


def attention_probabilities(query: torch.Tensor, key: torch.Tensor | None, heads: int, per_head: bool,
                            keys: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q Kᵀ / √d) for ``L`` layers of one shape at once.

    Args:
        query: ``[L, n, heads·d]`` (``n`` = pixels), key: ``[L, m, heads·d]`` (``m`` = tokens), any float dtype.
        per_head: keep the heads apart, else average them.
        keys: the keys already as ``heads_first(key, heads)`` (``[L·heads, m, d]``), to reuse them.
    Returns:
        ``[L, heads or 1, n, m]`` in float32; each row sums to 1 over the ``m`` keys.
    """
    # float32 before the product: fp16 logits near 50 are off by ~0.03, which is 3% after exp()
    q = heads_first(query, heads)
    k = keys if keys is not None else heads_first(key, heads)
    # scaled_dot_product_attention's default scale is 1/√d with d the head size: use the same
    logits = torch.baddbmm(q.new_empty(()), q, k.transpose(1, 2), beta=0, alpha=q.shape[-1] ** -0.5)  # [(l h), n, m]
    probs = rearrange(torch.softmax(logits, dim=-1), "(l h) n m -> l h n m", h=heads)
    return probs if per_head else probs.mean(dim=1, keepdim=True)


_copy_streams: dict[torch.device, "torch.cuda.Stream"] = {}


def to_host(x: torch.Tensor) -> torch.Tensor:
    """Start copying ``x`` to the CPU without waiting for it.

    From a GPU, ``non_blocking=True`` copies into page-locked memory (which PyTorch caches between calls),
    about twice as fast as ordinary memory, and returns at once. The copy runs on a stream of its own: on
    the model's stream it would queue behind nothing but hold up what comes after it (the VAE), while a GPU
    copies and computes at the same time when the two are on different streams. Whoever reads the result
    must first wait for the copies (:func:`wait_for_host_copies`; the pipeline does so once, at the end of
    ``IllustratedPipeline.__call__``).
    """
    if x.device.type != "cuda":
        return x.to("cpu")  # already there (or a device without streams): nothing to overlap
    stream = _copy_streams.setdefault(x.device, torch.cuda.Stream(x.device))
    stream.wait_stream(torch.cuda.current_stream(x.device))  # the copy starts once x has been written
    with torch.cuda.stream(stream):
        host = x.to("cpu", non_blocking=True)
    x.record_stream(stream)  # x's memory is not handed out again before the copy has read it
    return host


def wait_for_host_copies(device: torch.device) -> None:
    """Wait until every :func:`to_host` copy from ``device`` (and the work on its current stream) has landed."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
        stream = _copy_streams.get(torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device()))
        if stream is not None:
            stream.synchronize()


@dataclass
class AttentionRecording:
    """The attention recorders of one generation and their maps; the loop calls ``collect(step)`` after each UNet call.

    Layers at the same resolution have queries and keys of the same shape, so they are stacked and go
    through one product, one softmax and one copy into a shared ``[S, L, heads or 1, H, W, keys]``
    buffer: SD 1.5's 16 cross-attention layers make 4 groups. Every launch saved counts, because in
    eager mode the GPU can only be as busy as Python keeps it.
    """

    options: RecordOptions
    latent_hw: tuple[int, int]
    num_steps: int
    rows: slice  # the rows of the UNet batch that hold the prompts (after the unconditional ones, with guidance)
    cross: dict[str, AttentionRecorder] = field(default_factory=dict)
    self_: dict[str, AttentionRecorder] = field(default_factory=dict)
    buffers: dict[tuple[str, ...], torch.Tensor] = field(default_factory=dict)  # layer names → maps
    # edits (edits.py) change the attention the model uses; this turns the plain maps into the used ones
    adjust: Callable[[tuple[str, ...], int, torch.Tensor], torch.Tensor] | None = None
    _keys: dict[tuple[str, ...], torch.Tensor] = field(default_factory=dict)  # cross-attention keys, prepared once
    grid_layers: dict[str, int] = field(default_factory=dict)  # compact: layers averaged into each grid's map

    def collect(self, step: int) -> None:
        """Turn the queries and keys the UNet call just left into maps, filed under ``step``."""
        groups = defaultdict(list)
        for r in (*self.cross.values(), *self.self_.values()):
            if r.query is not None and r.key is not None:
                groups[(r.attn.heads, tuple(r.query.shape), tuple(r.key.shape), r.query.dtype)].append(r)
        for (heads, *_), recorders in groups.items():
            names = tuple(r.name for r in recorders)
            # The prompt does not change during a generation, so neither do the cross-attention keys:
            # they are prepared once and reused at every step. Self-attention keys change with the image.
            keys = self._keys.get(names)
            if len(recorders) == 1:
                query, key = recorders[0].query[None, self.rows], recorders[0].key[None, self.rows]
            else:  # [L, B, queries, heads·d] and [L, B, keys, heads·d] of the prompts' rows (only those are copied)
                query = torch.stack([r.query[self.rows] for r in recorders])
                key = None if keys is not None else torch.stack([r.key[self.rows] for r in recorders])
            batch = query.shape[1]  # B prompts: each layer's rows go through the product side by side
            query, key = query.flatten(0, 1), (None if key is None else key.flatten(0, 1))
            if keys is None and all(name in self.cross for name in names):
                keys = self._keys[names] = heads_first(key, heads)
            probs = attention_probabilities(query, key, heads, self.options.per_head, keys=keys)
            if self.adjust is not None:
                probs = self.adjust(names, step, probs)
            y, x = grid_from_queries(query.shape[1], self.latent_hw)
            probs = rearrange(probs, "(l b) h (y x) m -> l b h y x m", b=batch, y=y, x=x)
            if self.options.compact:  # added up as the loop goes: [1, L, B, 1, H, W, keys] in float32, averaged in maps()
                if names not in self.buffers:
                    self.buffers[names] = probs.new_zeros((1, *probs.shape))
                self.buffers[names][0] += probs
            else:
                if names not in self.buffers:
                    self.buffers[names] = probs.new_zeros((self.num_steps, *probs.shape), dtype=self.options.dtype_for(query.dtype))
                self.buffers[names][step] = probs  # one copy for the group; it converts to the buffer's dtype
            for r in recorders:
                r.query = r.key = None

    def maps(self, which: str, to_cpu: bool, tokens: int | None = None, item: int = 0) -> dict[str, torch.Tensor]:
        """``{layer: [S, heads or 1, H, W, keys]}`` of prompt ``item`` for ``which`` = ``"cross"`` or ``"self"``, in the UNet's order.

        A compact recording gives ``{"H×W": [1, 1, H, W, tokens + 1]}`` instead (``tokens``: the prompt's, markers
        included): the mean over every step, layer and head at that grid, the padding slots summed into the last key.
        """
        wanted = self.cross if which == "cross" else self.self_
        if self.options.compact:
            return self._resolution_means(which, to_cpu, tokens, item)
        maps = {name: buffer[:, i, item].contiguous() for names, buffer in self.buffers.items() for i, name in enumerate(names) if name in wanted}
        maps = {name: maps[name] for name in wanted if name in maps}
        return {name: to_host(m) for name, m in maps.items()} if to_cpu else maps


    def _resolution_means(self, which: str, to_cpu: bool, tokens: int, item: int) -> dict[str, torch.Tensor]:
        """A compact recording's maps (see :meth:`maps`)."""
        if which != "cross":
            return {}
        sums, counts, dtype = {}, defaultdict(int), None
        for names, buffer in self.buffers.items():  # [1, L, B, 1, H, W, keys] summed over the steps
            grid = f"{buffer.shape[4]}×{buffer.shape[5]}"
            sums[grid] = sums.get(grid, 0) + buffer[:, :, item].sum(dim=1)
            counts[grid] += len(names)
            dtype = self.options.dtype_for(next(iter(self.cross.values())).attn.to_q.weight.dtype)
        # the slots after the end marker all hold padding: their sum is what a reader asks of them
        means = {grid: torch.cat([total[..., :tokens], total[..., tokens:].sum(-1, keepdim=True)], dim=-1) / (counts[grid] * self.num_steps)
                 for grid, total in sums.items()}
        means = {grid: m.to(dtype) for grid, m in means.items()}
        self.grid_layers = dict(counts)  # how many layers each map averages: the trace weighs them so
        means = dict(sorted(means.items(), key=lambda kv: -kv[1].shape[2]))  # finest grid first
        return {grid: to_host(m) for grid, m in means.items()} if to_cpu else means


@contextmanager
def record_attention(unet, options: RecordOptions, latent_hw: tuple[int, int], num_steps: int, rows: slice):
    """Install attention recorders on ``unet`` for the duration of the ``with`` block.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        options: which layers and how (see :class:`RecordOptions`).
        latent_hw: ``(h, w)`` of the latent, to turn a layer's query count back into its grid.
        num_steps: how many UNet calls the loop will make (all with the same ``encoder_hidden_states``:
            the cross-attention keys are prepared once per recording).
        rows: the rows of the UNet batch that hold the prompts: ``slice(B, 2B)`` with classifier-free guidance,
            whose batch is ``[unconditional × B, prompt × B]``, ``slice(0, B)`` without.
    Yields:
        an :class:`AttentionRecording`; the hooks are removed when the block exits, even on error.
    """
    layers = attention_layers(unet)
    recording = AttentionRecording(options, latent_hw, num_steps, rows)
    if options.cross_attention:
        wanted = options.layers if options.layers is not None else list(layers["cross"])
        unknown = [name for name in wanted if name not in layers["cross"]]
        if unknown:
            raise ValueError(f"unknown cross-attention layers {unknown}; the UNet has: {list(layers['cross'])}")
        recording.cross = {name: AttentionRecorder(name, layers["cross"][name]) for name in wanted}
    if options.self_attention_resolutions:
        for name, attn in layers["self"].items():
            if layer_grid(name, unet, latent_hw)[0] in options.self_attention_resolutions:
                recording.self_[name] = AttentionRecorder(name, attn)
    recorders = [*recording.cross.values(), *recording.self_.values()]
    try:
        for recorder in recorders:
            recorder.install()
        yield recording
    finally:
        for recorder in recorders:
            recorder.remove()


@dataclass
class Recording:
    """What one generation's loop hands its observations to: ``steps(i, name=tensor, ...)`` per step,
    ``attention.collect(i)`` after each UNet call."""

    steps: StepRecorder
    attention: AttentionRecording
    kept_steps: list[int] | None = None  # a compact recording's steps (None: every step)


@contextmanager
def recording(unet, text_encoders, options: RecordOptions, latent_shape: tuple[int, int, int], num_steps: int,
              guided: bool, context_tokens: int, prompt_tokens: int | None = None, batch: int = 1):
    """Everything one generation records, installed for one ``with`` block and removed after it.

    First the bill: a recording that would not fit ``options.memory_budget_gib`` is refused before any UNet
    call (``TraceBudgetError`` names what to change). Then the step recorder and the attention recorders.

    Args:
        text_encoders: the pipeline's text encoder(s), whose sizes the bill needs.
        latent_shape: ``(C, h, w)`` of one latent.
        num_steps: UNet calls the loop will make.
        guided: the UNet batch is ``[unconditional, prompt]`` (classifier-free guidance), else ``[prompt]``.
        context_tokens: how many text tokens the UNet reads (77 for CLIP).
        prompt_tokens: the longest prompt's tokens, markers included (what a compact trace keeps maps of).
        batch: prompts generated together (the UNet's batch is ``2 × batch`` with guidance).
    Yields:
        a :class:`Recording`.
    """
    check_budget(estimate_trace(unet, text_encoders, options, latent_shape, num_steps, guided, context_tokens, prompt_tokens, batch),
                 options)
    kept = spread_steps(num_steps, options.keep_steps) if options.compact else None
    rows = slice(batch, 2 * batch) if guided else slice(0, batch)
    with record_attention(unet, options, latent_shape[-2:], num_steps, rows) as attention:
        yield Recording(StepRecorder(num_steps, kept), attention, kept)
