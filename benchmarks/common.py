"""What several benchmarks share: the pipeline to measure."""

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
