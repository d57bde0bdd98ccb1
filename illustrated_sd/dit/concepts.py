"""ConceptAttention (Helbling et al., ICML 2025): maps of *any* words over a Flux picture, from the model's own layers.

Give a list of concepts ("circle", "background", "sky"). Each becomes a token (T5's vector of the word, through the
transformer's ``context_embedder``, as a prompt's tokens are) and flows through every double-stream block as a third
stream beside the text and the picture, with the **text stream's own weights** (its adaptive norm, its q/k/v
projections, its output projection and MLP). Concept queries attend to the concepts and the picture; nothing attends
to the concepts, so the picture is exactly the one made without them. In each block, a concept's map is read in the
attention's *output* space: o_patch · o_concept, a softmax over the concepts, for every patch. The paper found these
maps sharper than the image→text attention maps, which are diluted by the softmax over all keys.

    trace = pipe("a red circle on the left", concepts=["circle", "background"])
    trace.concept_map("circle")          # [gh, gw], each patch's share among the concepts
"""

import torch
import torch.nn.functional as F
from einops import rearrange


class ConceptStream:
    """The concept tokens of one generation, carried through a Flux transformer's double-stream blocks.

    Args:
        concepts: the words; embeddings: ``[1, C, D]`` their tokens after ``context_embedder``; blocks: the double-stream
            blocks; steps: denoising steps; layers: which double-stream blocks' maps to keep (indices).
    ``maps``: ``[S, L, N, C]`` float32, each patch's softmax over the concepts, in each kept block at each step.
    """

    def __init__(self, concepts: list[str], embeddings: torch.Tensor, blocks, steps: int, layers: list[int], image_len: int):
        self.concepts, self.start, self.blocks, self.layers = concepts, embeddings, blocks, layers
        self.maps = torch.zeros(steps, len(layers), image_len, len(concepts), device=embeddings.device)
        self.step, self.active, self.state, self.temb = 0, True, None, None

    def before_block(self, index: int, temb: torch.Tensor) -> None:
        """Block ``index`` is about to run with timestep embedding ``temb``; the first block starts the stream afresh."""
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
        # the text stream's own layers: adaptive norm, projections, q/k norms (RoPE at text position 0 is the identity)
        norm_c, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(c, emb=self.temb)
        q, k, v = attn.norm_added_q(heads(attn.add_q_proj(norm_c))), attn.norm_added_k(heads(attn.add_k_proj(norm_c))), heads(attn.add_v_proj(norm_c))
        out = F.scaled_dot_product_attention(q, torch.cat([k, image_key], 2), torch.cat([v, image_value], 2))  # [1, h, C, d]
        if index in self.layers:  # the map, in the attention's output space: softmax over the concepts of o_patch · o_concept
            flat = lambda x: rearrange(x[0], "h n d -> n (h d)").float()  # noqa: E731
            self.maps[self.step, self.layers.index(index)] = torch.softmax(flat(image_out) @ flat(out).T, dim=-1)
        c = c + gate_msa.unsqueeze(1) * attn.to_add_out(rearrange(out, "b h c d -> b c (h d)").to(c.dtype))
        norm = block.norm2_context(c) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        self.state = c + gate_mlp.unsqueeze(1) * block.ff_context(norm)


def concept_embeddings(flux, transformer, concepts: list[str], device) -> torch.Tensor:
    """``[1, C, D]``: each concept's T5 vector (the mean of its pieces, T5 reading the word alone) through the
    transformer's ``context_embedder``, as a prompt's tokens enter it."""
    tokenizer, encoder = flux.tokenizer_2, flux.text_encoder_2
    vectors = []
    for concept in concepts:
        ids = tokenizer(concept, return_tensors="pt").input_ids.to(device)  # the word's pieces, then </s>
        states = encoder(ids, output_hidden_states=False)[0][0, :-1]  # [pieces, D_t5]
        vectors.append(states.mean(0))
    return transformer.context_embedder(torch.stack(vectors)[None].to(transformer.dtype))
