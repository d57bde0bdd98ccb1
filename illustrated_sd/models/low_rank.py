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
    load the whole tensors it holds; ``model`` itself, changed in place. ``KeyError`` naming the key if ``state`` corrects
    a layer ``model`` does not have or holds an ``A`` without its ``B``."""
    whole = {k: v for k, v in state.items() if not k.endswith((A, B))}
    unexpected = set(whole) - set(model.state_dict())
    if unexpected:
        raise KeyError(f"the low-rank file holds tensors this model lacks: {sorted(unexpected)[:3]}")
    model.load_state_dict(whole, strict=False)
    for key in (k for k in state if k.endswith(A)):
        name = key[: -len(A)]
        if name + B not in state:
            raise KeyError(f"{name + B} is missing beside {key}: a correction is the product of both")
        layer = model.get_submodule(name)
        delta = state[name + B].float() @ state[key].float()
        layer.weight.data = (layer.weight.data.float() + delta).to(layer.weight.dtype)
    return model


def load_corrected(cls, folder: Path, base: Path) -> torch.nn.Module:
    """``cls`` (a diffusers model class) built from ``folder``'s ``config.json``, given ``base``'s weights (a folder of the
    same class, whose config may lack a part ``folder``'s has: tiny-flux has no guidance embedder) and then
    ``folder``'s low-rank correction. ``FileNotFoundError`` if ``folder`` has no correction file."""
    model = cls.from_config(cls.load_config(folder))
    weights = {}
    for path in sorted(Path(base).glob("*.safetensors")):
        weights.update(load_file(path))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    state = load_file(Path(folder) / LOW_RANK_FILE)
    if unexpected or set(missing) - set(state):  # every part the base lacks must come whole in the correction
        raise ValueError(f"{base}'s weights do not fit {folder}'s config: unexpected {unexpected[:3]}, "
                         f"missing {sorted(set(missing) - set(state))[:3]}")
    return fuse_low_rank(model, state)
