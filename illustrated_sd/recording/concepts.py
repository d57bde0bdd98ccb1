"""ConceptAttention (Helbling et al., ICML 2025): maps of *any* words over a Flux or SD3 picture, from the model's own layers.

Give a list of concepts ("circle", "background", "sky"). Each becomes a token (its encoder's vector of the word,
through the transformer's ``context_embedder``, as a prompt's tokens are) and flows through the blocks that give the
text its own weights (Flux's double-stream blocks, SD3's joint blocks) as a third stream beside the text and the
picture, with the **text stream's own weights** (its adaptive norm, its q/k/v projections, its output projection and
MLP). Concept queries attend to the concepts and the picture; nothing attends to the concepts, so the picture is
exactly the one made without them. In each block, a concept's map is read in the attention's *output* space:
o_patch · o_concept, a softmax over the concepts, for every patch. The paper found these maps sharper than the
image→text attention maps, which are diluted by the softmax over all keys.

Flux and SD3 run the stream the same way (:class:`ConceptStream`); what differs is small (:data:`FAMILIES`): which
encoder gives a concept its vector, and what the blocks are called.

    trace = pipe("a red circle on the left", concepts=["circle", "background"])
    trace.concept_map("circle")          # [gh, gw], each patch's share among the concepts
"""

import torch
import torch.nn.functional as F
from einops import rearrange


class ConceptStream:
    """The concept tokens of one generation, carried through a transformer's text-weighted blocks.

    Args:
        concepts: the words; embeddings: ``[1, C, D]`` their tokens after ``context_embedder``; blocks: the blocks whose
            attention has text projections (Flux's ``transformer_blocks``, SD3's); steps: denoising steps; layers: which
            blocks' maps to keep (indices); image_len: ``N`` image tokens; prefix: the blocks' name in
            ``pipe.attention_layers`` (``"double"`` for Flux, ``"joint"`` for SD3).
    ``maps``: ``[S, L, N, C]`` float32, each patch's softmax over the concepts, in each kept block at each step.
    """

    def __init__(self, concepts: list[str], embeddings: torch.Tensor, blocks, steps: int, layers: list[int], image_len: int,
                 prefix: str = "double"):
        self.concepts, self.start, self.blocks, self.layers = concepts, embeddings, blocks, layers
        self.names = [f"{prefix}.{i}" for i in layers]  # the kept blocks as the trace names them
        self.maps = torch.zeros(steps, len(layers), image_len, len(concepts), device=embeddings.device)
        self.step, self.active, self.state, self.temb = 0, True, None, None

    def before_block(self, index: int, temb: torch.Tensor) -> None:
        """Block ``index`` is about to run with timestep embedding ``temb [B, D]``; the first block starts the stream
        afresh. The prompt's row is the last (SD3's guidance puts the unconditional row first), and its ``temb`` is the
        one the text stream gets (SD3's mixes in the prompt's pooled vector)."""
        if index == 0:
            self.state = self.start
        self.temb = temb[-1:]

    def attend(self, index: int, attn, image_key, image_value, image_out) -> None:
        """Block ``index``'s attention for the concepts: ``image_key, image_value, image_out [1, heads, N, d]`` are the
        picture's (RoPE applied) from the block's own attention call, which the concepts read but do not change."""
        if not self.active:
            return
        block, c = self.blocks[index], self.state
        heads = lambda x: rearrange(x, "b c (h d) -> b h c d", h=attn.heads)  # noqa: E731
        # the text stream's own layers: adaptive norm, projections, q/k norms (Flux's RoPE at text position 0 is the
        # identity). SD3's last block is "context_pre_only": the text is read there but not carried on, so its norm
        # has no gates and its attention no output projection; the stream ends with that block's map.
        last = attn.context_pre_only
        if last:
            norm_c = block.norm1_context(c, self.temb)
        else:
            norm_c, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(c, emb=self.temb)
        q, k, v = heads(attn.add_q_proj(norm_c)), heads(attn.add_k_proj(norm_c)), heads(attn.add_v_proj(norm_c))
        if attn.norm_added_q is not None:  # (SD3 without qk_norm has none; SD3.5 and Flux RMS-normalise)
            q, k = attn.norm_added_q(q), attn.norm_added_k(k)
        out = F.scaled_dot_product_attention(q, torch.cat([k, image_key], 2), torch.cat([v, image_value], 2))  # [1, h, C, d]
        if index in self.layers:  # the map, in the attention's output space: softmax over the concepts of o_patch · o_concept
            flat = lambda x: rearrange(x[0], "h n d -> n (h d)").float()  # noqa: E731
            self.maps[self.step, self.layers.index(index)] = torch.softmax(flat(image_out) @ flat(out).T, dim=-1)
        if last:
            return
        c = c + gate_msa.unsqueeze(1) * attn.to_add_out(rearrange(out, "b h c d -> b c (h d)").to(c.dtype))
        norm = block.norm2_context(c) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        self.state = c + gate_mlp.unsqueeze(1) * block.ff_context(norm)


