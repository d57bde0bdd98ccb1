"""The evaluation command line refuses mistakes in one line, before it draws a single picture."""

import json
import re

import numpy as np
import pytest
import torch

import illustrated_sd as isd
from illustrated_sd.evaluate import main
from illustrated_sd.loops import unet as pipeline


@pytest.fixture
def no_generation(monkeypatch):
    def recording(*args, **kwargs):  # the denoising loop starts inside it
        raise AssertionError("generated before refusing")
    monkeypatch.setattr(pipeline, "recording", recording)


@pytest.mark.parametrize("args, message", [
    (["--model", "/no/such"], "no model folder at /no/such"),
    (["--steps", "0"], "argument --steps: must be ≥ 1"),
    (["--limit", "-1"], "argument --limit: must be ≥ 1 \\(got -1\\)"),
    (["--limit", "0"], "argument --limit: must be ≥ 1"),
    (["--seeds", "0"], "argument --seeds: must be ≥ 1"),
    (["--guidance", "inf"], "argument --guidance: must be a finite number"),
    (["--only", "triples"], "invalid choice: 'triples'"),
    (["--out", "/proc/x/evaluation.json"], "cannot write into /proc/x"),
    (["--out", "{tmp}"], "is a folder, not a --out file"),
    (["--examples", "{tmp}/afile"], "is a file, not a folder"),
    (["--interventions-only"], "--interventions-only needs --interventions N"),
    (["--remove-colour", "-2"], "argument --remove-colour: must be ≥ 0"),
    (["--device", "tpu9"], "not a device torch knows"),
])
def test_evaluation_mistakes_give_one_line_and_exit_code_2(tmp_path, capsys, no_generation, args, message):
    (tmp_path / "afile").write_text("x")
    args = [a.format(tmp=tmp_path) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "e.json")]
    assert main(args + out + ["--limit", "1"] * ("--limit" not in args)) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "e.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys, no_generation):
    assert main(["--device", "cuda", "--out", str(tmp_path / "e.json")]) == 2
    assert "CUDA is not available here" in capsys.readouterr().err


# ---- the measures of what the course shows ------------------------------------------------------------

def detection(color, shape, position):
    from illustrated_sd.world import POSITIONS
    from illustrated_sd.world.detect import Detection
    return Detection(color, shape, POSITIONS[position], 100, None)


def test_adherence_needs_every_named_object_and_counts_the_others():
    from illustrated_sd.evaluate import adherence
    found = [detection("red", "circle", "left"), detection("blue", "star", "right"), detection("green", "moon", "top")]
    assert adherence(found, [("red", "circle", "left")], world=2) == (True, 2)
    assert adherence(found, [("red", "circle", "left"), ("blue", "star", "right")], world=2) == (True, 1)
    assert adherence(found, [("red", "square", "left")], world=2) == (False, 2)
    assert adherence([], [("red", "circle", "left")], world=2) == (False, 0)


def test_in_world_2_the_object_at_the_named_place_is_graded_not_the_largest():
    from illustrated_sd.evaluate import match_object
    big, named = detection("green", "moon", "right"), detection("red", "circle", "left")
    big.area = 5000
    assert match_object([big, named], "left", 1, world=2) is named
    assert match_object([big, named], "left", 1, world=1) is big  # version 1's rule is unchanged


def test_diversity_and_sharpness_measure_what_they_say():
    from PIL import Image

    from illustrated_sd.evaluate import diversity, sharpness
    black, white = Image.new("RGB", (16, 16), (0, 0, 0)), Image.new("RGB", (16, 16), (255, 255, 255))
    assert diversity([black, black]) == 0 and diversity([black, white]) == pytest.approx(1.0)
    assert diversity([black, white, white]) == pytest.approx(2 / 3)
    stripes = Image.fromarray(((np.indices((16, 16))[1] % 2) * 255).astype(np.uint8)).convert("RGB")
    blurred = stripes.resize((4, 4)).resize((16, 16), Image.BILINEAR)
    assert sharpness(black) == 0 and sharpness(stripes) > 10 * sharpness(blurred)


def test_samplers_agree_with_themselves_and_the_sampler_is_restored(pipe):
    from illustrated_sd.evaluate import prompt_set, sampler_agreement
    before = type(pipe.scheduler)
    result = sampler_agreement(pipe, prompt_set()[:1], samplers=("ddim", "ddim"), steps=2)
    assert result["agreement"] == 1 and result["mean_pixel_difference"] == 0
    assert type(pipe.scheduler) is before


def test_version_2_prompts_use_its_nine_shapes():
    from illustrated_sd.evaluate import prompt_set
    from illustrated_sd.world import SHAPES_2
    assert {shape for _, objects, _ in prompt_set(world=2) for _, shape, _ in objects} == set(SHAPES_2)


