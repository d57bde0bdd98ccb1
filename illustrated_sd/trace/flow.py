"""FlowTrace: one generation of a diffusion transformer (SD3, SD3.5, Flux), recorded.

It answers the questions a :class:`~illustrated_sd.trace.unet.Trace` of SD 1/2 answers, under the same names
(``cross_attention(word)`` is where the picture looks for a word: image→text attention here), and adds what
only a flow-matching transformer has: σ at each step, the predicted velocity v̂, the joint sequence's text
layout, and the other three quadrants of its attention.
"""

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import checks
from .files import atomic_write, check_replaceable
from ..recording.joint_attention import QUADRANTS

FORMAT = "illustrated_sd.flow_trace/1"
_TENSORS = ("kept_slots", "text_embeddings", "uncond_text_embeddings", "pooled_text_embeds", "sigmas", "timesteps", "latents",
            "velocity", "velocity_text", "velocity_uncond", "pred_x0", "init_latents", "concept_maps")


@dataclass(eq=False)
class FlowTrace:
    """One recorded generation of a flow-matching transformer. ``S`` steps, latent ``[C, h, w]``, image tokens on a
    ``gh × gw`` grid (``N = gh·gw``), ``n`` kept text tokens.

    Attributes:
        family: ``"flux"`` or ``"sd3"``. prompt, negative_prompt, seed, height, width, model, scheduler: the settings.
        guidance_scale: SD3: classifier-free guidance s (v̂ = v̂_u + s·(v̂_c − v̂_u)). Flux-dev: the *distilled*
            guidance, a number the transformer reads as an input (one pass per step; ``None`` for schnell).
        true_cfg_scale: Flux only: real classifier-free guidance with a negative prompt (two passes per step); 1 = off.
        tokens, token_sources, words, kept_slots, text_length, encoders, truncated: the text part of the joint sequence
            (see :class:`~illustrated_sd.loops.flow_prompt.TextLayout`): ``kept_slots [n]`` are the real tokens' slots.
        text_embeddings: ``[T, D]`` the text sequence the transformer reads (T5's, or SD3's CLIP ⊕ T5).
        uncond_text_embeddings: the same for the negative prompt (``None`` without guidance).
        pooled_text_embeds: ``[P]`` CLIP's pooled vector (both CLIPs', side by side, for SD3).
        sigmas: ``[S + 1]`` σ at each step, from 1 (noise) to 0; timesteps: ``[S]`` the values the model was given.
        latents: ``[S + 1, C, h, w]`` x_σ: the noise, then after each step (Flux's packed tokens unpacked; see :meth:`packed`).
        velocity: ``[S, C, h, w]`` the (guided) v̂ the Euler step used: x_next = x + (σ_next − σ)·v̂.
        velocity_text, velocity_uncond: ``[S, C, h, w]`` the prompt's and the negative prompt's predictions.
        pred_x0: ``[S, C, h, w]`` x̂₀ = x_σ − σ·v̂: the clean latent the model believes in at each step.
        patch: latent pixels per side of one image token (2 for both: Flux packs 2×2 pixels, SD3 patchifies 2×2).
        concepts, concept_maps, concept_layers: ConceptAttention (``pipe(..., concepts=[...])``): ``concept_maps
            [S, L, N, C]`` each patch's softmax over the ``C`` concepts in each of the ``L`` blocks ``concept_layers``
            (Flux's double-stream blocks ``double.i``, SD3's joint blocks ``joint.i``) (see :mod:`illustrated_sd.recording.concepts` and :meth:`concept_map`).
        edits: the call's ``isd.edits.Reweight`` / ``Remove`` / ``Swap`` (:mod:`illustrated_sd.recording.flow_edits`), one dict each (``slots`` are
            the joint text sequence's); the maps show the attention the model used, edits included.
        mode: ``"text2img"`` or ``"img2img"``; for img2img also ``strength`` and ``init_latents [C, h, w]`` (the encoded
            picture x₀; ``latents[0]`` is it moved part of the way to the noise, and only the last steps are visited).
        attention: ``{quadrant: [S, L, heads or 1, rows, columns]}``, the model's probabilities over *all* keys:
            image_to_text ``[…, N, n + 1]`` (the kept tokens, then all padding summed), text_to_image ``[…, n, N]``,
            text_to_text ``[…, n, n + 1]``, image_to_image ``[…, N, N]`` (only when asked for).
        layers: the ``L`` recorded layers' names (``double.0``…, ``single.0``… for Flux; ``joint.0``… for SD3).
        per_head: whether maps keep every head.
        kept_steps: ``None`` for a full trace. A *compact* trace (``RecordOptions(compact=True)``, what
            ``illustrated-sd batch`` writes) kept the per-step tensors at these ``k`` steps only: ``latents`` is then
            ``[k + 1, C, h, w]`` (the start, then after each kept step), ``velocity``, ``velocity_text``,
            ``velocity_uncond`` and ``pred_x0`` ``[k, C, h, w]``; and each quadrant of ``attention`` is one map
            ``[1, 1, 1, rows, columns]``, the mean over every step, recorded layer and head (see :attr:`lacks`).
    """

    family: str
    prompt: str
    negative_prompt: str | None
    image: Image.Image
    seed: int | None
    height: int
    width: int
    model: str
    scheduler: str
    guidance_scale: float | None
    true_cfg_scale: float
    tokens: list[str]
    token_sources: list[str]
    words: list[tuple[str, list[int]]]
    kept_slots: torch.Tensor
    text_length: int
    encoders: dict[str, list[int]]
    text_embeddings: torch.Tensor
    pooled_text_embeds: torch.Tensor
    sigmas: torch.Tensor
    timesteps: torch.Tensor
    latents: torch.Tensor
    velocity: torch.Tensor
    velocity_text: torch.Tensor
    pred_x0: torch.Tensor
    patch: int = 2
    uncond_text_embeddings: torch.Tensor | None = None
    velocity_uncond: torch.Tensor | None = None
    truncated: dict[str, str] = field(default_factory=dict)
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)
    per_head: bool = False
    mode: str = "text2img"
    strength: float | None = None
    init_latents: torch.Tensor | None = None
    concepts: list[str] = field(default_factory=list)
    concept_maps: torch.Tensor | None = None
    concept_layers: list[str] = field(default_factory=list)
    edits: list[dict] = field(default_factory=list)
    kept_steps: list[int] | None = None

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def is_compact(self) -> bool:
        """Whether this is a compact trace (a few steps kept, the maps averaged over steps and layers)."""
        return self.kept_steps is not None

    @property
    def lacks(self) -> list[str]:
        """What a compact trace does not have that a full one does (``[]`` for a full trace)."""
        if not self.is_compact:
            return []
        return [f"latents, velocities and x̂₀ at steps other than {self.kept_steps}",
                "attention maps per step, per layer and per head (it keeps each quadrant's mean over all of them)"]

    @property
    def latent_hw(self) -> tuple[int, int]:
        return tuple(self.latents.shape[-2:])

    @property
    def grid_hw(self) -> tuple[int, int]:
        """The image tokens' grid ``(gh, gw)``: the latent's side divided by the patch."""
        h, w = self.latent_hw
        return h // self.patch, w // self.patch

    @property
    def padding_slots(self) -> int:
        """How many text slots are padding (summed into the last column of image_to_text and text_to_text)."""
        return self.text_length - len(self.tokens)

    def __repr__(self) -> str:
        return (f"FlowTrace({self.family}, {self.prompt!r}, {self.num_steps} steps, {self.width}×{self.height} px, "
                f"{len(self.tokens)} text tokens of {self.text_length} slots, {len(self.layers)} layers recorded)")

    def packed(self, latents: torch.Tensor | None = None) -> torch.Tensor:
        """Latents ``[..., C, h, w]`` as the transformer's tokens ``[..., N, C·p·p]`` (Flux packs 2×2 pixels into one
        token: ``rearrange(x, "c (gh p) (gw q) -> (gh gw) (c p q)")``); default: ``self.latents``."""
        x = self.latents if latents is None else latents
        return rearrange(x, "... c (gh p) (gw q) -> ... (gh gw) (c p q)", p=self.patch, q=self.patch)

    def token_index(self, word: str | int, encoder: str | None = None) -> list[int]:
        """The places among ``tokens`` of ``word`` (in every encoder that has it, or in ``encoder`` only), or of token ``int``.

        ``word`` may be a few words side by side in the prompt (``"bottom left"``): every token of each of them.
        Raises ``ValueError`` listing the prompt's words when it is not there.
        """
        if checks.is_int(word):
            if not 0 <= word < len(self.tokens):
                raise ValueError(f"token {word} does not exist: this trace keeps {len(self.tokens)} tokens, 0–{len(self.tokens) - 1}")
            return [int(word)]
        checks.text("word", word, hint="a word of the prompt, e.g. 'red'")
        if encoder is not None and encoder not in self.encoders:
            raise ValueError(f"encoder {encoder!r} is not in this trace; its text comes from {sorted(self.encoders)}")
        wanted, names = word.lower().split(), [w.lower() for w, _ in self.words]
        runs = [self.words[start:start + len(wanted)] for start in range(len(names) - len(wanted) + 1)
                if names[start:start + len(wanted)] == wanted]  # the words side by side, as the prompt says them
        found = sorted({i for run in runs for w, places in run for i in places  # (each encoder's, in SD3: CLIP's and T5's)
                        if encoder is None or self.token_sources[i] == encoder})
        if not found:
            said = sorted({w for w, _ in self.words})
            where = f" in {encoder}'s tokens" if encoder else ""
            raise ValueError(f"{word!r} is not a word of the prompt{where}; its words are {said}")
        return found

    def _maps(self, quadrant: str, step=None, layer=None) -> torch.Tensor:
        """One quadrant averaged over the chosen steps, layers and heads: ``[rows, columns]`` in float32."""
        if quadrant not in self.attention:
            raise ValueError(f"this trace recorded no {quadrant} attention (it has {sorted(self.attention) or 'none'}); generate "
                             f"with record=isd.RecordOptions(quadrants=(..., {quadrant!r}))")
        maps = self.attention[quadrant]
        if self.is_compact:
            if step is not None or layer is not None:
                raise ValueError(f"this compact trace kept the attention averaged over all {self.num_steps} steps and "
                                 f"{len(self.layers)} layers; pass step=None and layer=None, or generate with the default "
                                 "RecordOptions() for maps per step and layer")
            return maps[0, 0, 0].float()
        steps = checks.step_indices(step, self.num_steps)
        if layer is None:
            layers = slice(None)
        else:
            names = [layer] if isinstance(layer, str) else list(layer)
            unknown = [n for n in names if n not in self.layers]
            if unknown:
                raise ValueError(f"layers {unknown} were not recorded; this trace has {self.layers}")
            layers = [self.layers.index(n) for n in names]
        return maps[steps][:, layers].float().mean(dim=(0, 1, 2))

    def cross_attention(self, word: str | int, step=None, layer=None, encoder: str | None = None) -> torch.Tensor:
        """Where the picture looks for ``word``: image→text attention to its tokens (summed), ``[gh, gw]``.

        The mean over the chosen steps (``None`` = all), layers (a name, a list, or ``None`` = all) and heads. Each
        value is a share of the patch's *whole* attention (image and text keys), so a map's values are small where
        the picture mostly attends to itself.
        """
        maps = self._maps("image_to_text", step, layer)[:, self.token_index(word, encoder)].sum(-1)
        return maps.reshape(self.grid_hw)

    def text_to_image(self, word: str | int, step=None, layer=None, encoder: str | None = None) -> torch.Tensor:
        """What ``word`` reads from the picture: its tokens' attention over the image patches (mean over its tokens), ``[gh, gw]``."""
        maps = self._maps("text_to_image", step, layer)[self.token_index(word, encoder)].mean(0)
        return maps.reshape(self.grid_hw)

    def text_share(self, step=None, layer=None) -> torch.Tensor:
        """``[gh, gw]``: the share of each patch's attention that goes to the text (its tokens and padding); the rest
        goes to the picture's own patches."""
        return self._maps("image_to_text", step, layer).sum(-1).reshape(self.grid_hw)

    def padding_share(self, step=None, layer=None) -> float:
        """The share of the picture's attention to the text that the padding slots absorb (0–1)."""
        text = self._maps("image_to_text", step, layer)
        return float(text[:, -1].sum() / text.sum())

    def attention_shares(self, step=None, layer=None) -> dict[str, float]:
        """Each word's share of the picture's attention to the text, ``{word: share, …, "padding": share}``, summing to 1.

        The mean over patches (and the chosen steps, layers and heads) of image→text attention to the word's tokens,
        divided by the attention to the whole text: how the text's part of the joint softmax is split among its words.
        A word said twice counts once, with all its tokens; a kept token that is no word (T5's end marker ``</s>``,
        CLIP's start and end markers in SD3) is listed under its own name.
        """
        text = self._maps("image_to_text", step, layer).mean(0)  # [n + 1]: per kept token, then padding
        total = float(text.sum())
        shares, in_words = {}, {i for _, places in self.words for i in places}
        for word, _ in self.words:
            if word.lower() not in {w.lower() for w in shares}:
                shares[word] = float(text[self.token_index(word)].sum()) / total
        for i, token in enumerate(self.tokens):
            if i not in in_words:
                shares[token] = shares.get(token, 0.0) + float(text[i]) / total
        shares["padding"] = float(text[-1]) / total
        return shares

    def concept_map(self, concept: str, step=None, layer=None) -> torch.Tensor:
        """ConceptAttention's map of ``concept``: each patch's share among the concepts, ``[gh, gw]``, the mean over the
        chosen steps and double-stream blocks (a name such as ``"double.18"``, a list, or ``None`` = all kept)."""
        if self.concept_maps is None:
            raise ValueError("this trace has no concept maps; generate with concepts=[...], e.g. pipe(prompt, concepts=['circle', 'background'])")
        if concept not in self.concepts:
            raise ValueError(f"{concept!r} is not one of this trace's concepts {self.concepts}")
        steps = checks.step_indices(step, self.num_steps)
        names = self.concept_layers if layer is None else ([layer] if isinstance(layer, str) else list(layer))
        unknown = [n for n in names if n not in self.concept_layers]
        if unknown:
            raise ValueError(f"layers {unknown} kept no concept maps; this trace has {self.concept_layers}")
        layers = [self.concept_layers.index(n) for n in names]
        maps = self.concept_maps[steps][:, layers][..., self.concepts.index(concept)].float().mean(dim=(0, 1))
        return maps.reshape(self.grid_hw)

    # ---- saving ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the trace to one ``.safetensors`` file (tensors + JSON header), atomically; returns ``path``."""
        path = Path(path)
        check_replaceable(path, "trace file")
        tensors = {name: getattr(self, name).contiguous().cpu() for name in _TENSORS if getattr(self, name) is not None}
        tensors.update({f"attention/{q}": m.contiguous().cpu() for q, m in self.attention.items()})
        tensors["image"] = torch.from_numpy(np.array(self.image.convert("RGB")))
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in (*_TENSORS, "attention", "image")}
        with atomic_write(path, "trace file") as tmp:
            save_file(tensors, tmp, metadata={"format": FORMAT, "trace": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FlowTrace":
        """Read a trace written by :meth:`save`; ``ValueError`` naming the file and the problem when it is not one."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no trace file at {path}")
        try:
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise ValueError(f"missing header {FORMAT!r}")
            meta, tensors = json.loads(header["trace"]), load_file(path)
            _check(meta, tensors)
        except (SafetensorError, OSError, KeyError, ValueError) as err:
            raise ValueError(f"{path} is not a valid flow trace: {err}; re-create it with trace.save(path)") from None
        meta["words"] = [(w, list(places)) for w, places in meta["words"]]
        attention = {name.split("/", 1)[1]: x for name, x in tensors.items() if name.startswith("attention/")}
        return cls(**meta, **{name: tensors.get(name) for name in _TENSORS}, attention=attention,
                   image=Image.fromarray(tensors["image"].numpy()))


def _check(meta: dict, tensors: dict) -> None:
    """Raise ``ValueError`` unless the header and tensors make a consistent trace."""
    names = {f.name for f in fields(FlowTrace)} - {*_TENSORS, "attention", "image"}
    if not isinstance(meta, dict) or set(meta) - names:
        raise ValueError(f"header fields {sorted(set(meta) - names) if isinstance(meta, dict) else meta!r} are unknown")
    if meta.get("family") not in ("flux", "sd3"):
        raise ValueError(f"family must be 'flux' or 'sd3' (got {meta.get('family')!r})")
    steps = len(tensors["timesteps"])
    kept = meta.get("kept_steps")
    if kept is not None and (not isinstance(kept, list) or not kept or not all(isinstance(i, int) and 0 <= i < steps for i in kept)):
        raise ValueError(f"kept_steps must be a list of step indices 0–{steps - 1} (got {kept!r})")
    entries = steps if kept is None else len(kept)
    if tensors["latents"].ndim != 4 or len(tensors["latents"]) != entries + 1 or tuple(tensors["sigmas"].shape) != (steps + 1,):
        raise ValueError(f"latents must have {entries} + 1 entries and sigmas {steps} + 1")
    n = len(meta["tokens"])
    if len(tensors["kept_slots"]) != n or len(meta["token_sources"]) != n or not all(0 <= i < n for _, p in meta["words"] for i in p):
        raise ValueError(f"tokens, token_sources, kept_slots and words disagree about the {n} kept tokens")
    for q in (name.split("/", 1)[1] for name in tensors if name.startswith("attention/")):
        if q not in QUADRANTS or tensors[f"attention/{q}"].ndim != 5 or len(tensors[f"attention/{q}"]) != (1 if kept else steps):
            raise ValueError(f"attention/{q} must be one of {QUADRANTS}, [{steps}, layers, heads, rows, columns]")
    image = tensors["image"]
    if tuple(image.shape) != (meta["height"], meta["width"], 3) or image.dtype != torch.uint8 or not math.isfinite(steps):
        raise ValueError(f"image must be [{meta['height']}, {meta['width']}, 3] uint8")
