"""A training checkpoint: one safetensors file per component (fp16, ≤ 15 MiB each) and a JSON log."""

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SHARD_BYTES = 15 * 2**20  # files come back from the GPU machine at most 16 MiB each


def save_weights(module: torch.nn.Module, folder: Path, name: str) -> list[Path]:
    """Write ``module``'s weights as fp16 shards ``name-0.safetensors``, ``name-1…`` of at most 15 MiB."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{name}-*.safetensors"):
        old.unlink()
    shards, current, size = [], {}, 0
    for key, value in module.state_dict().items():
        value = value.detach().to("cpu", torch.float16 if value.is_floating_point() else value.dtype).contiguous()
        nbytes = value.numel() * value.element_size()
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[key], size = value, size + nbytes
    shards.append(current)
    paths = []
    for i, shard in enumerate(shards):
        path = folder / f"{name}-{i}.safetensors"
        save_file(shard, str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)
        paths.append(path)
    return paths


def load_weights(module: torch.nn.Module, folder: Path, name: str) -> bool:
    """Load shards written by :func:`save_weights` into ``module`` (cast to its dtype); False if none."""
    paths = sorted(folder.glob(f"{name}-*.safetensors"))
    if not paths:
        return False
    state = {}
    for path in paths:
        state.update(load_file(path))
    module.load_state_dict(state)
    return True


def read_log(folder: Path) -> dict:
    path = folder / "train_log.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_log(folder: Path, log: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_log.json").write_text(json.dumps(log, indent=1))
