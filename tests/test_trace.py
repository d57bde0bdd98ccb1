import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file

import illustrated_sd as isd
from illustrated_sd.trace import unet as trace_module

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


# ---- bad requests and tampered files ------------------------------------------------------------

BAD_QUESTIONS = [
    (dict(token="red", step=[]), ValueError, "empty list.*None for the mean"),
    (dict(token="red", step=100), ValueError, "step 100 does not exist.*6 steps, 0–5"),
    (dict(token="red", step=-7), ValueError, "step -7 does not exist"),
    (dict(token="red", step=1.5), TypeError, "step must be a whole number"),
    (dict(token="red", step="0"), TypeError, "step must be a whole number"),
    (dict(token="red", step=[0, 9]), ValueError, "step 9 does not exist"),
    (dict(token="redcircle"), ValueError, "'redcircle' is not a word of the prompt.*\\['a', 'red', 'circle'"),
    (dict(token="circ"), ValueError, "not a word"),
    (dict(token=""), ValueError, "token is empty"),
    (dict(token=None), TypeError, "token must be a word of the prompt or a slot index"),
    (dict(token=2.0), TypeError, "token must be a word"),
    (dict(token=-1), ValueError, "outside the 77 text slots"),
    (dict(token="red", head=0), ValueError, "per_head=True"),
    (dict(token="red", layer=3), ValueError, "recorded resolutions are"),
    (dict(token="red", layer="up_blocks.7"), ValueError, "recorded layers"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_QUESTIONS, ids=[str(row[0]) for row in BAD_QUESTIONS])
def test_bad_questions_to_a_trace_name_the_fix(trace, kwargs, error, message):
    with pytest.raises(error, match=message):
        trace.cross_attention(**kwargs)


def test_steps_and_slots_accept_numpy_and_negative_steps(trace):
    torch.testing.assert_close(trace.cross_attention("red", step=np.int64(0)), trace.cross_attention("red", step=0))
    torch.testing.assert_close(trace.cross_attention("red", step=-1), trace.cross_attention("red", step=trace.num_steps - 1))
    torch.testing.assert_close(trace.cross_attention("red", step=np.array([0, 1])), trace.cross_attention("red", step=[0, 1]))
    torch.testing.assert_close(trace.cross_attention(np.int64(2)), trace.cross_attention("red"))
    torch.testing.assert_close(trace.cross_attention("red", layer=np.int64(8)), trace.cross_attention("red", layer=8))


def test_whole_words_and_phrases_name_their_slots(trace):
    assert trace.words[:3] == [("a", 1, 2), ("red", 2, 3), ("circle", 3, 4)]
    assert trace.token_index("red circle") == [2, 3] and trace.token_index("RED  Circle") == [2, 3]
    assert trace.token_index("<|endoftext|>") == [len(trace.tokens) - 1]
    torch.testing.assert_close(trace.cross_attention("red circle"), trace.cross_attention(2) + trace.cross_attention(3))


@pytest.mark.filterwarnings("ignore:the model never saw")
@pytest.mark.parametrize("prompt, word, pieces", [
    ("a 🔴 circle", "🔴", ["🔴"]),
    ("un cercle rouge à gauche", "à", ["à"]),
    ("un cercle rouge à gauche", "cercle", ["cer", "cle"]),
    ("a 🦩 circle", "🦩", ["🦩[1/2]", "🦩[2/2]"]),  # one character whose bytes CLIP splits over two pieces
])
def test_tokens_are_text_not_clips_bytes(pipe, prompt, word, pieces):
    trace = pipe(prompt, num_inference_steps=1, progress=False)
    assert [trace.tokens[i] for i in trace.token_index(word)] == pieces
    assert not any("ð" in t or "Ã" in t for t in trace.tokens)  # no byte-level garbage left
    assert trace.cross_attention(word).shape == trace.latent_hw


@pytest.mark.filterwarnings("ignore:the model never saw")
def test_a_spelled_out_end_marker_is_read_as_clip_reads_it_and_explained(pipe):
    prompt = "a red <|endoftext|> circle on the left"
    with pytest.warns(UserWarning, match="reads as its own end marker.*still encoded"):
        trace = pipe(prompt, num_inference_steps=1, progress=False)
    assert trace.tokens == ["<|startoftext|>", "a", "red", "<|endoftext|>", "circle", "on", "the", "left", "<|endoftext|>"]
    assert int(trace.token_ids[3]) == int(trace.token_ids[8]) == 49407  # the marker itself, as in CLIP
    assert trace.token_index("circle") == [4]


def test_save_refuses_what_it_must_not_replace(trace, tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(ValueError, match="is a folder.*trace.safetensors"):
        trace.save(folder)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        trace.save(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        trace.save("/dev/null")
    readonly = tmp_path / "kept.safetensors"
    readonly.write_bytes(b"the user's")
    readonly.chmod(0o444)
    with pytest.raises(ValueError, match="read-only.*chmod u\\+w"):
        trace.save(readonly)
    assert readonly.read_bytes() == b"the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "kept.safetensors", "pipe"]  # no temporary left


def test_saving_through_a_symlink_keeps_the_link(trace, tmp_path):
    target = tmp_path / "kept" / "run.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"an older trace")
    target.chmod(0o600)
    link = tmp_path / "latest.safetensors"
    link.symlink_to(target)
    assert trace.save(link) == link
    assert link.is_symlink() and isd.Trace.load(target).prompt == trace.prompt
    assert target.stat().st_mode & 0o777 == 0o600  # overwriting keeps the file's mode
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept", "latest.safetensors", "run.safetensors"]


def test_saved_files_get_the_users_usual_permissions(trace, tmp_path):
    old = os.umask(0o022)
    try:
        path = trace.save(tmp_path / "shared" / "t.safetensors")  # missing folders are made
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_numpy_fields_save_as_plain_json(trace, tmp_path):
    odd = dataclasses.replace(trace, height=np.int64(trace.height), seed=np.int64(7), guidance_scale=np.float32(7.5))
    loaded = isd.Trace.load(odd.save(tmp_path / "t.safetensors"))
    assert (loaded.height, loaded.seed, loaded.guidance_scale) == (trace.height, 7, 7.5)


def rewrite(path, out, meta_edit=None, tensor_edit=None):
    """Re-save a trace file with its header (or tensors) edited, as a curious user might."""
    with safe_open(path, framework="pt") as f:
        header = f.metadata()
    meta = json.loads(header["trace"])
    tensors = load_file(path)
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    save_file(tensors, out, metadata={"format": header["format"], "trace": json.dumps(meta)})
    return out


def _set(key, value):
    return lambda meta: meta.__setitem__(key, value)


TAMPERED = [
    (dict(meta_edit=lambda m: m.pop("prompt")), "header fields \\['prompt'\\] are missing"),
    (dict(meta_edit=_set("height", -5)), "height must be a positive integer \\(got -5\\)"),
    (dict(meta_edit=_set("height", 64)), "image must have shape \\[64, 128, 3\\]"),
    (dict(meta_edit=_set("guidance_scale", "big")), "guidance_scale must be a finite number \\(got 'big'\\)"),
    (dict(meta_edit=_set("tokens", None)), "tokens must be a list"),
    (dict(meta_edit=_set("seed", 1.5)), "seed must be an integer or null"),
    (dict(meta_edit=_set("per_head", "no")), "per_head must be true or false"),
    (dict(meta_edit=_set("mode", "sketch")), "mode must be"),
    (dict(meta_edit=_set("strength", 3)), "strength must be null or a number in \\(0, 1\\]"),
    (dict(meta_edit=_set("words", [["red", 2, 99]])), "claims slots 2–99"),
    (dict(meta_edit=_set("shoe_size", 44)), "header fields \\['shoe_size'\\] are unknown"),
    (dict(meta_edit=lambda m: m["map_layers"]["attention_maps"].append("made.up")), "attention_maps/made.up must be"),
    (dict(meta_edit=lambda m: m["map_layers"].pop("self_attention_maps")), "map_layers must be"),
    (dict(tensor_edit=lambda t: t.pop("latents")), "'latents' is missing"),
    (dict(tensor_edit=lambda t: t.__setitem__("noise_pred", t["noise_pred"][:2])), "noise_pred must have shape \\[6, 4, 16, 16\\]"),
    (dict(tensor_edit=lambda t: t.__setitem__("alpha_bars", t["alpha_bars"][:1])), "alpha_bars must have shape \\[6\\]"),
    (dict(tensor_edit=lambda t: t.__setitem__("stowaway", torch.zeros(1))), "tensors no trace field names: \\['stowaway'\\]"),
    (dict(tensor_edit=lambda t: t.__setitem__("image", t["image"].float())), "image must hold uint8"),
]


@pytest.mark.parametrize("edit, message", TAMPERED, ids=[m.split(" ")[0].strip("\\'[") for _, m in TAMPERED])
def test_tampered_headers_are_refused_with_the_reason(trace, tmp_path, edit, message):
    path = rewrite(trace.save(tmp_path / "t.safetensors"), tmp_path / "edited.safetensors", **edit)
    with pytest.raises(ValueError, match=f"edited.safetensors is not a valid trace: .*{message}.*trace.save"):
        isd.Trace.load(path)


def test_a_json_header_that_is_not_an_object_is_refused(trace, tmp_path):
    path = trace.save(tmp_path / "t.safetensors")
    save_file(load_file(path), tmp_path / "list.safetensors", metadata={"format": trace_module.FORMAT, "trace": "[1, 2]"})
    with pytest.raises(ValueError, match="not a valid trace: its header is not a JSON object"):
        isd.Trace.load(tmp_path / "list.safetensors")
