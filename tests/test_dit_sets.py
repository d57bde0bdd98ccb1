"""Diffusion transformers in prompt sets: compact flow traces, `illustrated-sd batch` and `explain` on SD3 / Flux folders."""

import json
import warnings

import numpy as np
import pytest
import torch

import illustrated_sd as isd
from illustrated_sd.recording import joint_attention
from illustrated_sd.trace.sets import TraceSet
from illustrated_sd.cli import main

PROMPT = "a red circle on the left"
COMPACT = isd.RecordOptions(compact=True, keep_steps=2)


@pytest.fixture(scope="module")
def pipes():
    return {layout: isd.IllustratedPipeline(isd.build_random_pipeline(layout, seed=1)) for layout in ("tiny-flux", "tiny-sd3")}


@pytest.fixture(scope="module")
def folders(pipes, tmp_path_factory):
    """Each tiny pipeline saved as a diffusers folder, as a user's checkpoint would be."""
    root = tmp_path_factory.mktemp("models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for layout, pipe in pipes.items():
            pipe.pipeline.save_pretrained(root / layout)
    return {layout: root / layout for layout in pipes}


@pytest.mark.parametrize("road", ["PyTorch", "GPU kernels"])
@pytest.mark.parametrize("layout, settings", [("tiny-flux", dict(guidance_scale=3.5)),
                                              ("tiny-sd3", dict(guidance_scale=7.0, negative_prompt="a blue square"))])
def test_a_compact_flow_trace_is_the_full_traces_mean_and_a_few_steps(pipes, layout, settings, road, request, monkeypatch, tmp_path):
    pipe = pipes[layout]
    kwargs = dict(num_inference_steps=4, seed=3, max_sequence_length=16, progress=False, **settings)
    full = pipe(PROMPT, **kwargs)
    if road == "GPU kernels":  # each layer's mean added up by the kernels as the loop goes (through Triton's interpreter)
        kernels = request.getfixturevalue("interpreted_kernels")
        monkeypatch.setattr(joint_attention, "SMALL_ROAD_LIMIT", 0)
        monkeypatch.setattr(joint_attention, "fused_kernels", lambda *args: kernels)
    compact = pipe(PROMPT, record=COMPACT, **kwargs)
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(compact.image), np.asarray(full.image))  # recording never changes the picture
    assert compact.is_compact and not full.is_compact and compact.kept_steps == [0, 3] and compact.lacks and not full.lacks
    # the kept steps' tensors are the full trace's at those steps; latents: the start, then after each kept step
    torch.testing.assert_close(compact.latents, full.latents[[0, 1, 4]])
    torch.testing.assert_close(compact.velocity, full.velocity[[0, 3]])
    torch.testing.assert_close(compact.pred_x0, full.pred_x0[[0, 3]])
    # one map per quadrant, the mean over every step, layer and head: the full trace's answers over all of them
    for quadrant in ("image_to_text", "text_to_image", "text_to_text"):
        assert compact.attention[quadrant].shape[:3] == (1, 1, 1)
        torch.testing.assert_close(compact.attention[quadrant][0, 0, 0], full.attention[quadrant].float().mean(dim=(0, 1, 2)))
    torch.testing.assert_close(compact.cross_attention("circle"), full.cross_attention("circle"))
    assert compact.attention_shares() == pytest.approx(full.attention_shares(), abs=1e-6)
    with pytest.raises(ValueError, match="compact trace kept the attention averaged over all 4 steps and .* layers; pass step=None"):
        compact.cross_attention("circle", step=0)
    loaded = isd.Trace.load(compact.save(tmp_path / "c.safetensors"))
    assert loaded.kept_steps == [0, 3] and loaded.latents.shape[0] == 3
    torch.testing.assert_close(loaded.cross_attention("circle"), compact.cross_attention("circle"))
    # small: the maps shrink by steps × layers, and the file with them
    steps_layers = 4 * len(full.layers)
    assert full.attention["image_to_text"].numel() == steps_layers * compact.attention["image_to_text"].numel()
    assert (tmp_path / "c.safetensors").stat().st_size < full.save(tmp_path / "f.safetensors").stat().st_size


def test_attention_shares_split_the_texts_part_of_the_softmax_among_the_words(pipes):
    trace = pipes["tiny-flux"](PROMPT, num_inference_steps=2, max_sequence_length=16, progress=False)
    shares = trace.attention_shares()
    assert list(shares) == ["a", "red", "circle", "on", "the", "left", "</s>", "padding"] and sum(shares.values()) == pytest.approx(1)
    text = trace.attention["image_to_text"].float().mean(dim=(0, 1, 2, 3))  # per kept token, then the padding
    assert shares["red"] == pytest.approx(float(text[trace.token_index("red")].sum() / text.sum()))
    assert shares["padding"] == pytest.approx(trace.padding_share())


