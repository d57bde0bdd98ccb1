"""The Trace: everything one generation did, in one object that plots, widgets and reports read.

A Trace is plain data (tensors on the CPU, strings, numbers, the image). It is filled once by the
pipeline and never changes afterwards; ``save``/``load`` round-trip it losslessly through a single
safetensors file whose header carries the non-tensor fields as JSON.
"""

import json
import math
import numbers
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .. import checks
from .files import atomic_write, check_replaceable

FORMAT = "illustrated_sd.trace/1"

# Tensors saved under their own name; None (e.g. no unconditional branch without guidance) is skipped.
_TENSORS = (
    "token_ids", "text_embeddings", "uncond_embeddings", "text_hidden_states", "timesteps", "alpha_bars",
    "latents", "noise_pred", "noise_pred_text", "noise_pred_uncond", "pred_x0", "init_latents", "skipped_timesteps", "mask",
    "token_ids_2", "text_hidden_states_2", "pooled_text_embeds", "uncond_pooled_text_embeds", "add_time_ids",
)
_MAP_DICTS = ("attention_maps", "self_attention_maps")


@dataclass(eq=False)
class Trace:
    """One recorded generation. ``S`` = denoising steps, ``C×h×w`` = latent, ``D`` = text width.

    Attributes:
        prompt, negative_prompt: the text asked for (``negative_prompt`` is ``None`` for the empty one).
        tokens: readable CLIP pieces from ``<|startoftext|>`` to ``<|endoftext|>`` (bytes decoded: ``"🔴"``, ``"à"``).
        words: the prompt's words and the slots their pieces fill, ``(word, first, end)``, ``end`` exclusive.
        token_ids: ``[77]`` the ids the text encoder read (padded).
        truncated_text: what did not fit into 77 tokens and was dropped (``""`` if nothing).
        text_embeddings: ``[77, D]`` final hidden states of the prompt (what cross-attention reads).
        uncond_embeddings: ``[77, D]`` the same for the negative (or empty) prompt; ``None`` without guidance.
        text_hidden_states: ``[layers + 1, 77, D]`` every layer of the text encoder, embeddings first.
        timesteps: ``[S]`` the timesteps visited. alpha_bars: ``[S]`` ᾱ at each of them.
        latents: ``[S + 1, C, h, w]`` the starting noise, then the latent after each step.
        noise_pred: ``[S, C, h, w]`` the guided UNet output the scheduler used.
        noise_pred_text, noise_pred_uncond: ``[S, C, h, w]`` conditional / unconditional outputs
            (``noise_pred_uncond`` is ``None`` without guidance).
        pred_x0: ``[S, C, h, w]`` the clean latent implied at each step (see ``sampling.pred_x0``).
        attention_maps: ``{layer: [S, heads, H, W, 77]}`` cross-attention probabilities of the prompt
            (``heads`` = 1 when head-averaged); each ``[..., :]`` row sums to 1 over the 77 tokens.
        self_attention_maps: ``{layer: [S, heads, H, W, H·W]}`` when recorded, else empty.
        per_head: whether ``attention_maps`` keep every head (else their mean, ``heads`` = 1).
        kept_steps: ``None`` for a full trace. A *compact* trace (``RecordOptions(compact=True)``) kept only these
            ``k`` step indices: ``latents`` is then ``[k + 1, C, h, w]`` (the start, then after each kept step),
            ``noise_pred``, ``noise_pred_text``, ``noise_pred_uncond`` and ``pred_x0`` are ``[k, C, h, w]``,
            ``text_hidden_states`` only the last layer ``[1, 77, D]``, and ``attention_maps`` one map per
            resolution, ``{"16×16": [1, 1, 16, 16, n + 1]}``, the mean over every step, layer and head, for the
            ``n`` prompt slots (markers included) and, last, all the padding slots summed (see :attr:`lacks`);
            ``grid_layers`` says how many layers each map averages (``{"16×16": 4, …}``), so that heatmaps over
            all layers and ``attention_shares`` weigh every layer as a full trace does.
        mode: ``"text2img"``, ``"img2img"`` or ``"inpaint"``; for img2img also ``strength``, ``init_latents [C, h, w]``
            (the encoded input image, before noising) and ``skipped_timesteps`` (the noisiest ones, not visited).
            ``"inpaint"`` adds ``mask [h, w]``: 1 where the model repainted, at latent resolution.
        image: the generated ``PIL.Image``.
        guidance_scale, guidance_rescale, seed, height, width, scheduler, prediction_type, model: the settings.

    SDXL traces add (all ``None`` for SD 1/2):
        context_split: ``text_embeddings[:, :context_split]`` came from text encoder 1 (CLIP ViT-L, 768 wide),
            the rest from encoder 2 (OpenCLIP bigG, 1280); each is that encoder's *penultimate* layer,
            so ``text_embeddings[:, :context_split] == text_hidden_states[-2]``.
        token_ids_2: ``[77]`` the second tokenizer's ids (the same pieces, padded with ``"!"``).
        text_hidden_states_2: ``[layers₂ + 1, 77, D₂]`` every layer of the second encoder
            (``text_hidden_states`` then holds the first encoder's, ``D₁`` wide).
        pooled_text_embeds, uncond_pooled_text_embeds: ``[P]`` the second encoder's projected summary of the
            prompt and of the negative prompt (zeros when none was given), added to the timestep embedding.
        add_time_ids: ``[k]`` the micro-conditioning, named by ``add_time_id_names`` (original size, crop,
            target size; a refiner's aesthetic score): see :meth:`micro_conditioning`.

    edits: the interventions of an edited call (:mod:`illustrated_sd.recording.edits`), one dict each, e.g.
        ``{"kind": "reweight", "word": "red", "slots": [2], "factor": 0.0, "steps": [0, …], "layers": [...]}``;
        empty for a plain generation. ``attention_maps`` then show the attention the model used, edits included.
    """

    prompt: str
    negative_prompt: str | None
    tokens: list[str]
    token_ids: torch.Tensor
    truncated_text: str
    text_embeddings: torch.Tensor
    uncond_embeddings: torch.Tensor | None
    text_hidden_states: torch.Tensor
    timesteps: torch.Tensor
    alpha_bars: torch.Tensor
    latents: torch.Tensor
    noise_pred: torch.Tensor
    noise_pred_text: torch.Tensor
    noise_pred_uncond: torch.Tensor | None
    pred_x0: torch.Tensor
    image: Image.Image
    guidance_scale: float
    seed: int | None
    height: int
    width: int
    scheduler: str
    prediction_type: str
    model: str
    per_head: bool = False
    mode: str = "text2img"
    strength: float | None = None
    init_latents: torch.Tensor | None = None
    skipped_timesteps: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    attention_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    self_attention_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    words: list[tuple[str, int, int]] = field(default_factory=list)
    guidance_rescale: float = 0.0
    token_ids_2: torch.Tensor | None = None
    text_hidden_states_2: torch.Tensor | None = None
    pooled_text_embeds: torch.Tensor | None = None
    uncond_pooled_text_embeds: torch.Tensor | None = None
    add_time_ids: torch.Tensor | None = None
    add_time_id_names: list[str] | None = None
    context_split: int | None = None
    edits: list[dict] = field(default_factory=list)
    kept_steps: list[int] | None = None
    grid_layers: dict[str, int] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def is_compact(self) -> bool:
        """Whether this is a compact trace (a few steps kept, heatmaps averaged over the steps): see :attr:`lacks`."""
        return self.kept_steps is not None

    @property
    def lacks(self) -> list[str]:
        """What a compact trace does not have that a full one does (``[]`` for a full trace)."""
        if not self.is_compact:
            return []
        return [f"latents, noise predictions and x̂₀ at steps other than {self.kept_steps}",
                "attention maps per step, per layer and per head (it keeps one per resolution, averaged over all steps)",
                "the text encoder's layers before the last", "self-attention maps"]

    @property
    def nbytes(self) -> int:
        """Bytes held by the trace's tensors (the image aside); compare ``budget.estimate_trace``."""
        tensors = [getattr(self, name) for name in _TENSORS]
        tensors += [m for maps in (self.attention_maps, self.self_attention_maps) for m in maps.values()]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    @property
    def latent_hw(self) -> tuple[int, int]:
        return tuple(self.latents.shape[-2:])

    @property
    def is_sdxl(self) -> bool:
        """Whether an SDXL pipeline made this trace (it has the added conditioning)."""
        return self.add_time_ids is not None

    def micro_conditioning(self) -> dict[str, float]:
        """SDXL's added time ids by meaning: ``{"original height": 1024.0, …, "target width": 1024.0}``.

        Raises ``ValueError`` for an SD 1/2 trace, which has none.
        """
        if not self.is_sdxl:
            raise ValueError("this trace has no micro-conditioning: only SDXL pipelines add time ids (trace.is_sdxl is False)")
        return dict(zip(self.add_time_id_names, (float(v) for v in self.add_time_ids)))

    def __repr__(self) -> str:
        maps = f"{len(self.attention_maps)} cross-attention layers" if self.attention_maps else "no attention maps"
        return (
            f"Trace({self.prompt!r}, {self.num_steps} steps of {self.scheduler}, guidance {self.guidance_scale}, "
            f"seed {self.seed}, {self.width}×{self.height} px, latent {list(self.latents.shape[1:])}, {maps})"
        )

    # ---- asking questions of the trace -------------------------------------------------------

    def token_index(self, token: str | int) -> list[int]:
        """The positions (in the 77 slots) that ``token`` names (see :func:`find_slots`)."""
        return find_slots(self.prompt, self.tokens, self.words, len(self.token_ids), token)

    def layers_at(self, resolution: int) -> list[str]:
        """Names of the recorded cross-attention layers whose grid is ``resolution`` high."""
        return [name for name, m in self.attention_maps.items() if m.shape[2] == resolution]

    def cross_attention(self, token: str | int, step=None, layer=None, head=None) -> torch.Tensor:
        """Where in the image the UNet looked at ``token``: a heatmap at latent resolution.

        Args:
            token: a word of the prompt (its BPE pieces are summed, as DAAM does) or a slot index.
            step: an int (``-1`` = the last), a non-empty list of ints, or ``None`` for the mean over all steps.
            layer: a layer name, a grid resolution (``16`` = every 16×16 layer), or ``None`` for all
                recorded layers; each layer's map is upsampled (bilinear) to the latent size first.
            head: an int (needs maps recorded with ``per_head=True``) or ``None`` for the mean.
        Returns:
            ``[h, w]`` float32 attention probability of that token at each latent pixel.
        Example:
            >>> heat = trace.cross_attention("circle", layer=16)   # [h, w]
        """
        if not self.attention_maps:
            raise ValueError("this trace has no cross-attention maps; generate with RecordOptions(cross_attention=True)")
        slots = self.token_index(token)
        steps = self._map_steps(step)
        if layer is None:
            names = list(self.attention_maps)
        elif isinstance(layer, numbers.Integral) and not isinstance(layer, bool):
            names = self.layers_at(int(layer))
            if not names:
                sizes = sorted({m.shape[2] for m in self.attention_maps.values()})
                raise ValueError(f"no recorded layer works at {layer}×{layer}; recorded resolutions are {sizes}")
        elif layer in self.attention_maps:
            names = [layer]
        else:
            raise ValueError(f"layer {layer!r} was not recorded; recorded layers: {list(self.attention_maps)}")
        if head is not None:
            head = checks.whole_number("head", head)
        heat = []
        for name in names:
            maps = self.attention_maps[name][steps].float()  # [s, heads, H, W, 77]
            if head is not None:
                if not self.per_head:
                    raise ValueError("this trace kept only the mean over heads; generate with RecordOptions(per_head=True)")
                if not 0 <= head < maps.shape[1]:
                    raise ValueError(f"head {head} does not exist: layer {name} has {maps.shape[1]} heads")
                maps = maps[:, head : head + 1]
            m = maps[..., slots].sum(-1).mean(dim=(0, 1))  # [H, W]
            heat.append(F.interpolate(m[None, None], size=self.latent_hw, mode="bilinear", align_corners=False)[0, 0])
        return self._layer_mean(torch.stack(heat), names)

    def attention_shares(self, step=None) -> dict[str, float]:
        """Where the cross-attention goes, in total: the share of all pixels' attention (mean over
        pixels, heads, recorded layers and ``step``, as in :meth:`cross_attention`) that each word takes.

        Every pixel's attention sums to 1 over the 77 slots, so the shares sum to 1. Returns
        ``{label: share}`` in slot order: ``"<|startoftext|>"``, each word of the prompt, ``"<|endoftext|>"``,
        then ``"padding"`` for the remaining slots together. In SD most of it goes to the start marker, which
        every prompt has: an "attention sink" that pixels use when no word concerns them.
        """
        if not self.attention_maps:
            raise ValueError("this trace has no cross-attention maps; generate with RecordOptions(cross_attention=True)")
        steps = self._map_steps(step)
        per_slot = self._layer_mean(torch.stack([m[steps].float().mean(dim=(0, 1, 2, 3)) for m in self.attention_maps.values()]),
                                    list(self.attention_maps))  # [keys]
        end = len(self.tokens) - 1  # the end marker's slot
        words = self.words or [(t, i, i + 1) for i, t in enumerate(self.tokens[1:-1], start=1)]
        shares = {self.tokens[0]: per_slot[0]}
        for word, first, last in words:
            label = word if word not in shares else f"{word} ({first})"  # a word said twice gets its slot
            shares[label] = per_slot[first:last].sum()
        shares[self.tokens[-1]] = per_slot[end]
        shares["padding"] = per_slot[end + 1 :].sum()
        return {label: float(v) for label, v in shares.items()}

    def _layer_mean(self, per_layer: torch.Tensor, names: list[str]) -> torch.Tensor:
        """The mean over layers of ``per_layer`` ``[L, ...]``; a compact trace's maps stand for ``grid_layers[name]``
        layers each, and count as many, so that its answers are a full trace's."""
        weights = torch.tensor([float(self.grid_layers.get(name, 1)) for name in names]).view(-1, *[1] * (per_layer.ndim - 1))
        return (per_layer * weights).sum(0) / weights.sum()

    def _map_steps(self, step) -> list[int]:
        """Which entries of the attention maps ``step`` means; a compact trace has one, the mean over every step."""
        if not self.is_compact:
            return checks.step_indices(step, self.num_steps)
        if step is not None:
            raise ValueError(f"this compact trace kept the attention averaged over all {self.num_steps} steps, not step {step!r}; "
                             "pass step=None, or generate with the default RecordOptions() for per-step maps")
        return [0]

    # ---- saving ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the trace to one ``.safetensors`` file (tensors + JSON header); returns the path.

        Written through :func:`~illustrated_sd.trace.files.atomic_write`: an interrupted save never leaves a
        half-written trace, a new file gets your usual permissions (a replaced one keeps its own), a
        symbolic link is written through (its target replaced, the link kept), and a folder, device or
        read-only file at ``path`` is refused (``ValueError``) rather than replaced.
        """
        path = Path(path)
        check_replaceable(path, "trace file")  # before the tensors are gathered
        tensors = {name: getattr(self, name).contiguous() for name in _TENSORS if getattr(self, name) is not None}
        for group in _MAP_DICTS:
            for layer, m in getattr(self, group).items():
                tensors[f"{group}/{layer}"] = m.contiguous().cpu()
        tensors["image"] = torch.from_numpy(np.array(self.image.convert("RGB")))  # [H, W, 3] uint8
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in (*_TENSORS, *_MAP_DICTS, "image")}
        meta["map_layers"] = {group: list(getattr(self, group)) for group in _MAP_DICTS}
        header = {"format": FORMAT, "trace": json.dumps(meta, default=_plain_number)}
        with atomic_write(path, "trace file") as tmp:
            save_file({k: v.cpu() for k, v in tensors.items()}, tmp, metadata=header)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trace":
        """Read a trace written by :meth:`save`.

        Every header field is checked (types, ranges, and the tensors' shapes against each other), since
        a header is text anyone can edit. Raises ``ValueError("… is not a valid trace: …")`` naming
        the file and the first problem found; ``FileNotFoundError`` when there is no file.
        """
        path = Path(path)
        from .flow import FORMAT as FLOW_FORMAT, FlowTrace

        if path.is_file() and _format(path) == FLOW_FORMAT:  # a diffusion transformer's trace (SD3, Flux)
            return FlowTrace.load(path)
        meta = read_header(path)
        meta.pop("num_steps")  # read_header's addition: the tensors say it
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path} is not a valid trace: {err}. It may be corrupt or cut short; re-create it with trace.save(path)") from err
        try:
            _check_header(meta, tensors)
        except ValueError as err:
            raise ValueError(f"{path} is not a valid trace: {err}. Was the file edited? Re-create it with trace.save(path)") from None
        layers = meta.pop("map_layers")
        meta["words"] = [tuple(w) for w in meta.get("words", [])]
        kwargs = {name: tensors.get(name) for name in _TENSORS}
        for group in _MAP_DICTS:
            kwargs[group] = {layer: tensors[f"{group}/{layer}"] for layer in layers[group]}
        kwargs["image"] = Image.fromarray(tensors["image"].numpy())
        return cls(**meta, **kwargs)


def _format(path: Path) -> str | None:
    """The ``format`` a safetensors file's header names (``None`` when it is not readable as one)."""
    try:
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("format")
    except (SafetensorError, OSError):
        return None


def read_header(path: str | os.PathLike) -> dict:
    """The settings a trace file (SD's, or a diffusion transformer's) was made with (its JSON header: prompt, seed,
    guidance_scale, …), without reading its tensors; ``num_steps`` is added (the length of its timesteps). Fast: a
    prompt set of 100,000 traces is checked in seconds.

    Raises ``FileNotFoundError`` when there is no file, ``ValueError`` when it is not a trace (or is cut short:
    safetensors checks that the file holds every byte its header promises).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a trace file; pass the .safetensors file inside it (e.g. {path / 'trace.safetensors'})")
    if not path.is_file():
        raise FileNotFoundError(f"no trace file at {path}")
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            steps = f.get_slice("timesteps").get_shape()[0] if "timesteps" in f.keys() else None
        from .flow import FORMAT as FLOW_FORMAT

        if header.get("format") not in (FORMAT, FLOW_FORMAT):
            raise ValueError(f"missing header {FORMAT!r} (or {FLOW_FORMAT!r})")
        meta = json.loads(header["trace"])
        if not isinstance(meta, dict):
            raise ValueError("its header is not a JSON object")
    except (SafetensorError, ValueError, KeyError, OSError) as err:  # (json's errors are ValueErrors)
        raise ValueError(f"{path} is not a valid trace: {err}. It may be corrupt or cut short, or not a trace at all; "
                         "re-create it with trace.save(path)") from err
    return {**meta, "num_steps": steps}


def find_slots(prompt: str, tokens: list[str], words: list[tuple[str, int, int]], slots: int, token: str | int) -> list[int]:
    """The positions (among ``slots``, usually 77) that ``token`` names in a tokenized prompt.

    ``token`` is a slot index (``int``), a word or a few words of the prompt (``"red"``, ``"red circle"``,
    ``"🔴"``), or one piece as shown in ``tokens`` (``"<|endoftext|>"``). A word split into several BPE
    pieces gives all of them; a word that occurs twice gives its first occurrence. Raises
    ``ValueError`` listing the prompt's words when ``token`` is not there.
    """
    if isinstance(token, numbers.Integral) and not isinstance(token, bool):
        if not 0 <= token < slots:
            raise ValueError(f"token index {token} is outside the {slots} text slots (0–{slots - 1})")
        return [int(token)]
    if not isinstance(token, str):
        raise TypeError(f"token must be a word of the prompt or a slot index (got {token!r})")
    wanted = " ".join(token.lower().split())
    if not wanted:
        raise ValueError(f"token is empty; pass a word of the prompt, e.g. {prompt_words(tokens, words)[:1] or ['red']}[0]")
    words = words or [(t, i, i + 1) for i, t in enumerate(tokens[1:-1], start=1)]  # older traces: one piece a word
    for start in range(len(words)):  # whole words only: "redcircle" is not "red" + "circle"
        for end in range(start + 1, len(words) + 1):
            phrase = " ".join(w for w, _, _ in words[start:end]).lower()
            if phrase == wanted:
                return list(range(words[start][1], words[end - 1][2]))
            if len(phrase) > len(wanted):
                break
    pieces = [t.lower() for t in tokens]
    if wanted in pieces:  # one piece, as the tokens show it (a marker, or part of a split word)
        return [pieces.index(wanted)]
    raise ValueError(f"{token!r} is not a word of the prompt {prompt!r}; its words are {prompt_words(tokens, words)} "
                     f"(a piece as shown in trace.tokens, or a slot index 0–{slots - 1}, works too)")


def prompt_words(tokens: list[str], words: list[tuple[str, int, int]]) -> list[str]:
    """The prompt's words, as an error message lists them (its pieces, for traces that kept no words)."""
    return [w for w, _, _ in words] if words else tokens[1:-1]


def spread_steps(num_steps: int, k: int | None) -> list[int]:
    """``k`` step indices of ``num_steps`` spread evenly, the first and the last among them (all of them when
    ``k`` is ``None`` or not smaller): the steps a compact trace or a light explorer keeps."""
    if k is None or num_steps <= k:
        return list(range(num_steps))
    if k == 1:
        return [num_steps - 1]  # the one step that matters most: the last
    return sorted({int(round(i)) for i in np.linspace(0, num_steps - 1, k)})


def require_trace(value, who: str, every_step: bool = False, flow: bool = False) -> "Trace":
    """``value`` if it is a :class:`Trace` (or, with ``flow``, a :class:`~illustrated_sd.trace.flow.FlowTrace`); else a
    ``TypeError`` saying where one comes from (a common slip: the prompt).

    ``every_step``: ``who`` reads every step, so a compact trace is refused (``ValueError``) with what it lacks.
    """
    from .flow import FlowTrace

    if not isinstance(value, (Trace, FlowTrace) if flow else Trace):
        raise TypeError(f"{who} takes a Trace, got {type(value).__name__} {value!r:.60}; make one with trace = pipe(prompt) "
                        "or isd.Trace.load(path)")
    if every_step and value.is_compact:
        raise ValueError(f"{who} needs every step, and this is a compact trace: it lacks {'; '.join(value.lacks)}. Generate "
                         "with the default RecordOptions() for it (token_heatmaps and attention_shares work on a compact trace)")
    return value


def _plain_number(x):
    """JSON for numpy's numbers (a trace made with ``height=np.int64(128)`` saves like any other)."""
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    raise TypeError(f"a trace field holds {type(x).__name__}, which cannot be saved; use plain Python values")


# What a header may hold: field → (check, what it must be). Required unless the Trace gives it a default.
_is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
_is_number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
_HEADER = {
    "prompt": (lambda v: isinstance(v, str), "a string"),
    "negative_prompt": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "tokens": (lambda v: isinstance(v, list) and len(v) >= 2 and all(isinstance(t, str) for t in v), "a list of at least 2 strings"),
    "truncated_text": (lambda v: isinstance(v, str), "a string"),
    "guidance_scale": (_is_number, "a finite number"),
    "seed": (lambda v: v is None or _is_int(v), "an integer or null"),
    "height": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "width": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "scheduler": (lambda v: isinstance(v, str), "a string"),
    "prediction_type": (lambda v: v in ("epsilon", "v_prediction", "sample"), "'epsilon', 'v_prediction' or 'sample'"),
    "model": (lambda v: isinstance(v, str), "a string"),
    "per_head": (lambda v: isinstance(v, bool), "true or false"),
    "mode": (lambda v: v in ("text2img", "img2img", "inpaint"), "'text2img', 'img2img' or 'inpaint'"),
    "strength": (lambda v: v is None or (_is_number(v) and 0 < v <= 1), "null or a number in (0, 1]"),
    "guidance_rescale": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "add_time_id_names": (lambda v: v is None or (isinstance(v, list) and all(isinstance(n, str) for n in v)), "null or a list of strings"),
    "context_split": (lambda v: v is None or (_is_int(v) and v > 0), "null or a positive integer"),
    "words": (lambda v: isinstance(v, list) and all(isinstance(w, list) and len(w) == 3 and isinstance(w[0], str)
                                                    and _is_int(w[1]) and _is_int(w[2]) for w in v), "a list of [word, first, end]"),
    "edits": (lambda v: isinstance(v, list) and all(isinstance(e, dict) and e.get("kind") in ("reweight", "remove", "swap")
                                                   and isinstance(e.get("steps"), list) and isinstance(e.get("layers"), list) for e in v),
              "a list of edits, each an object with kind 'reweight', 'remove' or 'swap', steps and layers"),
    "kept_steps": (lambda v: v is None or (isinstance(v, list) and len(v) > 0 and all(_is_int(i) and i >= 0 for i in v)
                                           and v == sorted(set(v))), "null or an increasing list of step indices"),
    "grid_layers": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_int(n) and n > 0 for k, n in v.items()),
                    "an object of layer counts"),
    "map_layers": (lambda v: isinstance(v, dict) and set(v) == set(_MAP_DICTS)
                   and all(isinstance(names, list) and all(isinstance(n, str) for n in names) for names in v.values()),
                   f"an object with lists of layer names under {list(_MAP_DICTS)}"),
}


