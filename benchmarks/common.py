"""What several benchmarks share: the pipeline to measure, the order of each timed round, the GPU's busy time."""

import torch

import illustrated_sd as isd


def pipeline_for(layout: str, device: str, steps: int | None) -> tuple:
    """``(pipe, steps)``: the embedded model for ``"tiny"`` (25 steps by default), else the layout with random weights
    (float16 on a GPU; 50 steps by default): speed and sizes do not depend on the weights' values."""
    if layout == "tiny":
        return isd.load_pipeline(device=device), steps or 25
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    with torch.device(device):  # weights drawn where they will live: SDXL's 3.5 B would take minutes on the CPU
        pipe = isd.IllustratedPipeline(isd.build_random_pipeline(layout, dtype=dtype))
    return pipe, steps or 50


def round_order(variants, r: int) -> list:
    """The order in which round ``r`` runs ``variants``: a rotation that moves on every two rounds, reversed in the odd
    rounds, so that over any 2·len(variants) rounds each variant runs first, and last, equally often. (A rotation every
    round that is also reversed every other round cancels itself for two variants: the first would always run first.)

        >>> [round_order(["plain", "traced"], r) for r in range(4)]
        [['plain', 'traced'], ['traced', 'plain'], ['traced', 'plain'], ['plain', 'traced']]
    """
    shift = (r // 2) % len(variants)
    order = list(variants[shift:]) + list(variants[:shift])
    return order if r % 2 == 0 else order[::-1]


def gpu_busy_ms(events) -> float:
    """Milliseconds the GPU ran kernels, from ``torch.profiler``'s ``key_averages()``: the GPU's own events only (with
    CPU activity recorded too, each operator also carries its kernels' time, which would count them twice)."""
    return sum(e.self_device_time_total for e in events  # (as the profiler's own table adds them up)
               if e.device_type != torch.autograd.DeviceType.CPU and not getattr(e, "is_user_annotation", False)) / 1e3