def test_intervention_effects_reads_what_taking_words_out_does(pipe):
    """On the first held-out prompt: removing the colour or the shape word takes it away; silencing the colour's
    slot alone does not (the causal text encoder carried it on), as notebook 04b shows."""
    from illustrated_sd.evaluate import intervention_effects, prompt_group, prompt_set

    cases = prompt_group(prompt_set(world=2), "held-out")[:1]
    assert cases[0][0].startswith("a ")
    result = intervention_effects(pipe, cases)
    assert result["prompts"] == 1 and set(result["agreement"]) == {"colour", "shape", "position", "function"}
    assert (result["colour_plain"], result["colour_removed"], result["colour_silenced"]) == (1.0, 0.0, 1.0)
    assert (result["shape_plain"], result["shape_removed"], result["swap_shape"]) == (1.0, 0.0, 1.0)
    assert result["agreement"]["colour"]["iou"] > result["agreement"]["function"]["iou"]
    assert result["held_out_prompts"] == 1 and result["held_out"]["colour_removed"] == result["colour_removed"]
    assert result["colour_unguided"] in (0.0, 1.0) and result["colour_doubled"] in (0.0, 1.0)


def test_intervention_effects_takes_an_as_the_article(pipe):
    from illustrated_sd.evaluate import intervention_effects

    result = intervention_effects(pipe, [("an orange heart in the center", [("orange", "heart", "center")], True)], steps=2)
    assert result["prompts"] == 1 and result["agreement"]["function"]["iou"] is not None


def test_colour_removal_counts_each_picture_plain_and_without_its_colour(pipe, monkeypatch):
    """Two seeds of two held-out prompts: four pictures, each read plain and with Remove(colour), tallied per colour."""
    from illustrated_sd import evaluate
    from illustrated_sd.evaluate import colour_removal, prompt_group, prompt_set

    cases = prompt_group(prompt_set(world=2), "held-out")[:2]
    calls = []
    generate = pipe.__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, *a, **k: calls.append((a[0], k["seed"], tuple(k["edits"]))) or generate(*a, **k))
    result = colour_removal(pipe, cases, seeds=2, steps=4)
    assert result["pictures"] == 4 and result["prompts"] == 2 and len(calls) == 8
    assert sorted({seed for _, seed, _ in calls}) == [10_000, 10_001, 11_000, 11_001]  # seeds unlike the interventions' (0, 1, …)
    colours = {c for _, objects, _ in cases for c, _, _ in objects}
    assert set(result["by_colour"]) == colours and all(0 <= v <= 1 for v in result["by_colour"].values())
    assert 0 <= result["colour_removed"] <= result["colour_plain"] + 0.5


# ---- attention at scale (issue 19) ----------------------------------------------------------------------------

def test_heatmap_iou_is_daams_thresholded_overlap_and_the_pointing_game_its_peak():
    from illustrated_sd.plot.heatmaps import heatmap_iou, peak, points_inside
    heat = torch.zeros(4, 4)
    heat[:2, :2] = 1.0  # the top-left quarter
    heat[0, 0] = 1.2  # its hottest corner
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True
    assert heatmap_iou(heat, mask) == pytest.approx(1.0, abs=0.3)  # bilinear edges aside, the same region
    assert peak(heat, (8, 8)) == (0, 0) and points_inside(heat, mask)
    mask[:] = False
    mask[4:, 4:] = True
    assert heatmap_iou(heat, mask) == 0.0 and not points_inside(heat, mask)
    mask[:] = False
    mask[2, 2] = True  # two pixels from the peak: on the object's anti-aliased edge, within the margin
    assert points_inside(heat, mask) and not points_inside(heat, mask, margin=1)