def test_a_damaged_compact_header_is_refused(pipes, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = pipes["tiny-sd3"](PROMPT, num_inference_steps=3, max_sequence_length=16, progress=False, record=COMPACT).save(tmp_path / "t.safetensors")
    with safe_open(path, framework="pt") as f:
        header = f.metadata()
    meta = json.loads(header["trace"])
    meta["kept_steps"] = [0, 7]
    save_file(load_file(path), tmp_path / "bad.safetensors", metadata={**header, "trace": json.dumps(meta)})
    with pytest.raises(ValueError, match="not a valid flow trace: kept_steps must be a list of step indices 0–2"):
        isd.Trace.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("layout", ["tiny-flux", "tiny-sd3"])
def test_batch_traces_a_prompt_set_of_a_flow_model_and_resumes(pipes, folders, layout, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle on the left\na blue square at the top\n")
    out = tmp_path / "set"
    assert main(["batch", str(prompts), "--model", str(folders[layout]), "--out", str(out), "--steps", "2"]) == 0
    assert "2 of 2 prompts traced" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    defaults = isd.models.loading.model_defaults(folders[layout])
    assert [r["guidance"] for r in rows] == [defaults["guidance"]] * 2 == [3.5 if layout == "tiny-flux" else 7.0] * 2
    traces = TraceSet(out)
    trace = traces[1]
    assert isinstance(trace, isd.FlowTrace) and trace.is_compact and trace.prompt == "a blue square at the top" and trace.seed == 1
    # the index's summary is the trace's: each word's share and where its map peaks, in image tokens
    assert rows[1]["words"]["square"]["share"] == pytest.approx(trace.attention_shares()["square"], abs=1e-5)
    heat = trace.cross_attention("square")
    assert rows[1]["words"]["square"]["peak"] == list(divmod(int(heat.argmax()), heat.shape[1]))
    # the same picture as a call of the loaded pipeline with the same settings (the folder's own size: Flux's is 1024²)
    again = isd.load_pipeline(folders[layout])("a blue square at the top", num_inference_steps=2, seed=1,
                                               guidance_scale=defaults["guidance"], progress=False, record=COMPACT)
    np.testing.assert_array_equal(np.asarray(trace.image), np.asarray(again.image))
    # a rerun has nothing to do; another --guidance is refused, naming the difference
    assert main(["batch", str(prompts), "--model", str(folders[layout]), "--out", str(out), "--steps", "2"]) == 0
    assert "(2 were already there)" in capsys.readouterr().out
    assert main(["batch", str(prompts), "--model", str(folders[layout]), "--out", str(out), "--steps", "2", "--guidance", "2"]) == 2
    assert "already holds prompt 0" in capsys.readouterr().err


def test_batch_refuses_more_than_one_prompt_per_call_for_a_flow_model(folders, tmp_path, capsys):
    (tmp_path / "p.txt").write_text(PROMPT + "\n")
    assert main(["batch", str(tmp_path / "p.txt"), "--model", str(folders["tiny-flux"]), "--out", str(tmp_path / "o"),
                 "--steps", "2", "--batch-size", "4"]) == 2
    assert "flux prompt sets are drawn one prompt at a time: use --batch-size 1" in capsys.readouterr().err


def test_model_defaults_are_read_from_the_folder(folders, tmp_path):
    from illustrated_sd.models.loading import model_defaults

    assert model_defaults(folders["tiny-flux"]) == {"steps": 28, "guidance": 3.5}
    assert model_defaults(folders["tiny-sd3"]) == {"steps": 28, "guidance": 7.0}
    assert model_defaults(None) == {"steps": 25, "guidance": 7.5}  # the embedded tiny SD
    assert model_defaults(tmp_path / "nothing-here") == {"steps": 25, "guidance": 7.5}


def test_explain_writes_the_report_of_a_flow_model(folders, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["explain", PROMPT, "--model", str(folders["tiny-sd3"]), "--out", str(out), "--steps", "2"]) == 0
    assert "report.html" in capsys.readouterr().out
    trace = isd.Trace.load(out / "trace.safetensors")
    assert isinstance(trace, isd.FlowTrace) and trace.num_steps == 2 and trace.guidance_scale == 7.0  # SD3's own default
    page = (out / "report.html").read_text()
    assert "2. Joint attention" in page and (out / "joint_attention.png").stat().st_size > 1000
    summary = (out / "summary.txt").read_text()
    assert f"padding absorbs {trace.padding_share():.1%}" in summary
    share = trace.attention_shares()["circle"]
    assert f"'circle': {share:.1%} of the text's attention" in summary