def _check_header(meta, tensors: dict[str, torch.Tensor]) -> None:
    """Raise ``ValueError(reason)`` unless ``meta`` and ``tensors`` make a consistent trace."""
    if not isinstance(meta, dict):
        raise ValueError("its header is not a JSON object")
    optional = {f.name for f in fields(Trace) if f.default is not MISSING or f.default_factory is not MISSING}
    unknown = sorted(set(meta) - set(_HEADER))
    missing = sorted(name for name in _HEADER if name not in meta and name not in optional)
    if unknown or missing:
        raise ValueError(f"header fields {unknown} are unknown" if unknown else f"header fields {missing} are missing")
    for name, value in meta.items():
        ok, what = _HEADER[name]
        if not ok(value):
            raise ValueError(f"{name} must be {what} (got {value!r})")

    def shape(name, *expected):
        x = tensors.get(name)
        if x is None or tuple(x.shape) != expected:
            got = "nothing" if x is None else list(x.shape)
            raise ValueError(f"{name} must have shape {list(expected)} (got {got})")

    for name in ("token_ids", "timesteps", "latents", "text_embeddings", "image"):
        if name not in tensors:
            raise ValueError(f"the tensor {name!r} is missing")
    all_steps, length = len(tensors["timesteps"]), len(tensors["token_ids"])
    kept = meta.get("kept_steps")
    if kept is not None and kept[-1] >= all_steps:
        raise ValueError(f"kept_steps {kept} name steps beyond the {all_steps} timesteps")
    steps = all_steps if kept is None else len(kept)  # what each per-step tensor holds
    latents = tensors["latents"]
    if latents.ndim != 4 or len(latents) != steps + 1 or all_steps < 1:
        raise ValueError(f"latents must be [steps + 1, C, h, w] with {steps} (kept) steps (got {list(latents.shape)})")
    latent = tuple(latents.shape[1:])
    shape("timesteps", all_steps), shape("alpha_bars", all_steps), shape("token_ids", length)
    for name in ("noise_pred", "noise_pred_text", "pred_x0"):
        shape(name, steps, *latent)
    width = tensors["text_embeddings"].shape[-1]
    shape("text_embeddings", length, width)
    split = meta.get("context_split")
    if split is not None and not split < width:
        raise ValueError(f"context_split {split} must be below the context's width {width}")
    # SDXL's context is two encoders side by side; each one's layers are as wide as its part
    widths = {"text_hidden_states": width} if split is None else {"text_hidden_states": split, "text_hidden_states_2": width - split}
    for name, w in widths.items():
        hidden = tensors.get(name)
        if hidden is None or hidden.ndim != 3 or tuple(hidden.shape[1:]) != (length, w):
            raise ValueError(f"{name} must be [layers + 1, {length}, {w}] (got {'nothing' if hidden is None else list(hidden.shape)})")
    names = meta.get("add_time_id_names")
    if (names is None) != ("add_time_ids" not in tensors):
        raise ValueError("add_time_ids and add_time_id_names come together (an SDXL trace has both, others neither)")
    if names is not None:
        shape("add_time_ids", len(names))
        pooled = tensors.get("pooled_text_embeds")
        if pooled is None or pooled.ndim != 1:
            raise ValueError(f"an SDXL trace needs pooled_text_embeds [P] (got {'nothing' if pooled is None else list(pooled.shape)})")
        if "uncond_pooled_text_embeds" in tensors:
            shape("uncond_pooled_text_embeds", len(pooled))
    if "token_ids_2" in tensors:
        shape("token_ids_2", length)
    for name, expected in (("noise_pred_uncond", (steps, *latent)), ("uncond_embeddings", (length, width)),
                           ("init_latents", latent), ("mask", latent[1:])):
        if name in tensors:
            shape(name, *expected)
    if "skipped_timesteps" in tensors and tensors["skipped_timesteps"].ndim != 1:
        raise ValueError("skipped_timesteps must be one-dimensional")
    shape("image", meta["height"], meta["width"], 3)
    if tensors["image"].dtype != torch.uint8:
        raise ValueError(f"image must hold uint8 pixels (got {tensors['image'].dtype})")
    if len(meta["tokens"]) > length:
        raise ValueError(f"{len(meta['tokens'])} tokens do not fit into {length} text slots")
    if meta.get("mode", "text2img") != "text2img" and meta.get("strength") is None:
        raise ValueError(f"a {meta['mode']} trace needs a strength")
    if meta.get("mode") == "inpaint" and "mask" not in tensors:
        raise ValueError("an inpaint trace needs its mask")
    for word, first, end in meta.get("words", []):
        if not 1 <= first < end <= len(meta["tokens"]):
            raise ValueError(f"the word {word!r} claims slots {first}–{end}, outside the {len(meta['tokens'])} tokens")
    expected_keys = set()
    for group, names in meta["map_layers"].items():
        for layer in names:
            key = f"{group}/{layer}"
            maps = tensors.get(key)
            entries = 1 if kept is not None else steps  # a compact trace: the mean over the steps
            if maps is None or maps.ndim != 5 or len(maps) != entries:
                raise ValueError(f"{key} must be [{entries}, heads, H, W, keys] (got {'nothing' if maps is None else list(maps.shape)})")
            keys = (length if kept is None else len(meta["tokens"]) + 1) if group == "attention_maps" else maps.shape[2] * maps.shape[3]
            if maps.shape[-1] != keys or (not meta.get("per_head", False) and maps.shape[1] != 1):
                raise ValueError(f"{key} has shape {list(maps.shape)}, which does not fit {keys} keys "
                                 f"{'and per_head' if meta.get('per_head') else 'and one (head-averaged) map per step'}")
            expected_keys.add(key)
    stray = sorted(set(tensors) - set(_TENSORS) - {"image"} - expected_keys)
    if stray:
        raise ValueError(f"it holds tensors no trace field names: {stray[:4]}")