def test_attention_at_scale_over_a_traced_prompt_set(pipe, tmp_path, capsys):
    """A two-prompt set through the batch command, then the study's own measures over it."""
    from illustrated_sd.trace.sets import read_prompts, run_prompt_set
    from illustrated_sd.evaluate import attention_at_scale, prompt_set, write_prompt_file

    assert write_prompt_file(tmp_path / "all.jsonl", world=2, seeds=4) == 4 * len(prompt_set(world=2))
    (tmp_path / "two.jsonl").write_text("\n".join((tmp_path / "all.jsonl").read_text().splitlines()[:8:4]) + "\n")
    run_prompt_set(lambda device: pipe, read_prompts(tmp_path / "two.jsonl"), tmp_path / "set",
                   record=isd.RecordOptions(compact=True), progress=False)
    result = attention_at_scale(tmp_path / "set", world=2)
    assert result["traces"] == 2 and result["objects_named"] == 2
    assert result["objects_drawn_right"] == 2  # the tiny model draws these seen single objects
    for kind in ("colour", "shape", "position"):
        assert result[kind]["words"] == 2 and 0 <= result[kind]["iou"] <= 1 and result[kind]["pointing"] in (0, 0.5, 1)
    assert main(["--trace-set", str(tmp_path / "set"), "--out", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["attention_at_scale"]["traces"] == 2


def test_attention_at_scale_refuses_prompts_that_are_not_the_worlds(pipe, tmp_path):
    from illustrated_sd.trace.sets import read_prompts, run_prompt_set
    from illustrated_sd.evaluate import attention_at_scale

    (tmp_path / "p.txt").write_text("a red circle in a red circle\n")
    run_prompt_set(lambda device: pipe, read_prompts(tmp_path / "p.txt", steps=2), tmp_path / "set", progress=False)
    with pytest.raises(ValueError, match="is not an evaluation prompt of world 2; write the set with"):
        attention_at_scale(tmp_path / "set", world=2)


def test_background_of_reads_the_worlds_renders():
    """On the world's own pictures, every background colour and pattern, the border's colour is the scene's background."""
    from illustrated_sd.world.detect import background_of
    from illustrated_sd.world.render import render
    from illustrated_sd.world.scenes import sample_scenes

    scenes = sample_scenes(3, 40, version=2)
    images, _ = render(scenes)
    pictures = ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    assert [background_of(p) for p in pictures] == [s.background for s in scenes]
    assert len({s.background for s in scenes}) == 4 and len({s.pattern for s in scenes}) > 2  # every colour, several patterns


def test_background_obedience_asks_each_colour_and_reads_what_was_drawn(pipe, monkeypatch):
    from illustrated_sd.evaluate import background_obedience

    asked = []
    generate = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, text, **k: asked.append(text) or generate(self, text, **k))
    result = background_obedience(pipe, [("a white circle on the left", [("white", "circle", "left")], False)], seeds=1, steps=3)
    # every background but white (a white circle on white would be invisible)
    assert asked == [f"a white circle on the left on a plain {bg} background" for bg in ("black", "gray", "navy")]
    assert result["pictures"] == 3 and set(result["by_background"]) == {"black", "gray", "white", "navy"}
    assert result["by_background"]["white"] is None
    wrong = sum(n for counts in result["drawn_instead"].values() for n in counts.values())
    assert wrong == round(3 * (1 - result["obeyed"]))


def test_ghost_smudges_counts_marks_with_and_without_guidance(pipe, monkeypatch):
    from illustrated_sd import evaluate

    drawn = []
    generate = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, text, **k: drawn.append(k["guidance_scale"]) or generate(self, text, **k))
    counts = iter([0, 2, 1, 0] + [0, 0] + [1, 0])  # four pictures (two guided, two not); two renders; their two round trips
    near = iter([1, 1] + [1, 0])  # counted again with marks allowed near the objects: the two guided pictures; the renders
    monkeypatch.setattr("illustrated_sd.world.detect.stray_marks",
                        lambda image, **k: [(10, (0.5, 0.5))] * next(near if k.get("clearance") == evaluate.NEAR else counts))
    cases = [("a red circle on the left", [("red", "circle", "left")], False)]
    result = evaluate.ghost_smudges(pipe, cases, seeds=2, steps=2)
    assert drawn == [7.5, 7.5, 1.0, 1.0]
    assert result["pictures"] == 2 and result["with_marks"] == 0.5 and result["marks_per_picture"] == 1.0
    assert result["by_guidance"]["1.0"] == {"with_marks": 0.5, "marks_per_picture": 0.5}
    assert result["world_renders_with_marks"] == 0.0 and result["vae_round_trips_with_marks"] == 0.5
    assert result["near_objects"] == {"clearance": evaluate.NEAR, "with_marks": 1.0, "world_renders_with_marks": 0.5}


def test_a_measurement_asked_alone_writes_its_settings_and_time(tmp_path, monkeypatch):
    from illustrated_sd import evaluate

    seen = {}
    monkeypatch.setattr(evaluate, "ghost_smudges", lambda pipe, cases, seeds, steps, guidance: seen.update(n=len(cases), seeds=seeds) or {"with_marks": 0.5})
    out = tmp_path / "smudges.json"
    assert evaluate.main(["--smudges", "3", "--steps", "4", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert seen == {"n": 24, "seeds": 3} and written["ghost_smudges"]["with_marks"] == 0.5
    assert written["settings"]["steps"] == 4 and written["settings"]["world"] == 2 and "seconds" in written["ghost_smudges"]
    assert written["settings"]["device"] == "cpu"  # where the pictures were drawn: cuda's differ in rare pixels
