"""Turn a training checkpoint into a standard diffusers pipeline folder (the embedded default model)."""

import json
import shutil
from pathlib import Path

import torch

from ..models.unet import build_random_pipeline
from ..trace.files import publish_folder, scratch_folder_beside
from ..paths import CLIP_TOKENIZER
from ..world import HELD_OUT, known_words, known_words_2
from ..trace.files import load_weights
from .checkpoint import read_log, save_weights, write_log

MAX_SHARD = "14MB"  # keeps every file under 15 MiB


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is a pipeline folder that :func:`export` wrote (it may be replaced by a new export)."""
    return (folder / "illustrated_sd.json").is_file() and (folder / "model_index.json").is_file()


def check_export_target(folder: Path, force: bool = False) -> Path:
    """Refuse (``ValueError``) to export into a file, or into a folder holding anything but an earlier export."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; export writes a folder: choose a new folder name")
    if folder.is_dir() and any(folder.iterdir()) and not is_export(folder) and not force:
        shown = ", ".join(sorted(p.name for p in folder.iterdir())[:4])
        raise ValueError(f"{folder} is not empty ({shown}, …) and is not an earlier export; refusing to replace what is there: "
                         "choose a new folder, or pass --force to replace the folder and everything in it")
    return folder


def export(ckpt: Path, folder: Path, force: bool = False) -> Path:
    """Write ``folder`` (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) from ``ckpt``; from a
    tiny-flux checkpoint, tiny-flux's folder (:func:`~illustrated_sd.train.flux.export_flux`).

    Weights are stored in float16 (half the size); ``load_pipeline`` reads them back as float32.
    ``illustrated_sd.json`` beside them lists the words the model knows and the held-out combinations;
    ``clip/`` keeps the image tower of the contrastive stage for the notebooks; ``train_log.json`` the
    loss curves.

    ``folder`` may be new, empty, or an earlier export, which is replaced in one step once the new one
    is complete; anything else is refused unless ``force``.
    """
    ckpt, folder = Path(ckpt), check_export_target(folder, force)
    if not ckpt.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {ckpt}; train one with python -m illustrated_sd.train run --out {ckpt}")
    from .distill import export_fast
    from .flux import export_flux

    stages = read_log(ckpt)
    if "reflow" in stages:  # tiny-flux-fast: a student transformer on tiny-flux's other parts
        export_fast(ckpt, folder)
        return folder
    if "t5" in stages or "flux" in stages:  # tiny-flux: a transformer and a T5 on tiny-sd 2's shared parts
        export_flux(ckpt, folder)
        return folder
    log = stages
    if "vae_scaling_factor" not in log:
        raise ValueError(f"{ckpt} has no trained VAE (train_log.json has no vae_scaling_factor); run the vae stage first")
    pipe = build_random_pipeline("tiny-sd")
    for module, name in ((pipe.text_encoder, "text_encoder"), (pipe.vae, "vae"), (pipe.unet, "unet")):
        if not load_weights(module, ckpt, name):
            raise FileNotFoundError(f"{ckpt} has no {name} weights; train that stage first")
    pipe.vae.register_to_config(scaling_factor=log["vae_scaling_factor"])
    write_atomically(folder, lambda tmp: _write_folder(pipe, ckpt, tmp))
    return folder


def write_atomically(folder: Path, write) -> None:
    """Call ``write(tmp)`` on a scratch folder beside ``folder``, then put it in ``folder``'s place in one step: a
    failure halfway leaves the earlier export as it was."""
    tmp = scratch_folder_beside(folder)
    try:
        write(tmp)
        publish_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_folder(pipe, ckpt: Path, tmp: Path) -> None:
    from .stages import ClipHead, ImageTower

    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True, max_shard_size=MAX_SHARD)
    for name in ("vocab.json", "merges.txt"):  # the classic SD tokenizer files, for older transformers
        shutil.copy(CLIP_TOKENIZER / name, tmp / "tokenizer" / name)
    clip = tmp / "clip"
    clip.mkdir()
    for module, name in ((ImageTower(), "clip_image_tower"), (ClipHead(pipe.text_encoder.config.hidden_size), "clip_head")):
        if load_weights(module, ckpt, name):
            for path in sorted(ckpt.glob(f"{name}-*.safetensors")):
                shutil.copy(path, clip / path.name)
    shutil.copy(ckpt / "train_log.json", tmp / "train_log.json")
    world = read_log(ckpt).get("world", 1)
    words = known_words_2() if world == 2 else known_words()
    (tmp / "illustrated_sd.json").write_text(json.dumps({"known_words": words, "held_out": HELD_OUT, "image_size": 128, "world": world}, indent=1))


def import_folder(folder: Path, ckpt: Path) -> Path:
    """The inverse of :func:`export`: a checkpoint to resume training from, made from a pipeline folder (tiny-sd's, or
    tiny-flux's: :func:`.flux.import_flux`)."""
    from ..models.loading import load_pipeline

    folder, ckpt = Path(folder), Path(ckpt)
    if not folder.is_dir():
        raise FileNotFoundError(f"no pipeline folder at {folder}; import takes a folder written by export "
                                "(e.g. illustrated_sd/assets/tiny-sd)")
    if not (folder / "train_log.json").is_file():
        raise ValueError(f"{folder} has no train_log.json, so it was not written by export; only those can be trained further")
    if ckpt.exists() and not ckpt.is_dir():
        raise ValueError(f"{ckpt} is a file; the checkpoint is a folder: choose a new folder name")
    if json.loads((folder / "model_index.json").read_text()).get("_class_name") == "FluxPipeline":
        from .flux import import_flux  # tiny-flux: its transformer and T5

        return import_flux(folder, ckpt)
    pipe = load_pipeline(folder).pipeline
    built = build_random_pipeline("tiny-sd").vae.config.norm_num_groups  # what the training stages rebuild it as
    if pipe.vae.config.norm_num_groups != built:  # same weight shapes, another function: it would load without a word
        raise ValueError(f"{folder}'s VAE has {pipe.vae.config.norm_num_groups} GroupNorm groups (python -m "
                         f"illustrated_sd.train.regroup), the training stages build {built}: train it on with "
                         "illustrated_sd.train.regroup, not with train run")
    for module, name in ((pipe.text_encoder, "text_encoder"), (pipe.vae, "vae"), (pipe.unet, "unet")):
        save_weights(module, ckpt, name)
    for path in (folder / "clip").glob("*.safetensors"):
        shutil.copy(path, ckpt / path.name)
    write_log(ckpt, read_log(folder))
    return ckpt
