"""The Trace: everything one generation did, in one object that plots, widgets and reports read.

A Trace is plain data (tensors on the CPU, strings, numbers, the image). It is filled once by the
pipeline and never changes afterwards; ``save``/``load`` round-trip it losslessly through a single
safetensors file whose header carries the non-tensor fields as JSON.
"""

import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

FORMAT = "illustrated_sd.trace/1"

# Tensors saved under their own name; None (e.g. no unconditional branch without guidance) is skipped.
_TENSORS = (
    "token_ids", "text_embeddings", "uncond_embeddings", "text_hidden_states", "timesteps", "alpha_bars",
    "latents", "noise_pred", "noise_pred_text", "noise_pred_uncond", "pred_x0", "init_latents", "skipped_timesteps", "mask",
)
_MAP_DICTS = ("attention_maps", "self_attention_maps")


@dataclass(eq=False)
class Trace:
    """One recorded generation. ``S`` = denoising steps, ``C×h×w`` = latent, ``D`` = text width.

    Attributes:
        prompt, negative_prompt: the text asked for (``negative_prompt`` is ``None`` for the empty one).
        tokens: readable CLIP pieces from ``<|startoftext|>`` to ``<|endoftext|>``.
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
        mode: ``"text2img"``, ``"img2img"`` or ``"inpaint"``; for img2img also ``strength``, ``init_latents [C, h, w]``
            (the encoded input image, before noising) and ``skipped_timesteps`` (the noisiest ones, not visited).
            ``"inpaint"`` adds ``mask [h, w]``: 1 where the model repainted, at latent resolution.
        image: the generated ``PIL.Image``.
        guidance_scale, seed, height, width, scheduler, prediction_type, model: the settings.
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

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def nbytes(self) -> int:
        """Bytes held by the trace's tensors (the image aside); compare ``budget.estimate_trace``."""
        tensors = [getattr(self, name) for name in _TENSORS]
        tensors += [m for maps in (self.attention_maps, self.self_attention_maps) for m in maps.values()]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    @property
    def latent_hw(self) -> tuple[int, int]:
        return tuple(self.latents.shape[-2:])

    def __repr__(self) -> str:
        maps = f"{len(self.attention_maps)} cross-attention layers" if self.attention_maps else "no attention maps"
        return (
            f"Trace({self.prompt!r}, {self.num_steps} steps of {self.scheduler}, guidance {self.guidance_scale}, "
            f"seed {self.seed}, {self.width}×{self.height} px, latent {list(self.latents.shape[1:])}, {maps})"
        )

    # ---- asking questions of the trace -------------------------------------------------------

    def token_index(self, token: str | int) -> list[int]:
        """The positions (in the 77 slots) that ``token`` names.

        ``token`` is a position (``int``) or a word of the prompt; a word split into several BPE
        pieces gives all of them, a word that occurs twice gives its first occurrence. Raises
        ``ValueError`` listing the prompt's tokens when the word is not there.
        """
        if isinstance(token, (int, np.integer)):
            if not 0 <= token < len(self.token_ids):
                raise ValueError(f"token index {token} is outside the {len(self.token_ids)} text slots")
            return [int(token)]
        word = token.lower().strip()
        tokens = [t.lower() for t in self.tokens]
        for start in range(len(tokens)):
            for end in range(start + 1, len(tokens) + 1):
                if "".join(tokens[start:end]) == word:
                    return list(range(start, end))
        words = [t for t in self.tokens[1:-1]]
        raise ValueError(f"{token!r} is not a token of the prompt {self.prompt!r}; its tokens are {words} (or pass an index 0–76)")

    def layers_at(self, resolution: int) -> list[str]:
        """Names of the recorded cross-attention layers whose grid is ``resolution`` high."""
        return [name for name, m in self.attention_maps.items() if m.shape[2] == resolution]

    def cross_attention(self, token: str | int, step=None, layer=None, head=None) -> torch.Tensor:
        """Where in the image the UNet looked at ``token``: a heatmap at latent resolution.

        Args:
            token: a word of the prompt (its BPE pieces are summed, as DAAM does) or a slot index.
            step: an int, a list of ints, or ``None`` for the mean over all steps.
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
        if layer is None:
            names = list(self.attention_maps)
        elif isinstance(layer, int):
            names = self.layers_at(layer)
            if not names:
                sizes = sorted({m.shape[2] for m in self.attention_maps.values()})
                raise ValueError(f"no recorded layer works at {layer}×{layer}; recorded resolutions are {sizes}")
        elif layer in self.attention_maps:
            names = [layer]
        else:
            raise ValueError(f"layer {layer!r} was not recorded; recorded layers: {list(self.attention_maps)}")
        steps = slice(None) if step is None else ([step] if isinstance(step, int) else list(step))
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
        return torch.stack(heat).mean(0)

    # ---- saving ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the trace to one ``.safetensors`` file (tensors + JSON header); returns the path.

        The file is written to a temporary name and renamed, so an interrupted save never leaves a
        half-written trace behind.
        """
        path = Path(path)
        tensors = {name: getattr(self, name).contiguous() for name in _TENSORS if getattr(self, name) is not None}
        for group in _MAP_DICTS:
            for layer, m in getattr(self, group).items():
                tensors[f"{group}/{layer}"] = m.contiguous().cpu()
        tensors["image"] = torch.from_numpy(np.array(self.image.convert("RGB")))  # [H, W, 3] uint8
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in (*_TENSORS, *_MAP_DICTS, "image")}
        meta["map_layers"] = {group: list(getattr(self, group)) for group in _MAP_DICTS}
        header = {"format": FORMAT, "trace": json.dumps(meta)}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file({k: v.cpu() for k, v in tensors.items()}, tmp, metadata=header)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trace":
        """Read a trace written by :meth:`save`. Raises ``ValueError`` naming the file if it is not one."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no trace file at {path}")
        try:
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise ValueError(f"missing header {FORMAT!r}")
            meta = json.loads(header["trace"])
            tensors = load_file(path)
        except (SafetensorError, ValueError, KeyError, OSError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{path} is not a readable illustrated_sd trace ({err}); it may be corrupt or cut short. "
                "Re-create it with trace.save(path)."
            ) from err
        layers = meta.pop("map_layers")
        kwargs = {name: tensors.get(name) for name in _TENSORS}
        for group in _MAP_DICTS:
            kwargs[group] = {layer: tensors[f"{group}/{layer}"] for layer in layers[group]}
        kwargs["image"] = Image.fromarray(tensors["image"].numpy())
        return cls(**meta, **kwargs)
