"""A training checkpoint: one safetensors file per component (fp16, ≤ 15 MiB each) and a JSON log."""

import json
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..trace.files import atomic_write

SHARD_BYTES = 15 * 2**20  # files come back from the GPU machine at most 16 MiB each


def save_weights(module: torch.nn.Module | dict, folder: Path, name: str) -> list[Path]:
    """Write ``module``'s weights (or a state dict, e.g. an EMA's) as fp16 shards ``name-0.safetensors``, ``name-1…`` of at most 15 MiB.

    Every new shard is written to a temporary file first; only when all are complete do they replace
    the old shards (one rename each), and only then are old shards beyond the new count deleted. A
    failure while writing leaves the old weights as they were.
    """
    folder.mkdir(parents=True, exist_ok=True)
    old = set(folder.glob(f"{name}-*.safetensors"))
    shards, current, size = [], {}, 0
    state = module if isinstance(module, dict) else module.state_dict()
    for key, value in state.items():
        value = value.detach().to("cpu", torch.float16 if value.is_floating_point() else value.dtype).contiguous()
        nbytes = value.numel() * value.element_size()
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[key], size = value, size + nbytes
    shards.append(current)
    paths = [folder / f"{name}-{i}.safetensors" for i in range(len(shards))]
    with ExitStack() as all_or_none:  # the atomic writes finish (rename) together, when every shard is written
        for path, shard in zip(paths, shards):
            save_file(shard, all_or_none.enter_context(atomic_write(path, "checkpoint shard")))
    for stale in old - set(paths):
        stale.unlink()
    return paths


def read_log(folder: Path) -> dict:
    path = folder / "train_log.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable training log ({err}); restore it, or train into a new --out folder") from None


def write_log(folder: Path, log: dict) -> None:
    """Write the training log atomically: a crash mid-write must not cost the loss curves of every stage."""
    with atomic_write(folder / "train_log.json", "training log") as tmp:
        tmp.write_text(json.dumps(log, indent=1))
