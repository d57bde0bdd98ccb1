import os

import numpy as np
import pytest
import torch

import illustrated_sd as isd
from illustrated_sd import trace as trace_module

from .conftest import PROMPT


def assert_traces_equal(a, b):
    for name in trace_module._TENSORS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or torch.equal(x, y), name
    for group in trace_module._MAP_DICTS:
        assert list(getattr(a, group)) == list(getattr(b, group))
        for layer in getattr(a, group):
            assert torch.equal(getattr(a, group)[layer], getattr(b, group)[layer])
    for name in ("prompt", "negative_prompt", "tokens", "truncated_text", "guidance_scale", "seed", "height", "width",
                 "scheduler", "prediction_type", "model", "per_head"):
        assert getattr(a, name) == getattr(b, name), name
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


@pytest.mark.parametrize("which", ["trace", "head_trace"])
def test_save_load_round_trip_is_lossless(which, request, tmp_path):
    trace = request.getfixturevalue(which)
    path = trace.save(tmp_path / "run.trace.safetensors")
    assert_traces_equal(trace, isd.Trace.load(path))


def test_save_of_a_trace_without_guidance(pipe, tmp_path):
    trace = pipe(PROMPT, num_inference_steps=2, guidance_scale=1.0, progress=False)
    loaded = isd.Trace.load(trace.save(tmp_path / "t.safetensors"))
    assert loaded.noise_pred_uncond is None and loaded.uncond_embeddings is None


def test_corrupt_or_foreign_files_are_refused(trace, tmp_path):
    path = trace.save(tmp_path / "t.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(os.urandom(1000))
    for bad in (cut, noise):
        with pytest.raises(ValueError, match="not a valid trace.*trace.save"):
            isd.Trace.load(bad)
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="missing header"):
        isd.Trace.load(foreign)
    with pytest.raises(FileNotFoundError):
        isd.Trace.load(tmp_path / "absent.safetensors")


def test_failed_save_leaves_nothing_behind(trace, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(trace_module, "save_file", disk_full)
    with pytest.raises(OSError):
        trace.save(tmp_path / "t.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_cross_attention_aggregates(trace):
    h, w = trace.latent_hw
    heat = trace.cross_attention("circle")
    assert heat.shape == (h, w) and (heat > 0).all()
    by_index = trace.cross_attention(3)
    torch.testing.assert_close(heat, by_index)
    # mean over steps of per-step heatmaps = heatmap of all steps
    per_step = torch.stack([trace.cross_attention("circle", step=s) for s in range(trace.num_steps)])
    torch.testing.assert_close(per_step.mean(0), heat)
    one_layer = trace.cross_attention("red", layer=8)
    assert one_layer.shape == (h, w)
    name = trace.layers_at(16)[0]
    torch.testing.assert_close(trace.cross_attention("red", step=[0, 1], layer=name),
                               trace.attention_maps[name][[0, 1], :, :, :, 2].mean((0, 1)))


def test_all_slots_share_each_pixels_attention(trace):
    total = sum(trace.cross_attention(i) for i in range(77))
    torch.testing.assert_close(total, torch.ones(trace.latent_hw))


@pytest.mark.filterwarnings("ignore:the model never saw")
def test_words_split_into_several_pieces_are_summed(pipe):
    trace = pipe("a photorealistic star", num_inference_steps=2, progress=False)
    pieces = trace.token_index("photorealistic")
    assert len(pieces) == 2 and "".join(trace.tokens[i] for i in pieces) == "photorealistic"
    torch.testing.assert_close(trace.cross_attention("photorealistic"), sum(trace.cross_attention(i) for i in pieces))


def test_cross_attention_bad_requests_name_the_fix(trace, head_trace):
    with pytest.raises(ValueError, match=r"'dog' is not a word.*\['a', 'red', 'circle', 'on', 'the', 'left'\]"):
        trace.cross_attention("dog")
    with pytest.raises(ValueError, match="outside the 77"):
        trace.cross_attention(77)
    with pytest.raises(ValueError, match="recorded resolutions are"):
        trace.cross_attention("red", layer=3)
    with pytest.raises(ValueError, match="recorded layers"):
        trace.cross_attention("red", layer="up_blocks.7")
    with pytest.raises(ValueError, match="per_head=True"):
        trace.cross_attention("red", head=0)
    assert head_trace.cross_attention("red", head=1).shape == head_trace.latent_hw
    with pytest.raises(ValueError, match="does not exist"):
        head_trace.cross_attention("red", head=99)


def test_repr_names_the_essentials(trace):
    text = repr(trace)
    assert PROMPT in text and "6 steps" in text and "DDIMScheduler" in text
