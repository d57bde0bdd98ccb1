"""A model shipped as a *low-rank correction* of another: W' = W + B·A on each linear layer (LoRA, Hu et al. 2021).

tiny-flux-fast is tiny-flux's transformer bent straight by reflow (``illustrated_sd.train.distill``). Its training
changed every weight matrix only by a product B·A of two thin matrices (``B [out, r]``, ``A [r, in]``, rank r ≪ in),
so the folder ships those and tiny-flux's own weights stay where they are: the distilled turbo models of the big
families (LCM-LoRA, the Flux turbo LoRAs) are shipped the same way. At load the products are added into the weights
once ("fused", as diffusers' ``fuse_lora`` does), and what runs is an ordinary ``FluxTransformer2DModel``: no extra
layer, no extra time per step.

The file holds, with diffusers' (PEFT's) key names, ``NAME.lora_A.weight`` and ``NAME.lora_B.weight`` for each
corrected ``torch.nn.Linear`` called NAME, and, under their own names, the tensors trained whole (the guidance
embedder, which the teacher does not have).
"""

from pathlib import Path

import torch
from safetensors.torch import load_file

LOW_RANK_FILE = "low_rank.safetensors"
A, B = ".lora_A.weight", ".lora_B.weight"


def fuse_low_rank(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Add each ``B·A`` of ``state`` into its linear layer's weight (``[out, in] += [out, r] @ [r, in]``, in float32) and
    load the whole tensors it holds; ``model`` itself, changed in place. Everything is checked before anything changes:
    ``KeyError`` naming the key if ``state`` corrects a layer ``model`` lacks, holds a tensor it lacks, or holds an
    ``A`` without its ``B`` (or the reverse); ``ValueError`` if a product's shape is not its weight's."""
    whole = {k: v for k, v in state.items() if not k.endswith((A, B))}
    unexpected = set(whole) - set(model.state_dict())
    if unexpected:
        raise KeyError(f"the low-rank file holds tensors this model lacks: {sorted(unexpected)[:3]}")
    names = {k[: -len(A)] for k in state if k.endswith(A)} | {k[: -len(B)] for k in state if k.endswith(B)}
    layers = dict(model.named_modules())
    for name in sorted(names):
        if name + A not in state or name + B not in state:
            raise KeyError(f"{name}: the file holds one half of its correction B·A ({name + A}, {name + B}); re-export it")
        weight = getattr(layers.get(name), "weight", None)
        if weight is None:
            raise KeyError(f"the low-rank file corrects {name}, a layer this model lacks: it was made for another model")
        a, b = state[name + A], state[name + B]
        if b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(weight.shape):
            raise ValueError(f"{name}: B {tuple(b.shape)} · A {tuple(a.shape)} does not make its weight's shape {tuple(weight.shape)}")
    model.load_state_dict(whole, strict=False)
    for name in names:
        layer = layers[name]
        delta = state[name + B].float().to(layer.weight.device) @ state[name + A].float().to(layer.weight.device)
        layer.weight.data = (layer.weight.data.float() + delta).to(layer.weight.dtype)
    return model


def load_corrected(cls, folder: Path, base: Path) -> torch.nn.Module:
    """``cls`` (a diffusers model class) built from ``folder``'s ``config.json``, given ``base``'s weights (a folder of the
    same class, whose config may lack a part ``folder``'s has: tiny-flux has no guidance embedder) and then
    ``folder``'s low-rank correction. ``FileNotFoundError`` naming the fix if ``folder`` has no correction file;
    ``ValueError`` if base and correction together do not fill the model."""
    folder, base = Path(folder), Path(base)
    if not (folder / LOW_RANK_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {LOW_RANK_FILE} (the correction of {base}'s weights); export it again: "
                                f"python -m illustrated_sd.train export CHECKPOINT {folder.parent}")
    model = cls.from_config(cls.load_config(folder))
    weights = {}
    for path in sorted(base.glob("diffusion_pytorch_model*.safetensors")):  # the base's own weights (shards too)
        weights.update(load_file(path))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    state = load_file(folder / LOW_RANK_FILE)
    if unexpected:
        raise ValueError(f"{base}'s weights do not fit {folder}'s config: unexpected {unexpected[:3]}")
    if set(missing) - set(state):  # every part the base lacks must come whole in the correction
        raise ValueError(f"the correction in {folder} lacks {sorted(set(missing) - set(state))[:3]}, which {base} does not have "
                         f"either; export it again")
    return fuse_low_rank(model, state)
