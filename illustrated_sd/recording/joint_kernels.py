"""The joint-attention maps of a real model made by two GPU kernels per layer (Triton), instead of a dozen PyTorch calls.

What :meth:`JointAttentionRecording._quadrants <illustrated_sd.recording.joint_attention.JointAttentionRecording>`
computes with PyTorch, these compute in one pass each: for every query row and kept key column, the probability
``p = exp(q·k·scale + bias − lse)`` (``lse``: the query's log-sum-exp over *all* keys, from the fused kernel), and the
padding's column beside them. Why it matters: Flux-dev runs near the GPU's peak, and the PyTorch road spent its time
less on arithmetic than on a dozen small kernels per layer, each reading and writing ``[heads, N, n]`` float32 tensors
(the products, the exponentials, the padding's sum, the cuts and concatenations); with them a generation took 7–8%
longer. Here the products, exponentials and sums stay in registers and each head's map is written once.

- :func:`image_rows`: the picture's queries against the text → ``[heads, N, n + 1]``: the kept tokens' columns, then
  the padding's (the text's whole share less the kept tokens': every text column's probability summed as it goes).
- :func:`text_rows`: the prompt's kept tokens as queries against every key → ``[heads, n, N]`` (text → image) and
  ``[heads, n, n + 1]`` (text → text, the padding again one column).

One program computes one head's tile of rows (or columns): thousands of programs fill the GPU's processors, where one
program looping over the heads left most of them idle (measured on an H100: a layer's maps took longer than the
PyTorch road's kernels). The mean over heads is then one PyTorch reduction.

Both are exact to float32 rounding (tests compare them with an explicit softmax, on the CPU through Triton's
interpreter). :func:`~illustrated_sd.recording.joint_attention.fused_kernels` says when they are used.
"""

import torch
import triton
import triton.language as tl

# exp(x) = exp2(x · log₂e): the GPU's fast exponential is base 2 (a constexpr: a kernel may read no other globals)
_LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _text_columns(q, start, k_ptr, sk_row, kept_slots, kept_ok, bias_ptr, T, scale, D: tl.constexpr, BLOCK_T: tl.constexpr,
                  HAS_BIAS: tl.constexpr):
    """Queries ``q [rows, D]`` (one head's; ``start [rows]`` = −lse in base 2) against the text's keys (``k_ptr``: the
    head's first text key, ``sk_row`` apart; ``T`` of them): the kept columns' probabilities ``[rows, BLOCK_KEPT]``
    (zeros beyond the kept) and the padding's share ``[rows]`` (every text column's probability summed, less the kept
    columns'). With ``HAS_BIAS``, an edit's bias per text column (``bias_ptr``) is added to the logits first."""
    d = tl.arange(0, D)
    k = tl.load(k_ptr + kept_slots[:, None] * sk_row + d[None, :], mask=kept_ok[:, None], other=0.0)
    logits = tl.dot(q, tl.trans(k)) * (scale * _LOG2E) + start[:, None]
    if HAS_BIAS:  # an edit's additive bias on the text's columns (Reweight, Remove)
        logits += tl.load(bias_ptr + kept_slots, mask=kept_ok, other=0.0)[None, :] * _LOG2E
    p = tl.where(kept_ok[None, :], tl.math.exp2(logits), 0.0)
    share = -tl.sum(p, axis=1)  # the text's whole share less the kept columns': the padding's
    for t0 in range(0, T, BLOCK_T):  # every text column, kept or padding
        cols = t0 + tl.arange(0, BLOCK_T)
        ok = cols < T
        # (new names inside the loop: a name that changes shape, kept columns to a block of BLOCK_T, does not compile)
        k_block = tl.load(k_ptr + cols[:, None] * sk_row + d[None, :], mask=ok[:, None], other=0.0)
        block_logits = tl.dot(q, tl.trans(k_block)) * (scale * _LOG2E) + start[:, None]
        if HAS_BIAS:
            block_logits += tl.load(bias_ptr + cols, mask=ok, other=0.0)[None, :] * _LOG2E
        share += tl.sum(tl.where(ok[None, :], tl.math.exp2(block_logits), 0.0), axis=1)
    return p, tl.maximum(share, 0.0)  # (float32 rounding may leave a hair below zero where the padding takes nothing)


