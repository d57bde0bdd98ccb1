"""Getting a pipeline: the embedded default, a local diffusers folder, or a Hugging Face Hub id."""

import hashlib
import importlib
import json
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import (DiffusionPipeline, FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline,
                       StableDiffusionXLPipeline)

from .low_rank import load_corrected
from .unet import build_random_pipeline
from .. import checks
from ..loops.unet import SCHEDULERS, IllustratedPipeline
from ..paths import EMBEDDED, TINY_SD

PIPELINE_FILES = "model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/"
# model_index.json names the pipeline class; these are the ones IllustratedPipeline drives.
# (SD3 / SD3.5 and Flux are diffusion transformers, drawn by the loops of illustrated_sd.loops.flow)
PIPELINE_CLASSES = {cls.__name__: cls for cls in (StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline,
                                                  StableDiffusion3Pipeline, FluxPipeline)}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "name" or "owner/name"


def model_folder(model: str | os.PathLike | None) -> Path:
    """Where ``model`` is on disk: the embedded default for ``None``, an embedded model's folder for its name, else the
    path itself (for a Hub id, a path that does not exist)."""
    if model is None:
        return TINY_SD
    if isinstance(model, str) and model in EMBEDDED:
        return EMBEDDED[model][0]
    return Path(model).expanduser()


