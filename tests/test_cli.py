"""The command line: what `illustrated-sd explain` writes, and how it refuses mistakes (one line, exit code 2, early)."""

import contextlib
import os
import re

import pytest
import torch

import illustrated_sd as isd
from illustrated_sd import cli
from illustrated_sd.cli import main
from illustrated_sd.loops import unet as pipeline


def test_explain_writes_report_image_trace_and_figures(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["explain", "a red circle on the left", "--steps", "3", "--out", str(out)]) == 0
    assert {"report.html", "image.png", "token_heatmaps.png", "summary.txt", "trace.safetensors"} <= {p.name for p in out.iterdir()}
    trace = isd.Trace.load(out / "trace.safetensors")
    assert trace.prompt == "a red circle on the left" and trace.num_steps == 3
    assert "circle" in (out / "summary.txt").read_text()
    assert str(out) in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no scratch folder left
    assert out.stat().st_mode & 0o777 == 0o777 & ~cli_umask()  # an ordinary folder, not a private temporary one


def cli_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def no_generation(monkeypatch):
    """Any generation fails the test: a refusal must come before the model runs."""
    def recording(*args, **kwargs):  # the denoising loop starts inside it
        raise AssertionError("generated before refusing")
    monkeypatch.setattr(pipeline, "recording", recording)


def refused(args, capsys) -> str:
    """Run the CLI, expecting exit code 2 and one error line (a progress bar may come before it)."""
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if "error" in line]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def bad_out(tmp_path, kind):
    if kind == "file":
        (tmp_path / "a_file").write_text("x")
        return tmp_path / "a_file"
    if kind == "foreign":
        (tmp_path / "mywork").mkdir()
        (tmp_path / "mywork" / "thesis.tex").write_text("the user's")
        return tmp_path / "mywork"
    if kind == "trace_is_a_folder":
        (tmp_path / "run" / "trace.safetensors").mkdir(parents=True)
        return tmp_path / "run"
    return kind


@pytest.mark.parametrize("args, message", [
    (["explain", ""], "prompt is empty"),
    (["explain", "x", "--steps", "0"], "argument --steps: must be ≥ 1 \\(got 0\\)"),
    (["explain", "x", "--steps", "abc"], "argument --steps: 'abc' is not a number"),
    (["explain", "x", "--steps", "2.5"], "whole number"),
    (["explain", "x", "--guidance", "nan"], "argument --guidance: must be a finite number"),
    (["explain", "x", "--seed", "1.5"], "argument --seed: must be a whole number"),
    (["explain", "x", "--scheduler", "fastest"], "invalid choice: 'fastest'"),
    (["explain", "x", "--dtype", "int8"], "invalid choice: 'int8'"),
    (["explain", "x", "--model", "/no/such/folder"], "no model folder"),
    (["explain", "x", "--device", "banana"], "not a device torch knows.*use cpu"),
    (["explain"], "the following arguments are required: prompt"),
    (["launch"], "invalid choice: 'launch'"),
])
def test_user_mistakes_give_one_line_and_exit_code_2(tmp_path, capsys, no_generation, args, message):
    assert re.search(message, refused(args + ["--out", str(tmp_path / "o")], capsys))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["explain", "x", "--steps", "0"], r"argument --steps: must be ≥ 1 \(got 0\) \(see illustrated-sd explain --help\)"),
    (["explain", "x", "--model", "/no/such/folder"], r"no model folder at /no/such/folder; pass a folder in diffusers layout"),
    (["explain", "x", "--device", "banana"], r"device 'banana' is not a device torch knows.*use cpu"),
])
def test_messages_name_the_fix(tmp_path, capsys, no_generation, args, message):
    assert re.search(message, refused(args + ["--out", str(tmp_path / "o")], capsys))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_before_loading(tmp_path, capsys, no_generation):
    assert "CUDA is not available here" in refused(["explain", "x", "--device", "cuda", "--out", str(tmp_path / "o")], capsys)


@pytest.mark.parametrize("kind, message", [
    ("file", "is a file, not a folder"),
    ("foreign", "holds things this command did not write \\(thesis.tex\\).*new or empty folder"),
    ("trace_is_a_folder", "trace.safetensors is not a file \\(a folder or link\\) where this command writes one; move it away"),
    ("/proc/x", "cannot write into /proc"),
])
def test_bad_out_is_refused_before_generating_and_nothing_is_touched(tmp_path, capsys, no_generation, kind, message):
    out = bad_out(tmp_path, kind)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert re.search(message, refused(["explain", "a red circle", "--out", str(out)], capsys))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    if kind == "foreign":
        assert (out / "thesis.tex").read_text() == "the user's"


def test_a_second_explain_replaces_the_first_as_a_whole(tmp_path):
    out = tmp_path / "run"
    assert main(["explain", "a red circle on the left", "--steps", "2", "--out", str(out)]) == 0
    assert main(["explain", "a blue square at the top", "--steps", "2", "--out", str(out)]) == 0
    assert isd.Trace.load(out / "trace.safetensors").prompt == "a blue square at the top"
    assert "a blue square at the top" in (out / "report.html").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_explain_into_a_link_to_a_folder_replaces_the_target_and_keeps_the_link(tmp_path):
    (tmp_path / "reports").mkdir()
    link = tmp_path / "latest"
    link.symlink_to(tmp_path / "reports" / "run1")  # dangling until the first report: refused, not followed blindly
    assert main(["explain", "a red circle on the left", "--steps", "2", "--out", str(link)]) == 2
    link.unlink()
    (tmp_path / "reports" / "run1").mkdir()
    link.symlink_to(tmp_path / "reports" / "run1")
    assert main(["explain", "a red circle on the left", "--steps", "2", "--out", str(link)]) == 0
    assert link.is_symlink() and (tmp_path / "reports" / "run1" / "report.html").is_file()
    assert isd.Trace.load(link / "trace.safetensors").prompt == "a red circle on the left"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "reports"]  # no hidden scratch or old folder
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["run1"]


@pytest.mark.parametrize("out, message", [("", "--out is empty"), ("/", "--out / is the root of the file system")])
def test_an_out_of_here_or_everywhere_is_refused(tmp_path, capsys, no_generation, out, message):
    assert message in refused(["explain", "a red circle", "--out", out], capsys)


def test_a_failing_explain_leaves_the_previous_outputs_intact(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["explain", "a red circle on the left", "--steps", "2", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(trace, folder, **kwargs):
        (folder / "report.html").write_text("half a page")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("illustrated_sd.plot.report.write_report", disk_full)
    assert "No space left on device" in refused(["explain", "a blue square", "--steps", "2", "--out", str(out)], capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old report, whole
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # and no scratch folder


@pytest.mark.parametrize("prompt, unknown", [("a red circle $\\frac$", "frac"), ("$5 and $6", None)])
def test_dollar_signs_in_a_prompt_are_text(tmp_path, prompt, unknown):
    out = tmp_path / "run"
    # the command shows warnings (its own filter), so an unknown word is said once, by name
    said = pytest.warns(UserWarning, match=rf"never saw \['{unknown}'\]") if unknown else contextlib.nullcontext()
    with said:
        assert main(["explain", prompt, "--steps", "2", "--out", str(out)]) == 0
    assert isd.Trace.load(out / "trace.safetensors").prompt == prompt


def test_one_line_flattens_long_messages():
    assert cli.one_line(ValueError("first\n  second")) == "first second"