@triton.jit
def _image_rows_kernel(q_ptr, k_ptr, lse_ptr, kept_ptr, bias_ptr, out_ptr,
                       N, T, n, scale,
                       sq_h, sq_n, sk_h, sk_t, sl_h, sl_n, so_h, so_n,
                       HAS_BIAS: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_KEPT: tl.constexpr,
                       BLOCK_T: tl.constexpr):
    # One program: BLOCK_M image queries of one head, against the kept text keys and then every text key.
    h = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    kept_cols = tl.arange(0, BLOCK_KEPT)
    kept_ok = kept_cols < n
    kept_slots = tl.load(kept_ptr + kept_cols, mask=kept_ok, other=0)
    q = tl.load(q_ptr + h * sq_h + rows[:, None] * sq_n + tl.arange(0, D)[None, :], mask=row_ok[:, None], other=0.0)
    # −lse (in base 2) starts each logit, so the subtraction costs no pass of its own
    start = -tl.load(lse_ptr + h * sl_h + rows * sl_n, mask=row_ok, other=0.0) * _LOG2E
    p, padding = _text_columns(q, start, k_ptr + h * sk_h, sk_t, kept_slots, kept_ok, bias_ptr, T, scale, D, BLOCK_T, HAS_BIAS)
    out = out_ptr + h * so_h
    tl.store(out + rows[:, None] * so_n + kept_cols[None, :], p.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & kept_ok[None, :])
    tl.store(out + rows * so_n + n, padding.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _text_rows_kernel(q_ptr, k_ptr, lse_ptr, kept_ptr, image_out_ptr, text_out_ptr,
                      N, T, n, image_start, text_start, scale,
                      sq_h, sq_l, sk_h, sk_l, sl_h, sl_l, si_h, si_n, st_h, st_n,
                      WITH_IMAGE: tl.constexpr, WITH_TEXT: tl.constexpr,
                      D: tl.constexpr, BLOCK_KEPT: tl.constexpr, BLOCK_N: tl.constexpr):
    # Programs (0 … ⌈N / BLOCK_N⌉ − 1, head): a block of image keys each (text → image); the last of each head: the
    # text's keys (text → text: the kept columns, and every text column summed for the padding's share).
    h = tl.program_id(1)
    block = tl.program_id(0)
    d = tl.arange(0, D)
    kept_rows = tl.arange(0, BLOCK_KEPT)
    kept_ok = kept_rows < n
    kept_slots = tl.load(kept_ptr + kept_rows, mask=kept_ok, other=0)
    q = tl.load(q_ptr + h * sq_h + (text_start + kept_slots)[:, None] * sq_l + d[None, :], mask=kept_ok[:, None], other=0.0)
    start = -tl.load(lse_ptr + h * sl_h + (text_start + kept_slots) * sl_l, mask=kept_ok, other=0.0) * _LOG2E
    if block < tl.cdiv(N, BLOCK_N):
        if WITH_IMAGE:
            cols = block * BLOCK_N + tl.arange(0, BLOCK_N)
            ok = cols < N
            k = tl.load(k_ptr + h * sk_h + (image_start + cols)[:, None] * sk_l + d[None, :], mask=ok[:, None], other=0.0)
            # (names of their own in each branch: one name with two shapes in the two branches does not compile)
            p_image = tl.math.exp2(tl.dot(q, tl.trans(k)) * (scale * _LOG2E) + start[:, None])
            tl.store(image_out_ptr + h * si_h + kept_rows[:, None] * si_n + cols[None, :], p_image.to(image_out_ptr.dtype.element_ty),
                     mask=kept_ok[:, None] & ok[None, :])
    elif WITH_TEXT:
        kept_cols = tl.arange(0, BLOCK_KEPT)
        p_text, padding = _text_columns(q, start, k_ptr + h * sk_h + text_start * sk_l, sk_l, kept_slots, kept_ok, q_ptr, T, scale,
                                        D, BLOCK_N, False)
        out = text_out_ptr + h * st_h
        tl.store(out + kept_rows[:, None] * st_n + kept_cols[None, :], p_text.to(text_out_ptr.dtype.element_ty),
                 mask=kept_ok[:, None] & kept_ok[None, :])
        tl.store(out + kept_rows * st_n + n, padding.to(text_out_ptr.dtype.element_ty), mask=kept_ok)


def _block(n: int) -> int:
    """The smallest power of two ≥ ``n`` and ≥ 16 (``tl.dot``'s least tile side)."""
    return max(16, triton.next_power_of_2(n))


def image_rows(q_image: torch.Tensor, k_text: torch.Tensor, lse_image: torch.Tensor, kept: torch.Tensor, out: torch.Tensor,
               bias: torch.Tensor | None = None) -> None:
    """The picture's rows of the joint attention against the text, for every head, written into ``out``.

    ``q_image [heads, N, d]`` and ``k_text [heads, T, d]`` (half precision; the last dimension contiguous),
    ``lse_image [heads, N]`` (float32, over all keys), ``kept [n]`` (int64 text slots), ``bias [T]`` (an edit's, float32)
    → ``out [heads, N, n + 1]``: ``exp(q·k·scale + bias − lse)`` for the kept slots, then the padding's column (the
    other text slots' probabilities summed).
    """
    heads, N, d = q_image.shape
    n, T = len(kept), k_text.shape[1]
    block_m = 64
    _image_rows_kernel[(triton.cdiv(N, block_m), heads)](
        q_image, k_text, lse_image, kept, bias if bias is not None else lse_image, out,
        N, T, n, d ** -0.5,
        q_image.stride(0), q_image.stride(1), k_text.stride(0), k_text.stride(1), lse_image.stride(0), lse_image.stride(1),
        out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, D=d, BLOCK_M=block_m, BLOCK_KEPT=_block(n), BLOCK_T=64, num_warps=4)


def text_rows(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, kept: torch.Tensor, text_len: int, text_first: bool,
              image_out: torch.Tensor | None, text_out: torch.Tensor | None) -> None:
    """The prompt's kept tokens as queries against every key, for every head, written into ``image_out`` and ``text_out``.

    ``q, k [heads, L, d]`` (the whole joint sequence: ``text_len`` text slots first when ``text_first``, else last),
    ``lse [heads, L]``, ``kept [n]`` → ``image_out [heads, n, N]`` (text → image) and ``text_out [heads, n, n + 1]``
    (text → text: the kept slots' columns, then the padding's); either may be ``None`` (not recorded).
    """
    heads, L, d = q.shape
    n, N = len(kept), L - text_len
    image_start, text_start = (text_len, 0) if text_first else (0, N)
    block_n = 64
    unused = lse  # a pointer for an output not asked for (never written)
    image, text = (image_out if image_out is not None else unused), (text_out if text_out is not None else unused)
    _text_rows_kernel[(triton.cdiv(N, block_n) + 1, heads)](
        q, k, lse, kept, image, text,
        N, text_len, n, image_start, text_start, d ** -0.5,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), lse.stride(0), lse.stride(1),
        image.stride(0), image.stride(1), text.stride(0), text.stride(1),
        WITH_IMAGE=image_out is not None, WITH_TEXT=text_out is not None, D=d, BLOCK_KEPT=_block(n), BLOCK_N=block_n, num_warps=4)
