"""The joint-attention maps of a real model in two GPU kernels per layer (Triton), instead of a dozen PyTorch calls.

What :meth:`JointAttentionRecording._quadrants <illustrated_sd.recording.joint_attention.JointAttentionRecording>`
computes with PyTorch, these compute in one pass each: for every query row and kept key column, the probability
``p = exp(q·k·scale + bias − lse)`` (``lse``: the query's log-sum-exp over *all* keys, from the fused kernel), averaged
over the heads, written straight into the recording's buffer. Why it matters: Flux-dev runs near the GPU's peak, and
the PyTorch road spent its time less on arithmetic than on a dozen small kernels per layer, each reading and writing
``[heads, N, n]`` float32 tensors (exp, the head mean, the padding's column, the copies into the buffers): 7–8% of a
generation. Here the products stay in registers; only the head-averaged map is written.

- :func:`image_rows`: the picture's queries against the text → ``[N, n + 1]``: the kept tokens' columns, then the
  padding's (the text's whole share less the kept tokens': every text column's probability summed as it goes).
- :func:`text_rows`: the prompt's kept tokens as queries against every key → ``[n, N]`` (text → image) and
  ``[n, n + 1]`` (text → text, the padding again one column).

Both are exact to float32 rounding (tests compare them with an explicit softmax, on the CPU through Triton's
interpreter). They are used on a CUDA device when Triton is installed (it comes with PyTorch's CUDA builds), for
head-averaged maps; otherwise the PyTorch road runs (:func:`available`).
"""

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634  # exp(x) = exp2(x · log₂e): the GPU's fast exponential is base 2


