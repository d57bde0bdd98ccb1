import pytest

import illustrated_sd as isd
from illustrated_sd.cli import main


def test_explain_writes_report_image_trace_and_figures(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["explain", "a red circle on the left", "--steps", "3", "--out", str(out)]) == 0
    assert {"report.html", "image.png", "token_heatmaps.png", "summary.txt", "trace.safetensors"} <= {p.name for p in out.iterdir()}
    trace = isd.Trace.load(out / "trace.safetensors")
    assert trace.prompt == "a red circle on the left" and trace.num_steps == 3
    assert "circle" in (out / "summary.txt").read_text()
    assert str(out) in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch folder left


@pytest.mark.parametrize("args, message", [(["explain", ""], "prompt is empty"), (["explain", "x", "--steps", "0"], "≥ 1"),
                                           (["explain", "x", "--model", "/no/such/folder"], "no model folder")])
def test_user_mistakes_give_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    assert main(args + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
