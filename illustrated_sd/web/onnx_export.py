"""Export an SD 1/2 pipeline to ONNX, for a web page that generates with onnxruntime-web.

A web page cannot run PyTorch, but it can run an ONNX graph: the network written out as a list of
operations (MatMul, Conv, Softmax, …) with its weights, which onnxruntime-web executes in the browser. The
page then writes the rest of the pipeline itself, in a few lines of JavaScript: the tokenizer, the
scheduler's update (from ``models.json``), classifier-free guidance, and drawing the image. Three graphs:

    input_ids [B, 77] ─► text_encoder.onnx ─► last_hidden_state [B, 77, D]
                                                       │
    sample [B, 4, h, w], timestep [] ─► unet.onnx ◄────┘ ─► noise_pred [B, 4, h, w]
                                            └─► attn.<layer> [B, h_l·w_l, 77]   one per cross-attention layer
    latents [B, 4, h, w] ─► vae_decoder.onnx ─► image [B, 3, 8h, 8w] in [-1, 1]

``B`` is 1 or 2 (classifier-free guidance runs ``[uncond, prompt]`` as one batch of 2). The cross-attention
maps come out of the UNet beside the noise, so the page can draw a word's heatmap at every step. In PyTorch
the package never changes the UNet's processors (it keeps the fused kernel and recomputes softmax(QKᵀ/√d)
beside it, see ``recording/recorders.py``); for the export the cross-attention processors are swapped, for
the export only, by ones that compute the softmax explicitly and hand it out as an output.

Every file is checked (``check=True``): onnxruntime runs it on a real prompt, latent and timestep and its
outputs are compared with PyTorch's.
"""

import json
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

try:
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
except ImportError as err:  # pragma: no cover - the message is the point
    raise ImportError("illustrated_sd.web needs onnx and onnxruntime: pip install onnx onnxruntime "
                      "(or pip install -e .[dev])") from err

from ..lessons.latent_space import to_pixels
from ..loops.sampling import classifier_free_guidance, pred_x0
from ..loops.text import tokenize_prompt
from ..recording.attention_layers import attention_layers, layer_grid, short_name
from ..recording.recorders import AttentionRecorder, attention_probabilities
from ..trace.files import atomic_write, check_writable_folder

# Opset 17 has LayerNormalization as one operation; onnxruntime-web runs every opset up to 21.
OPSET = 17
FILES = {"text_encoder": "text_encoder.onnx", "unet": "unet.onnx", "vae_decoder": "vae_decoder.onnx"}
MANIFEST = "models.json"
FORMAT = "illustrated_sd web models 1"  # models.json says it was written here: only such a folder is overwritten
CHECK_PROMPT = "a red circle on the left"

# How far onnxruntime may be from PyTorch (max |difference|) before the export counts as wrong.
# In float32 the graph is the same arithmetic in another order (other matrix kernels, fused operations), so the
# two agree to float32 rounding gathered over the network: about 1e-5 on values of size 1 here. A wrong weight,
# a swapped axis or a missed scale moves an output by O(0.1–1). 1e-3 sits far between the two.
# Float16 weights round every weight by up to 2⁻¹¹ ≈ 0.05 % of itself; on the embedded model that moves the noise by
# about 1e-3 and the picture by well under a grey level (the numbers land in models.json). The bounds below leave
# room for larger models, and still catch a broken graph. Attention rows are probabilities (they sum to 1):
# a difference of 1e-2 is 1 % of all the attention a pixel pays.
TOLERANCE = {
    "float32": {"last_hidden_state": 1e-3, "noise_pred": 1e-3, "attn": 1e-3, "image_grey_levels": 0.5},
    "float16": {"last_hidden_state": 0.05, "noise_pred": 0.05, "attn": 0.01, "image_grey_levels": 3.0},
}


