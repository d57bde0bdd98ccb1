"""Joint attention, recorded exactly: the four quadrants of every block of a diffusion transformer.

In SD3 and Flux the prompt's tokens and the picture's patches sit in **one sequence**, and every block runs one
attention over all of it: each query (a patch or a token) spreads one softmax over *all* keys, patches and tokens
together. Cut the square of probabilities by where the rows and columns come from and there are four quadrants:

                         keys: text            keys: image
    queries: image   image → text           image → image      (where the picture looks for a word: the
                     (cross-attention's      (self-attention)   cross-attention of SD 1/2, but sharing one
                      analogue)                                  softmax with the picture's own patches)
    queries: text    text → text            text → image       (what a word reads from the picture: new in
                                                                 MMDiT, the prompt's tokens change layer by layer)

The probabilities recorded are the model's own, normalised over all keys. The output is still computed by PyTorch's
fused kernel, which also returns each query's log-sum-exp ``lse = log Σ_j exp(q·k_j·scale)``; then any one
probability is ``p_ij = exp(q_i·k_j·scale − lse_i)``, exact, computed only for the columns we keep (the prompt's
tokens, not every key). Padding slots (T5 pads to 256 or 512) are summed into one column: how much attention the
padding absorbs is itself worth seeing. That sum is the text's whole share less the kept tokens', and the text's
whole share is exp(lse_text − lse), where lse_text comes from the fused kernel run over the text keys alone.

A small model (the embedded tiny-flux: 64 patches, 64 text slots) takes a shorter road. There each PyTorch call costs
more than its arithmetic (a dozen calls per layer slowed the generation by a tenth), so each layer only keeps the
prompt's queries, keys and log-sum-exps, and when the loop ends every step's and layer's maps are made in one batch,
the padding's share from all the text's columns at once. On a real model those products would be gigabytes, so each
layer makes its maps as it runs: on a GPU with Triton by two kernels (:mod:`~illustrated_sd.recording.joint_kernels`:
each head's products, exponentials and padding sum in registers, its maps written once, then the mean over heads),
elsewhere by the PyTorch calls of :meth:`JointAttentionRecording._quadrants`, which say the same in plain tensors.

The processors below are diffusers' ``FluxAttnProcessor`` and ``JointAttnProcessor2_0`` written out line for line,
the attention call replaced by :func:`fused_attention` plus the recording; they are installed for one generation
(:func:`recording_joint_attention`) and the model's own processors are put back afterwards.
"""

import os
import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import _get_qkv_projections

from .recorders import to_host