def t5_word_vectors(pipeline, concepts: list[str], device) -> torch.Tensor:
    """Flux: ``[C, D_t5]``, each concept's T5 vector (the mean of its pieces, T5 reading the word alone)."""
    tokenizer, encoder = pipeline.tokenizer_2, pipeline.text_encoder_2
    vectors = []
    for concept in concepts:
        ids = tokenizer(concept, return_tensors="pt").input_ids.to(device)  # the word's pieces, then </s>
        vectors.append(encoder(ids, output_hidden_states=False)[0][0, :-1].mean(0))  # [pieces, D_t5] → [D_t5]
    return torch.stack(vectors)


def clip_word_vectors(pipeline, concepts: list[str], device) -> torch.Tensor:
    """SD3: ``[C, D]``, each concept as SD3's CLIP slots hold a token: CLIP-L's and CLIP-G's penultimate-layer vectors
    side by side, zero-padded to T5's width (the mean of the word's pieces, CLIP reading ``<start> word <end>``).

    CLIP, not T5: every SD3 has both CLIPs (T5 may be left out), and ConceptAttention's own SD3 code encodes concepts
    in the CLIP slots. CLIP is causal, so the word's pieces read alone are the same as at the start of a padded prompt.
    """
    width = pipeline.transformer.config.joint_attention_dim
    vectors = []
    for concept in concepts:
        halves = []
        for tokenizer, encoder in ((pipeline.tokenizer, pipeline.text_encoder), (pipeline.tokenizer_2, pipeline.text_encoder_2)):
            ids = tokenizer(concept, return_tensors="pt").input_ids.to(device)  # <start>, the word's pieces, <end>
            states = encoder(ids, output_hidden_states=True).hidden_states[-2][0, 1:-1]  # as SD3 reads CLIP: layer −2
            halves.append(states.mean(0))
        vectors.append(F.pad(torch.cat(halves), (0, width - sum(h.shape[-1] for h in halves))))
    return torch.stack(vectors)


# What differs between the families: which encoder's vector a concept starts from, and the blocks' name
FAMILIES = {"flux": (t5_word_vectors, "double"), "sd3": (clip_word_vectors, "joint")}


def concept_stream(family: str, pipeline, concepts: list[str], steps: int, layers: list[int] | None, image_len: int,
                   device) -> ConceptStream:
    """The :class:`ConceptStream` of one generation of a ``"flux"`` or ``"sd3"`` diffusers ``pipeline``: ``concepts``
    as tokens ``[1, C, D]`` (their word vectors through ``context_embedder``, as a prompt's tokens enter it), over every
    block with text projections, keeping the maps of ``layers`` (indices; ``None`` = all) for ``steps`` steps."""
    word_vectors, prefix = FAMILIES[family]
    transformer = pipeline.transformer
    vectors = word_vectors(pipeline, concepts, device)
    embeddings = transformer.context_embedder(vectors[None].to(transformer.dtype))  # [1, C, D]
    blocks = list(transformer.transformer_blocks)
    kept = list(range(len(blocks))) if layers is None else list(layers)
    return ConceptStream(concepts, embeddings, blocks, steps, kept, image_len, prefix)