class ExportCrossAttention:
    """A cross-attention processor that writes its softmax out, for the ONNX export only.

    It computes what diffusers' fused processor computes, with the attention matrix spelled out:
    ``P = softmax(Q Kᵀ / √d)`` (``[B, heads, pixels, 77]``), output ``= P V``. It keeps the mean of ``P`` over
    the heads in ``self.probs`` (``[B, pixels, 77]``), which :class:`UNetForExport` returns as an output.
    Every step is a plain tensor operation whose sizes follow the input's, so the batch stays free in the graph.
    """

    def __init__(self):
        self.probs = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        # hidden_states: [B, pixels, C] (the image), encoder_hidden_states: [B, 77, D] (the prompt)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query, key, value = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        # [B, n, heads·d] → [B, heads, n, d]: unflatten reads the batch from the tensor, so the graph keeps it dynamic
        query, key, value = (x.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for x in (query, key, value))
        probs = torch.softmax(query @ key.transpose(-1, -2) * attn.scale, dim=-1)  # [B, heads, pixels, 77]
        self.probs = probs.mean(dim=1)
        out = (probs @ value).transpose(1, 2).flatten(2)  # [B, pixels, heads·d]
        return attn.to_out[1](attn.to_out[0](out))  # the output projection, then dropout (nothing, in eval mode)


def check_plain_cross_attention(name: str, attn) -> None:
    """Refuse a layer that does more than SD 1/2's cross-attention (which :class:`ExportCrossAttention` writes out)."""
    extras = [what for what, present in (("q/k normalisation", attn.norm_q is not None), ("a group norm", attn.group_norm is not None),
                                         ("a spatial norm", attn.spatial_norm is not None), ("a residual", attn.residual_connection),
                                         ("an output rescale", attn.rescale_output_factor != 1)) if present]
    if extras:
        raise NotImplementedError(f"{name} has {', '.join(extras)}; the ONNX export writes out SD 1/2's plain cross-attention only")


@contextmanager
def export_processors(unet):
    """Install an :class:`ExportCrossAttention` on every cross-attention layer for one block, then restore the originals.

    Yields ``{layer name: processor}`` in the order the UNet runs the layers (``attention_layers(unet)["cross"]``).
    The originals come back even when the block fails.
    """
    cross = attention_layers(unet)["cross"]
    for name, attn in cross.items():
        check_plain_cross_attention(name, attn)
    originals = unet.attn_processors  # {"<layer>.processor": processor}, every attention layer
    ours = {name: ExportCrossAttention() for name in cross}
    unet.set_attn_processor({key: ours.get(key.removesuffix(".processor"), processor) for key, processor in originals.items()})
    try:
        yield ours
    finally:
        unet.set_attn_processor(originals)


class TextEncoderForExport(torch.nn.Module):
    """``input_ids [B, 77]`` (int64) → ``last_hidden_state [B, 77, D]``: CLIP's last layer after its final LayerNorm,
    the vectors SD 1/2's pipeline hands the UNet (``loops/text.py``, ``encode_tokens``: no attention mask)."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids, return_dict=False)[0]


class UNetForExport(torch.nn.Module):
    """``(sample [B, 4, h, w], timestep [], encoder_hidden_states [B, 77, D])`` → ``(noise_pred [B, 4, h, w],
    one [B, h_l·w_l, 77] map per cross-attention layer)``, with :func:`export_processors` installed.

    The timestep is one float32 scalar for the whole batch (the UNet repeats it for every row): in JavaScript,
    ``new ort.Tensor("float32", [t], [])``, with no BigInt64 array for an int64.
    """

    def __init__(self, unet, processors: dict[str, ExportCrossAttention]):
        super().__init__()
        self.unet, self.processors = unet, list(processors.values())

    def forward(self, sample, timestep, encoder_hidden_states):
        noise_pred = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        return (noise_pred, *[processor.probs for processor in self.processors])


class VaeDecoderForExport(torch.nn.Module):
    """``latents [B, 4, h, w]`` as the UNet makes them → ``image [B, 3, 8h, 8w]`` in [-1, 1].

    The graph divides by the VAE's scaling factor itself (``lessons/latent_space.to_pixels``, as
    ``pipe.decode_latents`` does), so the page hands it the loop's last latent as it is. It clamps to [-1, 1]
    as diffusers' image processor does before turning values into grey levels: ``round((x + 1) · 127.5)``.
    """

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return to_pixels(self.vae, latents).clamp(-1, 1)


def grey_levels(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pixels in [-1, 1] → grey levels in [0, 255] (float, unrounded), as diffusers' ``postprocess`` scales them."""
    image = np.asarray(image, dtype=np.float64)
    return np.clip((image + 1) / 2, 0, 1) * 255