QUADRANTS = ("image_to_text", "text_to_image", "text_to_text", "image_to_image")
# The most probabilities the small road may make at the end of a generation (steps × layers × heads × the image's rows
# against the text, and the prompt's tokens against everything); above it each layer makes its maps as it runs.
# 2²⁴ float32 numbers are 64 MiB: tiny-flux's 25 steps make 1.2 million; one step of Flux-dev at 256² would make 300 million.
SMALL_ROAD_LIMIT = 1 << 24


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q·kᵀ/√d + mask)·v`` exactly as ``F.scaled_dot_product_attention`` computes it, and each query's log-sum-exp.

    ``q, k, v``: ``[B, heads, L, d]``; ``mask``: an additive ``[B, 1, L, L]`` (an edit's bias) or ``None``. Returns
    ``out [B, heads, L, d]`` (bit for bit ``F.scaled_dot_product_attention``'s: the same fused kernel, called directly so
    that it also hands back its statistics) and ``lse [B, heads, L]`` (float32, the mask included).
    """
    key = (q.device, q.dtype, tuple(q.shape), tuple(k.shape), mask is None)
    kernel = _chosen.get(key)
    if kernel is None:
        kernel = _chosen[key] = _kernel_of_sdpa(q, k, v, mask)
    out, lse = kernel(q, k, v, mask)
    return out, lse[..., :q.shape[2]].reshape(q.shape[:-1]).float()


def _flash(q, k, v, mask):
    if mask is not None:
        raise NotImplementedError("flash attention takes no mask")
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[:2]


# PyTorch picks one of several fused kernels for F.scaled_dot_product_attention (on a Hopper GPU cuDNN's, or flash's,
# or the memory-efficient one; on the CPU its own flash kernel). Each also returns the log-sum-exp when called
# directly. Which one SDPA picks depends on the device, dtype and shapes, so the first call of each shape asks:
# the kernel whose output equals SDPA's, bit for bit, is the one SDPA runs.
_KERNELS = {
    "cudnn": lambda q, k, v, m: torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, m, True, 0.0, False, False)[:2],
    "flash": _flash,
    "efficient": lambda q, k, v, m: torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, m, True)[:2],
    "flash_cpu": lambda q, k, v, m: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=m)[:2],
}
_chosen = {}


def _explicit_lse(q, k, v, mask):
    """No kernel matched: SDPA's own output, and the log-sum-exp computed beside it (exact, one more product)."""
    logits = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    lse = torch.logsumexp(logits if mask is None else logits + mask.float(), dim=-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), lse


def _kernel_of_sdpa(q, k, v, mask):
    """The entry of ``_KERNELS`` that computes what ``F.scaled_dot_product_attention`` computes for these inputs."""
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    names = ("flash_cpu",) if q.device.type == "cpu" else ("cudnn", "flash", "efficient")
    for name in names:
        try:
            if torch.equal(_KERNELS[name](q, k, v, mask)[0], reference):
                return _KERNELS[name]
        except (RuntimeError, NotImplementedError):  # not built here, or not for this dtype, head size or mask
            continue
    return _explicit_lse


def kernels_in_use() -> dict:
    """Which kernel each attention shape seen so far runs (for benchmarks): ``{"bfloat16 [1, 24, 4608, 128]": "cudnn", …}``."""
    names = {kernel: name for name, kernel in _KERNELS.items()} | {_explicit_lse: "sdpa + explicit log-sum-exp"}
    return {f"{str(dtype).removeprefix('torch.')} {list(q)}×{list(k)}{'' if plain else ' with a mask'}": names[kernel]
            for (_, dtype, q, k, plain), kernel in _chosen.items()}


def probabilities(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``p = exp(q·kᵀ·scale + bias − lse)``: rows of the attention's softmax for these queries and keys only, in float32.

    ``q [heads, n, d]``, ``k [heads, m, d]``, ``lse [heads, n]`` (over *all* keys), ``bias`` broadcastable to ``[n, m]``
    (an edit's, or ``None``) → ``[heads, n, m]``.
    """
    scale = q.shape[-1] ** -0.5
    start = -lse[..., None]  # [heads, n, 1]: the product is added to it, so the − lse costs no pass of its own
    logits = None
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        try:  # one kernel, as the fused kernel makes its products: half-precision inputs, float32 sums, no float32 copies
            logits = torch.baddbmm(start, q, k.transpose(-1, -2), alpha=scale, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # a torch without baddbmm's out_dtype
            pass
    if logits is None:
        logits = torch.baddbmm(start, q.float(), k.float().transpose(-1, -2), alpha=scale)
    return (logits if bias is None else logits.add_(bias)).exp_()  # in place: one [heads, n, m] float32 tensor, not two


def fused_kernels(q: torch.Tensor, kept: int):
    """:mod:`~illustrated_sd.recording.joint_kernels` when its kernels can record this attention (``q [B, heads, L, d]``),
    else ``False`` (PyTorch's road): on a CUDA device with Triton installed, half-precision queries, a head size that is
    a power of two from 16 to 256, and at most 128 kept text tokens (the tile of kept columns a kernel holds at once).
    ``ISD_FUSED_RECORDING=0`` turns them off (to compare the two roads)."""
    d = q.shape[-1]
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and 16 <= d <= 256 and d & (d - 1) == 0
            and kept <= 128 and q.stride(-1) == 1 and os.environ.get("ISD_FUSED_RECORDING", "1") != "0"):
        return False
    try:
        from . import joint_kernels
    except ImportError:  # no Triton (a CPU build of PyTorch)
        return False
    return joint_kernels


class JointAttentionRecording:
    """The joint-attention maps of one generation, in buffers on the model's device.

    Args:
        layers: names of the recorded attention layers, in the order the transformer runs them.
        text_len, image_len: slots of the text and of the image in the joint sequence.
        text_first: Flux puts the text first (``[text, image]``), SD3 last (``[image, text]``).
        kept: ``[n]`` the text slots kept as their own columns (the prompt's real tokens); the others are padding,
            summed into one column after them.
        steps: denoising steps; quadrants: which of :data:`QUADRANTS` to record; per_head: keep every head (else their mean).
        compact: add every step's and layer's head-mean up as the loop goes (a compact trace, for prompt sets): the
            buffers are then ``[1, 1, 1, rows, columns]`` in float32, the mean over all steps, layers and heads.
        small: take the small road when its products stay under :data:`SMALL_ROAD_LIMIT` (the loops turn it off under
            edits: a Swap writes into the maps as the loop goes); the maps are then made by :meth:`finish`.
    The prompt's rows are the last of each attention call's batch (CFG puts them after the unconditional rows).

    Buffers (``h`` = heads or 1, ``n`` kept text slots, ``N`` image tokens, ``L`` layers):
        image_to_text ``[S, L, h, N, n + 1]``, text_to_image ``[S, L, h, n, N]``, text_to_text ``[S, L, h, n, n + 1]``,
        image_to_image ``[S, L, h, N, N]``.
    """

    def __init__(self, layers: list[str], text_len: int, image_len: int, text_first: bool, kept: torch.Tensor, steps: int,
                 quadrants: tuple[str, ...], per_head: bool, heads: int, dtype: torch.dtype, device, compact: bool = False,
                 small: bool = True):
        self.layers, self.text_first, self.per_head, self.compact = list(layers), text_first, per_head and not compact, compact
        self.text_len, self.image_len = text_len, image_len
        self.kept = kept.to(device)  # an index on the device: selecting with it never waits for the GPU
        self.step, self.active = 0, True
        n, N, h, L = len(kept), image_len, heads if self.per_head else 1, len(layers)
        # The small road (see the module's text) when its products, every step's and layer's at once, stay small
        self.small = small and steps * L * heads * (N * text_len + n * (text_len + N)) <= SMALL_ROAD_LIMIT
        self.pending = []  # on the small road, the prompt's row of each call: (step, layer, q, k, lse)
        self.fused = None  # undecided until the first call: then the GPU kernels' module, or False for PyTorch's road
        shapes = {"image_to_text": (N, n + 1), "text_to_image": (n, N), "text_to_text": (n, n + 1), "image_to_image": (N, N)}
        if compact:  # one running mean per quadrant: each call adds its share, 1 / (steps × layers)
            self.weight = 1 / (steps * L)
            self.buffers = {q: torch.zeros(1, 1, 1, *shapes[q], dtype=torch.float32, device=device) for q in quadrants}
        else:
            self.buffers = {q: torch.zeros(steps, L, h, *shapes[q], dtype=dtype, device=device) for q in quadrants}

    def split(self, x: torch.Tensor, dim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` with the joint sequence along ``dim`` (``[B, heads, text + image, ...]`` by default) → its text part and
        its image part."""
        text, image = (slice(None, self.text_len), slice(self.text_len, None)) if self.text_first else \
            (slice(self.image_len, None), slice(None, self.image_len))
        cut = (slice(None),) * (dim % x.dim())
        return x[cut + (text,)], x[cut + (image,)]

    def record(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lse: torch.Tensor,
               bias: torch.Tensor | None = None) -> None:
        """One attention call of layer ``layer``: ``q, k, v [B, heads, L, d]``, ``lse [B, heads, L]``; the last row is the
        prompt's. ``bias [T]``: an edit's additive bias on the image queries' text logits (see :mod:`illustrated_sd.recording.flow_edits`)."""
        if not self.active:
            return
        if self.small:  # the small road: keep the prompt's row; finish() makes every map at once
            self.pending.append((self.step, layer, q[-1], k[-1], lse[-1]))
            return
        if self.fused is None:  # the first call decides: the GPU kernels when they apply (see fused_kernels)
            self.fused = fused_kernels(q, len(self.kept))
        if self.fused:
            try:  # (a variant compiles when first needed: an edit's bias, say, may first come at a later step)
                return self._record_fused(layer, q[-1], k[-1], lse[-1], bias)
            except Exception as err:  # a Triton too old for the kernels, a GPU it cannot compile for, …: this call's
                # maps are not written yet (the kernels write scratch tensors), so PyTorch's road makes them below
                first_line = (str(err).strip().splitlines() or [""])[0]
                warnings.warn(f"the recording's GPU kernels failed ({type(err).__name__}: {first_line}); recording with "
                              "PyTorch instead (slower; ISD_FUSED_RECORDING=0 skips the kernels)")
                self.fused = False
        for quadrant, p in self._quadrants(q[-1:], k[-1:], lse[-1:], v[-1:], bias).items():  # [1, h, rows, columns]
            if self.compact:
                self.buffers[quadrant][0, 0].add_(p[0], alpha=self.weight)
            else:
                self.buffers[quadrant][self.step, layer] = p[0]

    def _record_fused(self, layer: int, q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, bias: torch.Tensor | None) -> None:
        """The prompt's row of one call (``q, k [heads, L, d]``, ``lse [heads, L]``) recorded by the GPU kernels of
        :mod:`~illustrated_sd.recording.joint_kernels` (image → image, if asked, by PyTorch): each head's maps into a
        float32 scratch ``[heads, rows, columns]``, then the head mean (or every head) into the buffers."""
        heads, n, N = q.shape[0], len(self.kept), self.image_len
        (_, q_image), (k_text, k_image), (_, l_image) = (self.split(x, dim=1) for x in (q, k, lse))
        scratch = lambda rows, columns: torch.empty(heads, rows, columns, dtype=torch.float32, device=q.device)  # noqa: E731
        made = {quadrant: scratch(*shape) for quadrant, shape in
                (("image_to_text", (N, n + 1)), ("text_to_image", (n, N)), ("text_to_text", (n, n + 1))) if quadrant in self.buffers}
        if "image_to_text" in made:
            self.fused.image_rows(q_image, k_text, l_image, self.kept, made["image_to_text"], None if bias is None else bias.float())
        if "text_to_image" in made or "text_to_text" in made:
            self.fused.text_rows(q, k, lse, self.kept, self.text_len, self.text_first, made.get("text_to_image"), made.get("text_to_text"))
        if "image_to_image" in self.buffers:
            made["image_to_image"] = probabilities(q_image, k_image, l_image)  # [heads, N, N]
        for quadrant, p in made.items():
            if self.compact:
                self.buffers[quadrant][0, 0, 0].add_(p.mean(0), alpha=self.weight)
            else:
                self.buffers[quadrant][self.step, layer].copy_(p if self.per_head else p.mean(0, keepdim=True))

    def finish(self, copy_to_host: bool = True) -> None:
        """The loops call it as the denoising ends: the small road's maps are made now (all steps and layers in one
        batch), and with ``copy_to_host`` the maps set off for the CPU without waiting
        (:func:`~illustrated_sd.recording.recorders.to_host`), so that the copy runs while the VAE decodes instead of after it."""
        if self.pending:
            steps, layers, q, k, lse = zip(*self.pending)
            self.pending = []
            at = (torch.tensor(steps, device=self.kept.device), torch.tensor(layers, device=self.kept.device))
            for quadrant, p in self._quadrants(torch.stack(q), torch.stack(k), torch.stack(lse)).items():  # [calls, h, rows, columns]
                if self.compact:  # each call adds weight × its map
                    self.buffers[quadrant][0, 0].add_(p.sum(0), alpha=self.weight)
                else:
                    self.buffers[quadrant][at] = p.to(self.buffers[quadrant].dtype)
        if copy_to_host:
            self.buffers = {quadrant: to_host(maps) for quadrant, maps in self.buffers.items()}

    def _quadrants(self, q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, v: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None) -> dict:
        """``q, k [C, heads, L, d]``, ``lse [C, heads, L]``: the prompt's rows of ``C`` attention calls (one layer as it
        runs, or every step's and layer's at the end on the small road) → each recorded quadrant ``[C, h, rows, columns]``,
        made from the products it needs and no more. The padding's column is the text's whole share less the kept
        tokens'; with ``v`` that share comes from the fused kernel run over the text keys alone (a real model, see the
        module's text), without it from all the text's columns at once (a small model: cheaper than a second kernel)."""
        calls, heads = q.shape[:2]
        (q_text, q_image), (k_text, k_image), (l_text, l_image) = (self.split(x) for x in (q, k, lse))
        flat = lambda x: x.flatten(0, 1)  # noqa: E731  [C, heads, ...] → [C × heads, ...]: one batch for the products
        # Each quadrant is [C, heads, rows, columns]; without per_head the heads are averaged as soon as a tensor is
        # made (``fold``), so the later sums and cuts touch 1/heads of the data. The mean is linear, so folding first
        # gives the same padding column as folding last.
        fold = lambda p: p.unflatten(0, (calls, heads)) if self.per_head else p.unflatten(0, (calls, heads)).mean(1, keepdim=True)  # noqa: E731
        made = {}
        if "image_to_text" in self.buffers:
            if v is None:  # every text column, then what is not kept summed: [C, h, N, T]
                columns = fold(probabilities(flat(q_image), flat(k_text), flat(l_image)))
                kept = columns.index_select(-1, self.kept)
                share = columns.sum(-1)
            else:  # the kept columns directly; the text's whole share exp(lse_text − lse) without the [heads, N, T] square
                k_kept = k_text.index_select(2, self.kept)
                kept = fold(probabilities(flat(q_image), flat(k_kept), flat(l_image), None if bias is None else bias[self.kept]))
                text_mask = None if bias is None else bias.to(q.dtype).expand(calls, 1, self.image_len, self.text_len).contiguous()
                share = fold(flat(torch.exp(fused_attention(q_image, k_text, self.split(v)[0], text_mask)[1] - l_image)))  # [C, h, N]
            made["image_to_text"] = torch.cat([kept, (share - kept.sum(-1)).clamp_min(0)[..., None]], dim=-1)
        if "text_to_image" in self.buffers or "text_to_text" in self.buffers:
            # The prompt's few tokens as queries (padding's own queries are not shown), against every key at once: one
            # product over the whole joint sequence, then cut into its text and image columns
            rows = fold(probabilities(flat(q_text.index_select(2, self.kept)), flat(k), flat(l_text.index_select(2, self.kept))))
            text_columns, made["text_to_image"] = self.split(rows, dim=-1)  # [C, h, n, T], [C, h, n, N]
            kept = text_columns.index_select(-1, self.kept)
            made["text_to_text"] = torch.cat([kept, (text_columns.sum(-1) - kept.sum(-1)).clamp_min(0)[..., None]], dim=-1)
        if "image_to_image" in self.buffers:
            made["image_to_image"] = fold(probabilities(flat(q_image), flat(k_image), flat(l_image)))
        return {quadrant: p for quadrant, p in made.items() if quadrant in self.buffers}


def attend(processor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The joint attention ``[B, heads, L, d]`` → ``[B, heads, L, d]`` as a recording processor runs it: the fused kernel
    with an edit's mask, the recording of its probabilities, then a Swap's rows put in (each only when the processor has
    one: ``processor.edits``, ``processor.recording`` at ``processor.layer``)."""
    if processor.edits is None and processor.layer is not None and not processor.recording.active:
        return F.scaled_dot_product_attention(query, key, value)  # a pass the recording skips (true CFG's negative one)
    mask, bias = processor.edits.mask(processor.name) if processor.edits is not None else (None, None)
    out, lse = fused_attention(query, key, value, mask)
    if processor.layer is not None:
        processor.recording.record(processor.layer, query, key, value, lse, bias)
    if processor.edits is not None:  # a Swap's steps: the picture's rows read the text with the source's maps
        out = processor.edits.swap(processor.name, query, key, value, out, processor.recording, processor.layer)
    return out


class FluxRecordingProcessor:
    """``FluxAttnProcessor`` (diffusers' Flux attention, double- and single-stream), its attention recorded (as layer
    ``layer`` of ``recording``, when given), changed by ``edits`` (a reweight's mask, a swap's source maps) and read by
    the ConceptAttention stream (``concepts``, block ``block``)."""

    def __init__(self, recording: JointAttentionRecording | None, layer: int | None, concepts=None, block: int | None = None,
                 edits=None, name: str | None = None):
        self.recording, self.layer, self.concepts, self.block, self.edits, self.name = recording, layer, concepts, block, edits, name

    def joint_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """The joint attention, ``[B, heads, L, d]`` each, as :func:`attend` runs it (the fused kernel, an edit's mask,
        the recording); a subclass may compute it otherwise (``train.flux.GroundedAttention`` does, in the open, to keep
        its probabilities for training)."""
        return attend(self, query, key, value)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key, value = (x.unflatten(-1, (-1, attn.head_dim)) for x in (query, key, value))  # [B, L, heads, d]
        query, key = attn.norm_q(query), attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:  # a double-stream block: the text has projections of its own
            encoder_query, encoder_key, encoder_value = (x.unflatten(-1, (-1, attn.head_dim))
                                                         for x in (encoder_query, encoder_key, encoder_value))
            encoder_query, encoder_key = attn.norm_added_q(encoder_query), attn.norm_added_k(encoder_key)
            query, key, value = (torch.cat([e, x], dim=1) for e, x in ((encoder_query, query), (encoder_key, key), (encoder_value, value)))
        if image_rotary_emb is not None:  # RoPE, as the model applies it: the maps are of the rotated queries and keys
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        query, key, value = (x.permute(0, 2, 1, 3) for x in (query, key, value))  # [B, heads, L, d]
        out = self.joint_attention(query, key, value)
        if self.concepts is not None:  # the picture's keys, values and outputs, for the concepts to read
            text = encoder_hidden_states.shape[1]
            self.concepts.attend(self.block, attn, key[-1:, :, text:], value[-1:, :, text:], out[-1:, :, text:])
        hidden_states = out.permute(0, 2, 1, 3).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return hidden_states
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())


class SD3RecordingProcessor:
    """``JointAttnProcessor2_0`` (diffusers' SD3 / SD3.5 joint attention), its attention recorded (as layer ``layer`` of
    ``recording``, when given), changed by ``edits`` and read by the ConceptAttention stream (``concepts``, block ``block``).
    SD3.5's image-only ``attn2`` keeps diffusers' processor: it has no text to record, edit or show the concepts."""

    def __init__(self, recording: JointAttentionRecording | None, layer: int | None, edits=None, name: str | None = None,
                 concepts=None, block: int | None = None):
        self.recording, self.layer, self.edits, self.name = recording, layer, edits, name
        self.concepts, self.block = concepts, block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        residual, batch = hidden_states, hidden_states.shape[0]
        heads = lambda x: x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)  # noqa: E731  [B, heads, L, d]
        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        text_q, text_k, text_v = (heads(p(encoder_hidden_states)) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        if attn.norm_added_q is not None:
            text_q = attn.norm_added_q(text_q)
        if attn.norm_added_k is not None:
            text_k = attn.norm_added_k(text_k)
        query, key, value = torch.cat([query, text_q], dim=2), torch.cat([key, text_k], dim=2), torch.cat([value, text_v], dim=2)
        out = attend(self, query, key, value)
        if self.concepts is not None:  # the picture's keys, values and outputs (the image first in SD3), for the concepts
            image = residual.shape[1]
            self.concepts.attend(self.block, attn, key[-1:, :, :image], value[-1:, :, :image], out[-1:, :, :image])
        hidden_states = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[-1]).to(query.dtype)
        hidden_states, encoder_hidden_states = hidden_states[:, :residual.shape[1]], hidden_states[:, residual.shape[1]:]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return attn.to_out[1](attn.to_out[0](hidden_states)), encoder_hidden_states


def joint_layers(transformer) -> dict:
    """The joint-attention modules of a Flux or SD3 transformer, by name, in the order they run.

    Flux: ``double.0 …`` (``transformer_blocks``: text and image with projections each) then ``single.0 …``
    (``single_transformer_blocks``: one stream). SD3: ``joint.0 …``. (SD3.5's extra image-only attention,
    ``attn2`` of its first blocks, is self-attention of the picture and is not recorded.)
    """
    if hasattr(transformer, "single_transformer_blocks"):
        return {**{f"double.{i}": b.attn for i, b in enumerate(transformer.transformer_blocks)},
                **{f"single.{i}": b.attn for i, b in enumerate(transformer.single_transformer_blocks)}}
    return {f"joint.{i}": b.attn for i, b in enumerate(transformer.transformer_blocks)}


@contextmanager
def recording_joint_attention(transformer, recording: JointAttentionRecording | None, concepts=None, edits=None):
    """Install processors on ``transformer``'s joint-attention layers for one ``with`` block: on those that ``recording``
    records (none when it is ``None``), those ``edits`` (a :class:`~illustrated_sd.recording.flow_edits.FlowEditPlan`) change, and
    the blocks with text projections (Flux's double-stream blocks, every SD3 block) when a ConceptAttention stream
    (``concepts``, see :mod:`illustrated_sd.recording.concepts`) reads them. The model's own processors (and no hooks) are
    there again afterwards, also after an error."""
    modules = joint_layers(transformer)
    flux = hasattr(transformer, "single_transformer_blocks")
    recorded = {} if recording is None else {name: i for i, name in enumerate(recording.layers)}
    prefix = "double" if flux else "joint"
    streamed = {f"{prefix}.{i}": i for i in range(len(transformer.transformer_blocks))} if concepts is not None else {}
    edited = [] if edits is None else edits.layers
    names = [name for name in modules if name in recorded or name in streamed or name in edited]
    originals = {name: modules[name].processor for name in names}
    hooks = []
    try:
        for name in names:
            block = streamed.get(name)
            stream = concepts if block is not None else None
            if flux:
                processor = FluxRecordingProcessor(recording, recorded.get(name), stream, block, edits, name)
            else:
                processor = SD3RecordingProcessor(recording, recorded.get(name), edits, name, stream, block)
            modules[name].set_processor(processor)
        for index, block in enumerate(transformer.transformer_blocks if concepts is not None else []):
            hooks.append(block.register_forward_pre_hook(
                lambda module, args, kwargs, index=index: concepts.before_block(index, kwargs["temb"]), with_kwargs=True))
        yield recording
    finally:
        for hook in hooks:
            hook.remove()
        for name, original in originals.items():
            modules[name].set_processor(original)
