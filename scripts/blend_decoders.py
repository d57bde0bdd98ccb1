"""Blend two VAE decoders' weights: a pipeline folder whose decoder is (1 − α)·A + α·B, the rest A's.

A fine-tuned network and the one it started from can be averaged weight by weight (Wortsman et al., "Robust
fine-tuning of zero-shot models", 2022: WiSE-FT): the fine-tune started from the other, so both sit in one basin and
the blend keeps much of what each is good at. Here A is the shipped decoder (part 7: right colours and shapes, faint
marks away from the objects) and B a decoder trained on from it against those marks (part 12), which draws a few
more shapes wrong; α is B's share. (For these two the blends found no middle worth having: docs/model-card.md.) Only the decoder's weights blend (``decoder.*`` and ``post_quant_conv.*``); the
encoder is A's, so latents, and every UNet, are unchanged.

    python scripts/blend_decoders.py A_FOLDER B_FOLDER OUT_FOLDER --alpha 0.5 [--force]
"""

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = Path("vae") / "diffusion_pytorch_model.safetensors"
DECODER = ("decoder.", "post_quant_conv.")  # the VAE's tensors that decode; the rest encode


def blend(a: Path, b: Path, out: Path, alpha: float, force: bool = False) -> dict:
    """Write ``out``: a copy of pipeline folder ``a`` whose VAE decoder is (1 − α)·a's + α·b's (each tensor blended in
    float64, stored in a's dtype); a's encoder is kept. ``force``: replace ``out`` if it exists (never ``a`` or ``b``).
    Returns how many decoder tensors there are and how many of them differed between a and b."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"--alpha must be within [0, 1], got {alpha}")
    a, b, out = Path(a), Path(b), Path(out)
    if out.resolve() in (a.resolve(), b.resolve(), *a.resolve().parents, *b.resolve().parents):
        raise ValueError(f"{out} is one of the folders blended (or holds one): write the blend to a new folder")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists: choose a new folder, or pass --force to replace it")
    first, second = load_file(a / WEIGHTS), load_file(b / WEIGHTS)
    if first.keys() != second.keys() or any(first[k].shape != second[k].shape for k in first):
        raise ValueError(f"{a} and {b} hold VAEs of different layouts: only decoders of one architecture blend")
    decoding = [k for k in first if k.startswith(DECODER)]
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(a, out)
    blended = dict(first)
    for k in decoding:
        blended[k] = ((1 - alpha) * first[k].double() + alpha * second[k].double()).to(first[k].dtype)
    save_file(blended, out / WEIGHTS, metadata={"format": "pt"})
    return {"decoder_tensors": len(decoding), "differing": sum(not torch.equal(first[k], second[k]) for k in decoding)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="pipeline folder of decoder A (its other parts are kept)")
    parser.add_argument("b", type=Path, help="pipeline folder of decoder B")
    parser.add_argument("out", type=Path)
    parser.add_argument("--alpha", type=float, default=0.5, help="B's share: 0 gives A, 1 gives B's decoder")
    parser.add_argument("--force", action="store_true", help="replace OUT_FOLDER if it exists")
    args = parser.parse_args()
    print(blend(args.a, args.b, args.out, args.alpha, args.force))
