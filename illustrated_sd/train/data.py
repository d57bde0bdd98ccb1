"""Batches of the synthetic world, drawn on the training device."""

import numpy as np

from ..world import render, sample_scenes


def world_batch(seed, batch_size: int, device, tokenizer, drop_caption: float = 0.0, world: int = 1):
    """One batch of the world of version ``world``: ``images [B, 3, 128, 128]`` in [-1, 1], ``input_ids [B, 77]`` and the scenes.

    ``seed`` (e.g. ``[run_seed, stage, step]``) fixes the batch; with ``drop_caption`` = p, a fraction
    p of captions is replaced by "" so the model also learns the unconditional prediction that
    classifier-free guidance needs.
    """
    scenes = sample_scenes(seed, batch_size, version=world)
    images, _ = render(scenes, device=device)
    captions = [s.caption for s in scenes]
    if drop_caption:
        drop = np.random.default_rng([*seed, 1]).random(batch_size) < drop_caption
        captions = ["" if d else c for c, d in zip(captions, drop)]
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return images, ids.to(device), scenes