def weights_to_float16(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Store a float32 graph's weights in float16, keeping its arithmetic, inputs and outputs in float32.

    Each float32 weight ``w`` becomes a float16 ``w.fp16`` followed by ``Cast(w.fp16) → w``: the file halves, and the
    graph runs on every onnxruntime-web backend (the WebAssembly one has few float16 kernels). onnxruntime folds
    the casts when it loads the file, so the only change is the rounding of each weight to float16's 11 bits.
    """
    graph, casts, weights = model.graph, [], []
    for weight in graph.initializer:
        values = numpy_helper.to_array(weight)
        if weight.data_type != TensorProto.FLOAT or values.size < 16:  # shapes, scalars and the like stay exact
            weights.append(weight)
            continue
        if np.abs(values).max() > np.finfo(np.float16).max:
            raise ValueError(f"weight {weight.name} holds values beyond float16's range (65504); export with float16=False")
        weights.append(numpy_helper.from_array(values.astype(np.float16), f"{weight.name}.fp16"))
        casts.append(helper.make_node("Cast", [f"{weight.name}.fp16"], [weight.name], to=TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(weights)
    nodes = casts + list(graph.node)  # the casts first: a graph lists every node after the nodes it reads
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def run_onnx(model: "onnx.ModelProto", inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a graph with onnxruntime on the CPU (as many threads as PyTorch uses): ``{output name: array}``."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: onnxruntime warns about initializers it could fold
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))


def max_differences(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |got − want| per output; an image is compared in grey levels (0–255)."""
    return {name: float(np.abs(grey_levels(got[name]) - grey_levels(want[name])).max() if name == "image"
                        else np.abs(got[name].astype(np.float64) - want[name].astype(np.float64)).max())
            for name in want}


def tolerance(output: str, precision: str) -> float:
    """How far ``output`` (``"noise_pred"``, ``"attn.mid"``, ``"image"``, …) may be from PyTorch's, see :data:`TOLERANCE`."""
    kind = "attn" if output.startswith("attn.") else "image_grey_levels" if output == "image" else output
    return TOLERANCE[precision][kind]


@dataclass
class Part:
    """One graph to export: the module, example inputs, the axes left free, and PyTorch's own outputs to compare with."""

    name: str
    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    reference: dict[str, np.ndarray]

    def describe(self, example: dict[str, np.ndarray]) -> dict:
        """Names, dtypes and shapes for models.json: a free axis is named (``"batch"``), a fixed one is a number."""
        def entry(name, array):
            free = self.dynamic_axes.get(name, {})
            return {"name": name, "dtype": str(array.dtype), "shape": [free.get(i, n) for i, n in enumerate(array.shape)]}
        return {"inputs": [entry(n, x.numpy()) for n, x in self.inputs.items()], "outputs": [entry(n, example[n]) for n in self.outputs]}


def check_pipeline(pipe) -> None:
    """Refuse what cannot be exported, with what can: SD 1/2 in float32."""
    from ..loops.unet import IllustratedPipeline

    works = "export_onnx exports SD 1/2 pipelines (one CLIP text encoder, a UNet with cross-attention, an AutoencoderKL)"
    family = getattr(pipe, "family", None)
    if family is not None:
        raise ValueError(f"{works}; this is a {family} pipeline (a diffusion transformer with flow matching), which it does not export")
    if not isinstance(pipe, IllustratedPipeline):
        raise TypeError(f"{works}, as an IllustratedPipeline (got {type(pipe).__name__}); load one with isd.load_pipeline(path) "
                        "or wrap a diffusers pipeline with isd.IllustratedPipeline(pipeline)")
    if pipe.is_sdxl:
        raise ValueError(f"{works}; this is an SDXL pipeline (two text encoders, size conditioning), which it does not export")
    if getattr(pipe.text_encoder.config, "use_attention_mask", False):
        raise ValueError(f"{works}; this text encoder reads an attention mask, which the exported graph does not take")
    dtypes = {m.dtype for m in (pipe.text_encoder, pipe.unet, pipe.vae)}
    if dtypes != {torch.float32}:
        raise ValueError(f"export from float32 weights (got {sorted(map(str, dtypes))}): load the model with the default "
                         "dtype=torch.float32; float16=True stores the files' weights in float16")


def check_folder(folder) -> Path:
    """A folder to write into: refuse a file, or one holding model files that this function did not write."""
    folder = check_writable_folder(folder)
    manifest = folder / MANIFEST
    ours = False
    if manifest.is_file():
        try:
            ours = json.loads(manifest.read_text()).get("format") == FORMAT
        except (ValueError, UnicodeDecodeError, AttributeError):
            ours = False
    foreign = [name for name in (*FILES.values(), MANIFEST) if (folder / name).exists()]
    if foreign and not ours:
        raise ValueError(f"{folder} already holds {', '.join(foreign)}, not written by export_onnx; "
                         "refusing to replace them: move them away or choose another folder")
    return folder


@torch.no_grad()
def build_parts(pipe) -> list[Part]:
    """The three graphs, each with real example inputs and PyTorch's outputs on them.

    The inputs are those of a real first step: the check prompt and the empty prompt (the guidance batch of 2),
    a noise latent at the model's default size, the first timestep a 25-step run visits; the decoder gets the
    clean latent x̂₀ the UNet's guided prediction implies there.
    """
    device, unet, scheduler = pipe.device, pipe.unet, pipe.scheduler
    ids = torch.cat([tokenize_prompt(pipe.tokenizer, text).input_ids for text in ("", CHECK_PROMPT)]).to(device)  # [2, 77]
    context = pipe.text_encoder(ids, return_dict=False)[0]  # [2, 77, D]: [uncond, prompt], as the loop batches them
    size = unet.config.sample_size
    sample = torch.randn(2, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    steps = type(scheduler).from_config(scheduler.config)  # a copy: the pipeline's scheduler keeps its state
    steps.set_timesteps(25)
    timestep = steps.timesteps[0].to(torch.float32).to(device)  # a scalar

    # PyTorch's own UNet (fused kernel), the maps recomputed by the package's recorders, as a generation records them
    cross = attention_layers(unet)["cross"]
    recorders = [AttentionRecorder(name, attn) for name, attn in cross.items()]
    for recorder in recorders:
        recorder.install()
    try:
        noise_pred = unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]
        maps = {f"attn.{short_name(r.name)}": attention_probabilities(r.query, r.key, r.attn.heads, per_head=False)[:, 0]
                for r in recorders}  # each [2, h_l·w_l, 77]
    finally:
        for recorder in recorders:
            recorder.remove()
    if len(maps) != len(recorders):
        raise ValueError(f"two cross-attention layers share a short name: {[short_name(n) for n in cross]}")

    # x̂₀ from the guided prediction ε̂ = ε_uncond + 7.5·(ε_text − ε_uncond): the picture the model believes in at this step
    alpha_bar = steps.alphas_cumprod[int(timestep)].to(device)
    latents = pred_x0(sample[:1], classifier_free_guidance(*noise_pred.chunk(2), 7.5), alpha_bar, scheduler.config.prediction_type)
    image = to_pixels(pipe.vae, latents).clamp(-1, 1)

    numpy = lambda tensors: {name: x.detach().cpu().float().numpy() for name, x in tensors.items()}
    batch = {0: "batch"}
    latent_axes = {0: "batch", 2: "height", 3: "width"}
    return [
        Part("text_encoder", TextEncoderForExport(pipe.text_encoder), {"input_ids": ids}, ["last_hidden_state"],
             {"input_ids": batch, "last_hidden_state": batch}, numpy({"last_hidden_state": context})),
        Part("unet", unet, {"sample": sample, "timestep": timestep, "encoder_hidden_states": context}, ["noise_pred", *maps],
             {"sample": latent_axes, "encoder_hidden_states": batch, "noise_pred": latent_axes}
             | {name: {0: "batch", 1: f"pixels_{name.removeprefix('attn.')}"} for name in maps},
             numpy({"noise_pred": noise_pred} | maps)),
        Part("vae_decoder", VaeDecoderForExport(pipe.vae), {"latents": latents}, ["image"],
             {"latents": latent_axes, "image": {0: "batch", 2: "image_height", 3: "image_width"}}, numpy({"image": image})),
    ]


def export_part(part: Part, path: Path) -> "onnx.ModelProto":
    """Trace ``part`` into an ONNX graph (float32) at ``path`` and read it back."""
    module = part.module
    with warnings.catch_warnings():
        # The tracer warns at every Python `if` on a size, which it freezes: batch-size and memory guards that do not
        # change the result, and the UNet's "is the latent a multiple of 2^(down blocks − 1)?", frozen at yes (the
        # latent sizes the page may use: models.json's latent.multiple_of). It also says this exporter is the legacy one.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        trace_to_onnx(part, module, path)
    return onnx.load(str(path))


def trace_to_onnx(part: Part, module: torch.nn.Module, path: Path) -> None:
    """``torch.onnx.export`` with TorchScript tracing: run once on the example inputs, record every operation."""
    if part.name == "unet":  # the UNet with its cross-attention written out, for this export only
        with export_processors(module) as processors:
            torch.onnx.export(UNetForExport(module, processors), tuple(part.inputs.values()), str(path), dynamo=False,
                              opset_version=OPSET, input_names=list(part.inputs), output_names=part.outputs,
                              dynamic_axes=part.dynamic_axes)
    else:
        torch.onnx.export(module, tuple(part.inputs.values()), str(path), dynamo=False, opset_version=OPSET,
                          input_names=list(part.inputs), output_names=part.outputs, dynamic_axes=part.dynamic_axes)


def check_part(part: Part, model: "onnx.ModelProto", precision: str) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Run ``model`` with onnxruntime on the part's inputs; ``(max differences from PyTorch, the outputs)``.

    Raises ``ValueError`` naming the outputs over :data:`TOLERANCE`.
    """
    got = run_onnx(model, {name: x.cpu().numpy() for name, x in part.inputs.items()})
    differences = max_differences(got, part.reference)
    bad = [f"{name} by {d:.3g} (allowed {tolerance(name, precision)})" for name, d in differences.items()
           if not d <= tolerance(name, precision)]  # (a NaN counts as over)
    if bad:
        raise ValueError(f"{FILES[part.name]} ({precision} weights) differs from PyTorch: {', '.join(bad)}; "
                         "the export is wrong, please report it with the model's name")
    return differences, got


def scheduler_info(scheduler) -> dict:
    """What the page's loop needs from the scheduler: its config, and its tables as plain lists."""
    config = {key: value for key, value in scheduler.config.items() if not key.startswith("_")}
    return {"class": type(scheduler).__name__, "config": json.loads(json.dumps(config, default=list)),
            "betas": scheduler.betas.tolist(), "alphas_cumprod": scheduler.alphas_cumprod.tolist()}


def export_onnx(pipe, folder, *, float16: bool = True, check: bool = True) -> dict:
    """Write ``text_encoder.onnx``, ``unet.onnx``, ``vae_decoder.onnx`` and ``models.json`` into ``folder``.

    The graphs (float32 inputs and outputs; ``B`` = 1 or 2, the latent's ``h, w`` free, multiples of the UNet's
    downsampling; the default is ``sample_size``, 16×16 for the embedded model):

    - ``text_encoder.onnx``: ``input_ids`` int64 ``[B, 77]`` → ``last_hidden_state [B, 77, D]``.
    - ``unet.onnx``: ``sample [B, 4, h, w]``, ``timestep`` (a float32 scalar, ``[]``, for the whole batch),
      ``encoder_hidden_states [B, 77, D]`` → ``noise_pred [B, 4, h, w]`` and ``attn.<layer>`` ``[B, h_l·w_l, 77]``,
      the cross-attention probabilities of each layer (mean over heads; each row sums to 1), layers in the order
      the UNet runs them (``models.json`` lists their grids).
    - ``vae_decoder.onnx``: ``latents [B, 4, h, w]`` as the loop makes them (the graph divides by the scaling
      factor) → ``image [B, 3, 8h, 8w]`` in [-1, 1].

    Args:
        pipe: an :class:`~illustrated_sd.IllustratedPipeline` of an SD 1/2 model in float32 (SDXL, SD3 and Flux
            are refused).
        folder: where to write; created if missing. Files this function wrote before are replaced; others are not.
        float16: store the weights in float16 (half the download), computing in float32 (see :func:`weights_to_float16`).
        check: run every graph with onnxruntime on a real prompt, latent and timestep and compare with PyTorch;
            ``ValueError`` if an output is further than :data:`TOLERANCE`.
    Returns:
        the contents of ``models.json``: per file its name, size in bytes, inputs and outputs, and the check's max
        differences (``"float32"``: the exported graph vs PyTorch; ``"float16"``: the written file vs PyTorch and
        vs the float32 graph); the scheduler; the VAE's scaling factor; the attention layers and their grids.
    Example:
        >>> from illustrated_sd.web import export_onnx
        >>> info = export_onnx(isd.load_pipeline(), "site/models")
        >>> info["files"]["vae_decoder"]["check"]["float16"]["vs_pytorch"]["image"]   # grey levels
    """
    check_pipeline(pipe)
    if not isinstance(float16, bool) or not isinstance(check, bool):
        raise TypeError(f"float16 and check are True or False (got float16={float16!r}, check={check!r})")
    folder = check_folder(folder)
    parts = build_parts(pipe)
    files, written = {}, {}
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as scratch:
        for part in tqdm(parts, desc="exporting to ONNX", unit="graph"):
            model = export_part(part, Path(scratch) / FILES[part.name])
            report, example = {}, None
            if check:
                report["float32"], example = check_part(part, model, "float32")
            if float16:
                float32_outputs = example
                model = weights_to_float16(model)
                if check:
                    vs_pytorch, example = check_part(part, model, "float16")
                    report["float16"] = {"vs_pytorch": vs_pytorch, "vs_float32": max_differences(example, float32_outputs)}
            if example is None:  # no check: one run for the shapes models.json lists
                example = run_onnx(model, {name: x.cpu().numpy() for name, x in part.inputs.items()})
            onnx.checker.check_model(model)
            written[part.name] = model
            files[part.name] = {"file": FILES[part.name], **part.describe(example), "check": report or None}
    # Every graph passed: now the files, each written whole (a reader never sees half of one), models.json last.
    for name, model in written.items():
        with atomic_write(folder / FILES[name], "ONNX file") as tmp:
            onnx.save(model, str(tmp))
        files[name]["bytes"] = (folder / FILES[name]).stat().st_size

    unet, latent_hw = pipe.unet, (pipe.unet.config.sample_size,) * 2
    image_check = files["vae_decoder"]["check"]
    info = {
        "format": FORMAT,
        "model": pipe.name,
        "opset": OPSET,
        "weights": "float16" if float16 else "float32",
        "compute": "float32",
        "files": files,
        "text": {"max_length": pipe.tokenizer.model_max_length, "bos_token_id": pipe.tokenizer.bos_token_id,
                 "eos_token_id": pipe.tokenizer.eos_token_id, "pad_token_id": pipe.tokenizer.pad_token_id},
        "latent": {"channels": unet.config.in_channels, "default_size": list(latent_hw),
                   "multiple_of": 2 ** (len(unet.config.down_block_types) - 1)},
        "image": {"default_size": [pipe.vae_scale_factor * n for n in latent_hw], "range": [-1, 1]},
        "vae_scaling_factor": pipe.vae.config.scaling_factor,
        "vae_decoder_unscales": True,  # feed the loop's latent as it is: the graph divides by vae_scaling_factor
        "timestep": "float32 scalar (shape []), one for the whole batch",
        "guidance_batch": "[uncond, prompt]: row 0 the empty prompt, row 1 the prompt",
        "scheduler": scheduler_info(pipe.scheduler),
        "attention_layers": [{"output": f"attn.{short_name(name)}", "layer": name,
                              "grid_at_default_size": list(layer_grid(name, unet, latent_hw))}
                             for name in attention_layers(unet)["cross"]],
        "float16_image_change_over_one_grey_level": (image_check["float16"]["vs_float32"]["image"] > 1.0
                                                     if image_check and "float16" in image_check else None),
    }
    with atomic_write(folder / MANIFEST, "models.json") as tmp:
        tmp.write_text(json.dumps(info, indent=1))
    return info
