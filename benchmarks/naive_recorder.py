"""The reference peer for the GPU benchmark: attention recording the way DAAM-style tools do it.

Every attention layer is switched to diffusers' classic ``AttnProcessor``, which materialises
softmax(QKᵀ/√d) as a tensor instead of calling the fused ``scaled_dot_product_attention`` kernel;
each cross-attention layer's probabilities (prompt half, head-averaged) are copied to the host at
every step. This is what ``IllustratedPipeline``'s recorders avoid; the benchmark measures by how much.
"""

from contextlib import contextmanager

from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from illustrated_sd.recording.attention_layers import attention_layers


@contextmanager
def naive_recording(unet):
    """Within the block, ``unet`` runs the classic attention path and records into the yielded dict.

    Yields:
        ``{layer: [map per UNet call]}`` with maps ``[H·W, 77]`` in float32 on the CPU.
    """
    store = {}
    unet.set_attn_processor(AttnProcessor())
    cross = attention_layers(unet)["cross"]
    for name, attn in cross.items():
        original, store[name] = attn.get_attention_scores, []

        def recording(query, key, attention_mask=None, original=original, maps=store[name]):
            probs = original(query, key, attention_mask)  # [batch·heads, queries, keys]
            prompt_half = probs[probs.shape[0] // 2:]
            maps.append(prompt_half.float().mean(0).cpu())  # a host copy per layer and step: the GPU waits
            return probs

        attn.get_attention_scores = recording
    try:
        yield store
    finally:
        for attn in cross.values():
            del attn.get_attention_scores  # the class's own method again
        unet.set_attn_processor(AttnProcessor2_0())