@triton.jit
def _image_rows_kernel(q_ptr, k_ptr, lse_ptr, kept_ptr, bias_ptr, out_ptr,
                       H, N, T, n, scale, weight,
                       sq_h, sq_n, sk_h, sk_t, sl_h, sl_n, so_n,
                       HAS_BIAS: tl.constexpr, ACCUMULATE: tl.constexpr,
                       D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_KEPT: tl.constexpr, BLOCK_T: tl.constexpr):
    # One program: BLOCK_M image queries, every head, every text key.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    d = tl.arange(0, D)
    kept_cols = tl.arange(0, BLOCK_KEPT)
    kept_ok = kept_cols < n
    kept_slots = tl.load(kept_ptr + kept_cols, mask=kept_ok, other=0)
    kept_bias = tl.zeros([BLOCK_KEPT], tl.float32)
    if HAS_BIAS:
        kept_bias = tl.load(bias_ptr + kept_slots, mask=kept_ok, other=0.0)
    acc_kept = tl.zeros([BLOCK_M, BLOCK_KEPT], tl.float32)  # Σ_heads p over the kept columns
    acc_padding = tl.zeros([BLOCK_M], tl.float32)  # Σ_heads (the text's whole share − the kept columns' share)
    for h in range(H):
        q = tl.load(q_ptr + h * sq_h + rows[:, None] * sq_n + d[None, :], mask=row_ok[:, None], other=0.0)
        # (−lse, in base 2) starts each logit, so the subtraction costs no pass of its own
        start = -tl.load(lse_ptr + h * sl_h + rows * sl_n, mask=row_ok, other=0.0) * _LOG2E
        k = tl.load(k_ptr + h * sk_h + kept_slots[:, None] * sk_t + d[None, :], mask=kept_ok[:, None], other=0.0)
        logits = tl.dot(q, tl.trans(k)) * (scale * _LOG2E) + kept_bias[None, :] * _LOG2E + start[:, None]
        p = tl.where(kept_ok[None, :], tl.math.exp2(logits), 0.0)
        acc_kept += p
        share = -tl.sum(p, axis=1)
        for t0 in range(0, T, BLOCK_T):  # the text's whole share: every text column, kept or padding
            cols = t0 + tl.arange(0, BLOCK_T)
            ok = cols < T
            k = tl.load(k_ptr + h * sk_h + cols[:, None] * sk_t + d[None, :], mask=ok[:, None], other=0.0)
            logits = tl.dot(q, tl.trans(k)) * (scale * _LOG2E) + start[:, None]
            if HAS_BIAS:
                logits += tl.load(bias_ptr + cols, mask=ok, other=0.0)[None, :] * _LOG2E
            share += tl.sum(tl.where(ok[None, :], tl.math.exp2(logits), 0.0), axis=1)
        acc_padding += share
    kept_map = acc_kept / H
    padding = tl.maximum(acc_padding / H, 0.0)  # float32 rounding may leave a hair below zero where padding takes nothing
    kept_at = out_ptr + rows[:, None] * so_n + kept_cols[None, :]
    padding_at = out_ptr + rows * so_n + n
    if ACCUMULATE:  # a compact trace: the running mean over steps and layers
        kept_map = tl.load(kept_at, mask=row_ok[:, None] & kept_ok[None, :]).to(tl.float32) + weight * kept_map
        padding = tl.load(padding_at, mask=row_ok).to(tl.float32) + weight * padding
    tl.store(kept_at, kept_map.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & kept_ok[None, :])
    tl.store(padding_at, padding.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _text_rows_kernel(q_ptr, k_ptr, lse_ptr, kept_ptr, image_out_ptr, text_out_ptr,
                      H, N, T, n, image_start, text_start, scale, weight,
                      sq_h, sq_l, sk_h, sk_l, sl_h, sl_l, so_image, so_text,
                      ACCUMULATE: tl.constexpr, WITH_IMAGE: tl.constexpr, WITH_TEXT: tl.constexpr,
                      D: tl.constexpr, BLOCK_KEPT: tl.constexpr, BLOCK_N: tl.constexpr):
    # Programs 0 … ⌈N / BLOCK_N⌉ − 1: a block of image keys each (text → image); the last program: the text's keys
    # (text → text: the kept columns, and every text column summed for the padding's share).
    d = tl.arange(0, D)
    kept_rows = tl.arange(0, BLOCK_KEPT)
    kept_ok = kept_rows < n
    kept_slots = tl.load(kept_ptr + kept_rows, mask=kept_ok, other=0)
    block = tl.program_id(0)
    image_blocks = tl.cdiv(N, BLOCK_N)
    if block < image_blocks:
        if WITH_IMAGE:
            cols = block * BLOCK_N + tl.arange(0, BLOCK_N)
            ok = cols < N
            acc = tl.zeros([BLOCK_KEPT, BLOCK_N], tl.float32)
            for h in range(H):
                q = tl.load(q_ptr + h * sq_h + (text_start + kept_slots)[:, None] * sq_l + d[None, :], mask=kept_ok[:, None], other=0.0)
                start = -tl.load(lse_ptr + h * sl_h + (text_start + kept_slots) * sl_l, mask=kept_ok, other=0.0) * _LOG2E
                k = tl.load(k_ptr + h * sk_h + (image_start + cols)[:, None] * sk_l + d[None, :], mask=ok[:, None], other=0.0)
                acc += tl.math.exp2(tl.dot(q, tl.trans(k)) * (scale * _LOG2E) + start[:, None])
            result = acc / H
            at = image_out_ptr + kept_rows[:, None] * so_image + cols[None, :]
            if ACCUMULATE:
                result = tl.load(at, mask=kept_ok[:, None] & ok[None, :]).to(tl.float32) + weight * result
            tl.store(at, result.to(image_out_ptr.dtype.element_ty), mask=kept_ok[:, None] & ok[None, :])
    elif WITH_TEXT:
        kept_cols = tl.arange(0, BLOCK_KEPT)
        acc_kept = tl.zeros([BLOCK_KEPT, BLOCK_KEPT], tl.float32)
        acc_padding = tl.zeros([BLOCK_KEPT], tl.float32)
        for h in range(H):
            q = tl.load(q_ptr + h * sq_h + (text_start + kept_slots)[:, None] * sq_l + d[None, :], mask=kept_ok[:, None], other=0.0)
            start = -tl.load(lse_ptr + h * sl_h + (text_start + kept_slots) * sl_l, mask=kept_ok, other=0.0) * _LOG2E
            k = tl.load(k_ptr + h * sk_h + (text_start + kept_slots)[:, None] * sk_l + d[None, :], mask=kept_ok[:, None], other=0.0)
            p = tl.where(kept_ok[None, :], tl.math.exp2(tl.dot(q, tl.trans(k)) * (scale * _LOG2E) + start[:, None]), 0.0)
            acc_kept += p
            share = -tl.sum(p, axis=1)
            for t0 in range(0, T, BLOCK_N):
                cols = t0 + tl.arange(0, BLOCK_N)
                ok = cols < T
                k = tl.load(k_ptr + h * sk_h + (text_start + cols)[:, None] * sk_l + d[None, :], mask=ok[:, None], other=0.0)
                logits = tl.dot(q, tl.trans(k)) * (scale * _LOG2E) + start[:, None]
                share += tl.sum(tl.where(ok[None, :], tl.math.exp2(logits), 0.0), axis=1)
            acc_padding += share
        kept_map = acc_kept / H
        padding = tl.maximum(acc_padding / H, 0.0)
        kept_at = text_out_ptr + kept_rows[:, None] * so_text + kept_cols[None, :]
        padding_at = text_out_ptr + kept_rows * so_text + n
        if ACCUMULATE:
            kept_map = tl.load(kept_at, mask=kept_ok[:, None] & kept_ok[None, :]).to(tl.float32) + weight * kept_map
            padding = tl.load(padding_at, mask=kept_ok).to(tl.float32) + weight * padding
        tl.store(kept_at, kept_map.to(text_out_ptr.dtype.element_ty), mask=kept_ok[:, None] & kept_ok[None, :])
        tl.store(padding_at, padding.to(text_out_ptr.dtype.element_ty), mask=kept_ok)


def _block(n: int) -> int:
    """The smallest power of two ≥ ``n`` and ≥ 16 (``tl.dot``'s least tile side)."""
    return max(16, triton.next_power_of_2(n))


def image_rows(q_image: torch.Tensor, k_text: torch.Tensor, lse_image: torch.Tensor, kept: torch.Tensor, out: torch.Tensor,
               bias: torch.Tensor | None = None, weight: float | None = None) -> None:
    """The picture's rows of the joint attention against the text, head-averaged, written into ``out``.

    ``q_image [heads, N, d]`` and ``k_text [heads, T, d]`` (half precision; the last dimension contiguous),
    ``lse_image [heads, N]`` (float32, over all keys), ``kept [n]`` (int64 text slots), ``bias [T]`` (an edit's, float32)
    → ``out [N, n + 1]``: ``mean_h exp(q·k·scale + bias − lse)`` for the kept slots, then the padding's column (the
    other text slots' probabilities summed). With ``weight``, ``out += weight × that`` instead (a compact trace).
    """
    heads, N, d = q_image.shape
    n, T = len(kept), k_text.shape[1]
    block_m = 32
    _image_rows_kernel[(triton.cdiv(N, block_m),)](
        q_image, k_text, lse_image, kept, bias if bias is not None else lse_image, out,
        heads, N, T, n, d ** -0.5, 0.0 if weight is None else weight,
        q_image.stride(0), q_image.stride(1), k_text.stride(0), k_text.stride(1), lse_image.stride(0), lse_image.stride(1), out.stride(0),
        HAS_BIAS=bias is not None, ACCUMULATE=weight is not None,
        D=d, BLOCK_M=block_m, BLOCK_KEPT=_block(n), BLOCK_T=64, num_warps=4)


def text_rows(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, kept: torch.Tensor, text_len: int, text_first: bool,
              image_out: torch.Tensor | None, text_out: torch.Tensor | None, weight: float | None = None) -> None:
    """The prompt's kept tokens as queries against every key, head-averaged, written into ``image_out`` and ``text_out``.

    ``q, k [heads, L, d]`` (the whole joint sequence: ``text_len`` text slots first when ``text_first``, else last),
    ``lse [heads, L]``, ``kept [n]`` → ``image_out [n, N]`` (text → image) and ``text_out [n, n + 1]`` (text → text: the
    kept slots' columns, then the padding's); either may be ``None`` (not recorded). With ``weight``, ``+=`` as above.
    """
    heads, L, d = q.shape
    n, N = len(kept), L - text_len
    image_start, text_start = (text_len, 0) if text_first else (0, N)
    block_n = 64
    grid = (triton.cdiv(N, block_n) + 1,)
    _text_rows_kernel[grid](
        q, k, lse, kept, image_out if image_out is not None else lse, text_out if text_out is not None else lse,
        heads, N, text_len, n, image_start, text_start, d ** -0.5, 0.0 if weight is None else weight,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), lse.stride(0), lse.stride(1),
        image_out.stride(0) if image_out is not None else 0, text_out.stride(0) if text_out is not None else 0,
        ACCUMULATE=weight is not None, WITH_IMAGE=image_out is not None, WITH_TEXT=text_out is not None,
        D=d, BLOCK_KEPT=_block(n), BLOCK_N=block_n, num_warps=4)
