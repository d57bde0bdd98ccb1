"""The evaluation command line refuses mistakes in one line, before it draws a single picture."""

import re

import pytest
import torch

from illustrated_sd.evaluate import main
from illustrated_sd.pipeline import IllustratedPipeline


@pytest.fixture
def no_generation(monkeypatch):
    def denoise(*args, **kwargs):
        raise AssertionError("generated before refusing")
    monkeypatch.setattr(IllustratedPipeline, "_denoise", denoise)


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
