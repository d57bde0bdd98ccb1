import numpy as np
import pytest
import torch

import illustrated_sd as isd
from illustrated_sd.recording.attention_layers import attention_layers
from illustrated_sd.recording.recorders import StepRecorder, record_attention

from .conftest import PROMPT


def test_maps_are_probabilities_over_tokens(trace):
    for name, maps in trace.attention_maps.items():
        assert maps.shape[:2] == (trace.num_steps, 1) and maps.shape[-1] == 77, name
        torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
        assert (maps >= 0).all()


def test_layers_are_listed_in_the_order_the_unet_runs_them(pipe, trace):
    # diffusers makes the up blocks before the middle one, so named_modules() puts "mid" last; a table of the layers
    # should read down → mid → up, as the latent travels
    for names in (list(attention_layers(pipe.unet)["cross"]), list(trace.attention_maps)):
        parts = [name.split(".")[0] for name in names]
        assert parts == sorted(parts, key=["down_blocks", "mid_block", "up_blocks"].index), parts
        assert "mid_block" in parts


def test_maps_equal_the_classic_attention_computation(pipe):
    """softmax(QKᵀ/√d) from the hooks equals diffusers' own get_attention_scores for the same layer."""
    unet = pipe.unet
    name, attn = next(iter(attention_layers(unet)["cross"].items()))
    seen = {}
    handle = attn.register_forward_pre_hook(lambda m, args, kwargs: seen.update(h=args[0], enc=kwargs["encoder_hidden_states"]), with_kwargs=True)
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    options = isd.RecordOptions(layers=[name], per_head=True)
    try:
        with torch.no_grad(), record_attention(unet, options, (16, 16), num_steps=1, rows=slice(1, 2)) as recording:
            unet(latents, 500, encoder_hidden_states=text)
            recording.collect(0)
    finally:
        handle.remove()
    recorded = recording.maps("cross", to_cpu=True)[name][0]  # [heads, H, W, 77]
    with torch.no_grad():
        q = attn.head_to_batch_dim(attn.to_q(seen["h"][1:]))
        k = attn.head_to_batch_dim(attn.to_k(seen["enc"][1:]))
        classic = attn.get_attention_scores(q, k)  # [heads, H·W, 77]
    torch.testing.assert_close(recorded.flatten(1, 2), classic, atol=1e-6, rtol=1e-5)


def test_per_head_maps_average_to_the_head_mean(pipe, head_trace):
    mean_trace = pipe(PROMPT, num_inference_steps=3, seed=0, progress=False)
    for name, maps in head_trace.attention_maps.items():
        heads = dict(pipe.unet.named_modules())[name].heads
        assert maps.shape[1] == heads
        torch.testing.assert_close(maps.mean(1, keepdim=True), mean_trace.attention_maps[name])


def test_self_attention_maps_at_chosen_resolution(head_trace):
    assert head_trace.self_attention_maps, "the 8×8 middle block has self-attention"
    for name, maps in head_trace.self_attention_maps.items():
        assert "attn1" in name
        assert maps.shape[2:] == (8, 8, 64)
        torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))


def test_layer_subset_dtype_and_device_options(pipe):
    layer = pipe.cross_attention_layers[-1]
    options = isd.RecordOptions(layers=[layer], map_dtype=torch.float16, to_cpu=False)
    trace = pipe(PROMPT, num_inference_steps=2, seed=0, progress=False, record=options)
    assert list(trace.attention_maps) == [layer]
    assert trace.attention_maps[layer].dtype == torch.float16
    assert not pipe(PROMPT, num_inference_steps=2, progress=False, record=isd.RecordOptions(cross_attention=False)).attention_maps


def test_unknown_layer_is_refused_with_the_list(pipe):
    with pytest.raises(ValueError, match="the UNet has: .*attn2"):
        pipe(PROMPT, num_inference_steps=2, progress=False, record=isd.RecordOptions(layers=["up_blocks.9.attn2"]))


def test_step_recorder_allocates_once_and_fills_each_step():
    recorder = StepRecorder(3)
    for i in range(3):
        recorder(i, x=torch.full((2,), float(i)))
    assert recorder.buffers["x"].tolist() == [[0, 0], [1, 1], [2, 2]]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(map_dtype=torch.int8), ValueError, "floating-point dtype.*round to 0.*torch.float16"),
    (dict(map_dtype="float16"), TypeError, "torch dtype such as torch.float16"),
    (dict(layers="mid_block.attentions.0.transformer_blocks.0.attn2"), TypeError, "list of layer names"),
    (dict(layers=[3]), TypeError, "list of layer names"),
    (dict(layers=[]), ValueError, "cross_attention=False"),
    (dict(memory_budget_gib="2"), TypeError, "memory_budget_gib must be a number.*GiB"),
    (dict(memory_budget_gib=0), ValueError, "> 0 GiB.*None for no limit"),
    (dict(memory_budget_gib=float("nan")), ValueError, "finite"),
    (dict(per_head="yes"), TypeError, "per_head must be True or False"),
    (dict(cross_attention=1), TypeError, "cross_attention must be True or False"),
    (dict(self_attention_resolutions=8), TypeError, "tuple of grid sizes such as \\(8,\\)"),
    (dict(self_attention_resolutions=(8.5,)), TypeError, "whole number"),
])
def test_record_options_refuse_mistakes_when_made(kwargs, error, message):
    with pytest.raises(error, match=message):
        isd.RecordOptions(**kwargs)


def test_record_options_take_numpy_numbers_and_tuples():
    options = isd.RecordOptions(memory_budget_gib=np.float32(1.5), self_attention_resolutions=[np.int64(8)], layers=("a",))
    assert options.memory_budget_gib == 1.5 and options.self_attention_resolutions == (8,) and options.layers == ["a"]