def train_timesteps(model: str | os.PathLike | None = None) -> int | None:
    """How many timesteps ``model``'s scheduler was trained with (the most steps a generation may take), read
    from its ``scheduler/scheduler_config.json`` without loading anything; ``None`` when not on disk (a Hub id)."""
    folder = model_folder(model)
    try:
        return int(json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["num_train_timesteps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def model_defaults(model: str | os.PathLike | None = None) -> dict:
    """The steps and guidance a model is meant to run with, read from its folder's ``model_index.json`` (and Flux's
    ``transformer/config.json``) without loading anything: ``{"steps": 25, "guidance": 7.5}`` for SD 1/2 and SDXL
    (and for a Hub id, which is not on disk), 28 and 7.0 for SD3, 28 and 3.5 (the distilled guidance) for Flux-dev,
    4 steps for Flux-schnell (which reads no guidance)."""
    folder = model_folder(model)
    own = _folder_info(folder).get("defaults", {})
    if own:  # a model of ours says how it runs (tiny-flux: 25 steps, real CFG 4: its guidance_option)
        return {"steps": own.get("num_inference_steps", 25), "guidance": own.get("true_cfg_scale", own.get("guidance_scale", 7.5))}
    try:
        name = json.loads((folder / "model_index.json").read_text()).get("_class_name")
        if name == "FluxPipeline":
            distilled = json.loads((folder / "transformer" / "config.json").read_text()).get("guidance_embeds", True)
            return {"steps": 28, "guidance": 3.5} if distilled else {"steps": 4, "guidance": 3.5}
        if name == "StableDiffusion3Pipeline":
            return {"steps": 28, "guidance": 7.0}
    except (OSError, ValueError, AttributeError):
        pass
    return {"steps": 25, "guidance": 7.5}


def weights_sha256(model: str | os.PathLike, part: str | None = None) -> str:
    """One SHA-256 over the weight files of one part of ``model`` (``part``: ``"vae"``, ``"unet"``, …; default the
    denoiser, ``transformer/`` or ``unet/``): every ``.safetensors`` in name order, and for a part shipped as a
    low-rank correction (``corrects``) its base's files first. It names which weights a measurement saw, so that a
    notebook can check a file of figures against the model it loads. ``FileNotFoundError`` if there are none."""
    folder = model_folder(model)
    parts = [part] if part else ["transformer", "unet"]
    corrects = _folder_info(folder).get("corrects", {})
    files = []
    for name in parts:
        if name in corrects:
            files += sorted((folder.parent / corrects[name] / name).glob("*.safetensors"))
        files += sorted((folder / name).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no weights ({' or '.join(parts)}/*.safetensors) in {folder}")
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as stream:  # in chunks: a real model's file is gigabytes
            for chunk in iter(lambda: stream.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to pass instead."""


def embedded_models() -> dict[str, str]:
    """The models that ship inside the package, ``{name: what it is}``, for :func:`load_pipeline` (``load_pipeline()``
    is ``load_pipeline("tiny-sd")``); a model whose folder is missing from this copy is left out."""
    return {name: line for name, (folder, line) in EMBEDDED.items() if folder.is_dir()}


def load_pipeline(model: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, scheduler: str | None = None) -> IllustratedPipeline:
    """Load a Stable Diffusion pipeline, ready to trace.

    Args:
        model: ``None`` for the embedded default model (offline, CPU-sized); an embedded model's name
            (``"tiny-sd"``, ``"tiny-flux"``: :func:`embedded_models`); a local folder in
            diffusers layout (``model_index.json``, ``unet/``, ``vae/``, …); or a Hub id such as
            ``"stable-diffusion-v1-5/stable-diffusion-v1-5"`` (needs a network or a cached copy).
            SD 1/2, SDXL (base, or a refiner for img2img), SD3 / SD3.5 and Flux are recognized from
            ``model_index.json`` (the last two give a :class:`~illustrated_sd.loops.flow.FlowPipeline`).
        device: where the model runs: ``"cpu"``, ``"cuda"``, …
        dtype: ``torch.float32`` (default, exact) or ``torch.float16`` / ``torch.bfloat16`` on a GPU.
        scheduler: optionally swap the sampler (see ``IllustratedPipeline.set_scheduler``).
    Returns:
        an :class:`IllustratedPipeline`.
    Raises:
        FileNotFoundError: ``model`` looks like a path and nothing is there.
        ModelLoadError: the folder is not a complete pipeline, or a Hub id cannot be fetched.
    Example:
        >>> pipe = load_pipeline()                                   # embedded default
        >>> pipe = load_pipeline("path/to/sd-1-5", device="cuda", dtype=torch.float16)
        >>> pipe = load_pipeline("path/to/sdxl-base", device="cuda", dtype=torch.float16)   # pipe.is_sdxl
    """
    device = checks.device(device)
    dtype = checks.float_dtype("dtype", dtype)
    checks.text("scheduler", scheduler, allow_none=True, hint=f"one of {sorted(SCHEDULERS)}")
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a folder path or a Hub id (got {type(model).__name__}); None loads the embedded model")
    known_words = world = embedded = None
    if isinstance(model, str) and model in EMBEDDED:  # an embedded model by name ("tiny-sd" is the default's)
        if not EMBEDDED[model][0].is_dir():
            raise ModelLoadError(f"the embedded model {model!r} is not in this copy of the package ({EMBEDDED[model][0]} is "
                                 f"missing); train and export it (docs/model-card.md and docs/model-card-tiny-flux.md say how), "
                                 f"or load another: {embedded_models()}")
        embedded, model = model, None if model == "tiny-sd" else EMBEDDED[model][0]
    if model is None:
        with _quiet():
            pipe = _load_default()
        name = "illustrated_sd tiny-sd" if TINY_SD.is_dir() else "illustrated_sd random tiny-sd1 (untrained)"
        known_words, world = _model_info(TINY_SD)
    else:
        path = Path(model).expanduser()
        if path.is_dir():
            with _quiet():
                pipe = _load_folder(path, dtype)
            known_words, world = _model_info(path)
        elif path.exists() or not HUB_ID.match(str(model)):
            raise FileNotFoundError(f"no model folder at {path}; pass a folder in diffusers layout ({PIPELINE_FILES}) or a Hub id")
        else:
            pipe = _load_hub(str(model), dtype)
        name = f"illustrated_sd {embedded}" if embedded else str(model)
    if model is None and dtype != torch.float32:
        pipe = pipe.to(dtype=dtype)  # folders are loaded in `dtype` already
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if not isinstance(pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline)):
        illustrated = IllustratedPipeline(pipe, name=name)  # SD3 or Flux: a FlowPipeline
        if model is not None and Path(model).expanduser().is_dir():  # a model of ours says how it is meant to run
            illustrated.defaults = _folder_info(Path(model).expanduser()).get("defaults", {})
            illustrated.world = world
    else:
        illustrated = IllustratedPipeline(pipe, name=name, known_words=known_words, world=world)
    if scheduler is not None:
        illustrated.set_scheduler(scheduler)
    return illustrated


@contextmanager
def _quiet():
    """Loading a local folder takes a second: no progress bars or advice about optional packages."""
    levels = diffusers.utils.logging.get_verbosity(), transformers.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(levels[0])
        transformers.logging.set_verbosity(levels[1])
        diffusers.utils.logging.enable_progress_bar()
        transformers.logging.enable_progress_bar()


def _model_info(folder: Path) -> tuple[set[str] | None, int | None]:
    """The vocabulary and world version of a model trained by illustrated_sd (its ``illustrated_sd.json``), else Nones."""
    info = folder / "illustrated_sd.json"
    if not info.is_file():
        return None, None
    data = json.loads(info.read_text())
    return set(data["known_words"]), data.get("world", 1)


def _load_default() -> StableDiffusionPipeline:
    if TINY_SD.is_dir():
        return _load_folder(TINY_SD, torch.float32)
    return build_random_pipeline("tiny-sd1", seed=0)


def _pipeline_class(class_name: str | None, where) -> type:
    """The diffusers class that ``model_index.json``'s ``_class_name`` names, if IllustratedPipeline can drive it."""
    if class_name not in PIPELINE_CLASSES:
        raise ModelLoadError(f"{where} holds a {class_name}, which illustrated_sd does not trace; it traces "
                             f"{', '.join(PIPELINE_CLASSES)} (SD 1/2, SDXL, SD3 and Flux checkpoints in diffusers format)")
    return PIPELINE_CLASSES[class_name]


def _class_kwargs(cls: type) -> dict:
    """SD 1/2 pipelines come without their safety checker (it would download a model; SDXL has none)."""
    return dict(safety_checker=None, requires_safety_checker=False) if cls is StableDiffusionPipeline else {}


def _load_folder(path: Path, dtype: torch.dtype) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"{path} is not a diffusers pipeline folder: model_index.json is missing (expected {PIPELINE_FILES})")
    try:
        class_name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ModelLoadError(f"{path}/model_index.json is not a JSON object ({err}); re-download or re-export the pipeline") from err
    cls = _pipeline_class(class_name, path)
    shared = _shared_components(path, dtype)  # its own errors already say what to do
    try:
        pipe = cls.from_pretrained(path, dtype=dtype, local_files_only=True, **_class_kwargs(cls), **shared)
    except Exception as err:  # diffusers raises OSError, ValueError, safetensors errors, … for a damaged folder
        raise ModelLoadError(
            f"could not load the pipeline in {path}: {type(err).__name__}: {err}. "
            f"Check that the folder is complete ({PIPELINE_FILES}, each with its config and weights) and not cut short."
        ) from err
    if isinstance(pipe, (FluxPipeline, StableDiffusion3Pipeline)):
        if pipe.vae.config.shift_factor is None:  # a VAE made for SD 1/2 (tiny-flux's): these pipelines read (z − shift)·scale
            pipe.vae.register_to_config(shift_factor=0.0)
        size = _folder_info(path).get("image_size")
        if size:  # the pipelines' default side is 1024 px (128 latent pixels); an embedded model's is its own
            pipe.default_sample_size = size // pipe.vae_scale_factor
    return pipe


def _folder_info(path: Path) -> dict:
    """A folder's ``illustrated_sd.json`` (what illustrated_sd wrote beside a model it trained), or ``{}``."""
    try:
        return json.loads((path / "illustrated_sd.json").read_text())
    except (OSError, ValueError):
        return {}


def _shared_components(path: Path, dtype: torch.dtype) -> dict:
    """The components a folder takes from a sibling model instead of shipping its own (tiny-flux takes tiny-sd's VAE,
    CLIP tower and tokenizer: ``"shares": {"vae": "tiny-sd", …}`` in its ``illustrated_sd.json``), loaded with the classes
    that its ``model_index.json`` names; they go to ``from_pretrained`` as keyword arguments, the diffusers way.
    A folder may also ship a part as a low-rank correction of a sibling's (tiny-flux-fast's transformer is tiny-flux's plus
    ``B·A`` per layer: ``"corrects": {"transformer": "tiny-flux"}``; :mod:`illustrated_sd.models.low_rank`)."""
    info = _folder_info(path)
    shares, corrects = info.get("shares", {}), info.get("corrects", {})
    if not shares and not corrects:
        return {}
    _check_bases(path, info)
    index = json.loads((path / "model_index.json").read_text())
    parts = {}
    for name, sibling in {**shares, **corrects}.items():
        folder = path.parent / sibling / name
        if not folder.is_dir():
            raise ModelLoadError(f"{path} takes its {name} from {folder}, which is missing; "
                                 f"keep the {sibling} folder beside it (the package ships both)")
        library, class_name = index[name]
        cls = getattr(importlib.import_module(library), class_name)
        part = load_corrected(cls, path / name, folder) if name in corrects else cls.from_pretrained(folder)
        parts[name] = part.to(dtype) if isinstance(part, torch.nn.Module) else part
    return parts


def correction_bases(info: dict) -> dict[str, str]:
    """``{part: SHA-256}`` of the sibling weights a folder's correction was made for, from its ``illustrated_sd.json``
    (``info``): ``bases_sha256`` once moved onto new weights (``train rebase``), else, in a folder as distilled, its
    ``teacher_sha256`` for the transformer; ``{}`` if it names neither."""
    return info.get("bases_sha256") or ({"transformer": info["teacher_sha256"]} if "teacher_sha256" in info else {})


def _check_bases(path: Path, info: dict) -> None:
    """A correction fits only the weights it was made for (as a LoRA fits one checkpoint): ``ModelLoadError`` naming
    the fix if a part that :func:`correction_bases` names has other weights beside ``path`` now, e.g. after tiny-flux
    was retrained."""
    siblings = {**info.get("shares", {}), **info.get("corrects", {})}
    for part, expected in correction_bases(info).items():
        sibling = path.parent / siblings.get(part, "")
        if (sibling / part).is_dir() and weights_sha256(sibling, part) != expected:
            raise ModelLoadError(f"{path.name} was made for other {sibling.name} weights ({part}) than those beside it: move its "
                                 f"correction onto them with `python -m illustrated_sd.train rebase OLD_{sibling.name.upper().replace('-', '_')}_FOLDER "
                                 f"--fast {path}`, or train it again (scripts/train_tiny_flux_fast.sh)")


def _load_hub(model_id: str, dtype: torch.dtype) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    try:  # a copy in the local Hugging Face cache works offline
        cls = _pipeline_class(DiffusionPipeline.load_config(model_id, local_files_only=True).get("_class_name"), model_id)
        return cls.from_pretrained(model_id, local_files_only=True, dtype=dtype, **_class_kwargs(cls))
    except ModelLoadError:
        raise
    except Exception:
        pass
    advice = (f"pass a local folder instead: download it where there is a network "
              f"(`hf download {model_id} --local-dir sd-model`) and call load_pipeline('sd-model')")
    if not _hub_reachable():
        raise ModelLoadError(f"cannot fetch {model_id!r} from the Hugging Face Hub: no network here (and no cached copy); {advice}")
    try:
        cls = _pipeline_class(DiffusionPipeline.load_config(model_id).get("_class_name"), model_id)
        return cls.from_pretrained(model_id, dtype=dtype, **_class_kwargs(cls))
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(f"could not load {model_id!r} from the Hugging Face Hub: {type(err).__name__}: {err}; {advice}") from err


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False at once when offline mode is on, else whether the Hub answers within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False
