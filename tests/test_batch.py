"""A prompt set, traced (illustrated_sd.batch, `illustrated-sd batch`): files, index, resume, several processes."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from illustrated_sd.batch import TraceSet, batches, read_index, read_prompts, run_prompt_set
from illustrated_sd.cli import main

PROMPTS = ["a red circle on the left", "a blue square at the top", "a green star on the right"]


def prompt_file(folder: Path, prompts=PROMPTS, name="prompts.txt") -> Path:
    path = folder / name
    path.write_text("# the set\n\n" + "\n".join(prompts) + "\n")
    return path


# ---- reading prompt files ------------------------------------------------------------------------------------

def test_text_csv_and_jsonl_prompt_files(tmp_path):
    jobs = read_prompts(prompt_file(tmp_path), seed=10, steps=3)
    assert [(j.index, j.prompt, j.seed, j.steps, j.file) for j in jobs] == [
        (0, PROMPTS[0], 10, 3, "000000.safetensors"), (1, PROMPTS[1], 11, 3, "000001.safetensors"),
        (2, PROMPTS[2], 12, 3, "000002.safetensors")]
    (tmp_path / "p.csv").write_text('prompt,seed,guidance\n"a red circle, big",7,\na blue star,,2.5\n')
    jobs = read_prompts(tmp_path / "p.csv")
    assert [(j.prompt, j.seed, j.guidance) for j in jobs] == [("a red circle, big", 7, 7.5), ("a blue star", 1, 2.5)]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a red circle", "steps": 4, "negative": "blue"}\n\n{"prompt": "a moon"}\n')
    jobs = read_prompts(tmp_path / "p.jsonl")
    assert [(j.prompt, j.steps, j.negative) for j in jobs] == [("a red circle", 4, "blue"), ("a moon", 25, None)]


@pytest.mark.parametrize("name, text, message", [
    ("p.txt", "# only a comment\n\n", "holds no prompts"),
    ("p.csv", "text,seed\na red circle,1\n", "has no 'prompt' column"),
    ("p.csv", "prompt,seed\na red circle,x\n", r"line 2: 'x' is not a number"),
    ("p.csv", "prompt,steps\na red circle,2.5\n", r"line 2: steps must be a whole number"),
    ("p.jsonl", '{"prompt": "a red circle"}\n{"prompt": "a moon", "colour": "red"}\n', r"line 2: unknown settings \['colour'\]"),
    ("p.jsonl", '{"prompt": "a red circle"\n', "line 1: not JSON"),
    ("p.jsonl", '{"seed": 3}\n', "line 1: no prompt"),
])
def test_bad_prompt_files_name_the_line_and_the_fix(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        read_prompts(tmp_path / name)


def test_a_missing_prompt_file_says_what_to_write(tmp_path):
    with pytest.raises(FileNotFoundError, match="one prompt per line"):
        read_prompts(tmp_path / "nope.txt")


# ---- a set, traced -----------------------------------------------------------------------------------------------

def factory(pipe, calls=None, fail_at=None):
    """A pipe_factory handing out the session's pipeline, counting its generations (and failing at one, like a kill)."""
    class Counting:
        device, is_sdxl = pipe.device, pipe.is_sdxl

        def __call__(self, prompts, **kwargs):
            if calls is not None:
                calls.extend(prompts)
                if fail_at is not None and len(calls) >= fail_at:
                    raise KeyboardInterrupt  # the run is stopped here
            return pipe(prompts, **kwargs)
    return lambda device: Counting()


def test_a_set_is_traced_indexed_and_read_back(pipe, tmp_path):
    jobs = read_prompts(prompt_file(tmp_path), steps=2)
    result = run_prompt_set(factory(pipe), jobs, tmp_path / "set", progress=False)
    assert result == {"done": 3, "made": 3, "skipped": 0, "rank": 0, "batch_size": 1}  # on the CPU, one prompt per call
    out = tmp_path / "set"
    assert sorted(p.name for p in out.iterdir()) == ["000000.safetensors", "000001.safetensors", "000002.safetensors", "index.jsonl"]
    traces = TraceSet(out)
    assert len(traces) == 3 and [row["prompt"] for row in traces.rows] == PROMPTS
    row = traces.rows[1]
    assert row["seed"] == 1 and row["steps"] == 2 and set(row["words"]) >= {"<|startoftext|>", "blue", "square", "padding"}
    assert abs(sum(w["share"] for w in row["words"].values()) - 1) < 1e-3  # every slot's share, the padding among them
    peak = row["words"]["blue"]["peak"]
    h, w = traces[1].latent_hw
    assert 0 <= peak[0] < h and 0 <= peak[1] < w
    again = pipe(PROMPTS[1], num_inference_steps=2, seed=1, progress=False)
    np.testing.assert_array_equal(np.asarray(traces[1].image), np.asarray(again.image))  # the same picture as one call
    assert repr(traces) == f"TraceSet({str(out)!r}, 3 traces)"


def test_a_killed_run_resumes_and_never_indexes_a_half_written_trace(pipe, tmp_path):
    jobs = read_prompts(prompt_file(tmp_path), steps=2)
    out = tmp_path / "set"
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_prompt_set(factory(pipe, calls, fail_at=2), jobs, out, progress=False)
    assert sorted(read_index(out)) == [0]  # the first prompt finished; the second was cut short
    # What a kill (not an exception) could leave: a half-written temporary file, and a trace file whose
    # index line was never appended. Neither counts as done.
    (out / ".000001.safetensors.x1y2.tmp").write_bytes(b"half a trace")
    (out / "000002.safetensors").write_bytes(b"not indexed")
    with (out / "index-0.jsonl").open("a") as f:
        f.write('{"index": 1, "prompt": "a blue sq')  # a torn last line
    assert TraceSet(out).rows[0]["index"] == 0 and len(TraceSet(out)) == 1
    calls.clear()
    result = run_prompt_set(factory(pipe, calls), jobs, out, progress=False)
    assert calls == PROMPTS[1:] and result == {"done": 3, "made": 2, "skipped": 1, "rank": 0, "batch_size": 1}
    assert not list(out.glob(".*.tmp")) and not list(out.glob("index-*.jsonl"))
    assert [row["index"] for row in TraceSet(out).rows] == [0, 1, 2]
    assert TraceSet(out)[2].prompt == PROMPTS[2]  # made again, a real trace now
    calls.clear()
    assert run_prompt_set(factory(pipe, calls), jobs, out, progress=False)["made"] == 0 and calls == []  # all done: nothing to do


def test_prompts_are_drawn_in_batches_of_neighbours_with_the_same_settings(pipe, tmp_path):
    rows = [{"prompt": p, "seed": i} for i, p in enumerate(PROMPTS)] + [{"prompt": "a moon", "guidance": 3}, {"prompt": "a yellow star"}]
    (tmp_path / "set.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    jobs = read_prompts(tmp_path / "set.jsonl", steps=2)
    assert [[job.index for job in group] for group in batches(jobs, 2)] == [[0, 1], [2], [3], [4]]  # guidance 3 stands apart
    assert [[job.index for job in group] for group in batches(jobs, 8)] == [[0, 1, 2], [3], [4]]
    calls = []
    result = run_prompt_set(factory(pipe, calls), jobs, tmp_path / "out", progress=False, batch_size=2)
    assert result["made"] == 5 and result["batch_size"] == 2
    traces = TraceSet(tmp_path / "out")
    assert [t["prompt"] for t in traces.rows] == [r["prompt"] for r in rows] and traces[3].guidance_scale == 3
    together = pipe(PROMPTS[:2], num_inference_steps=2, seed=[0, 1], progress=False)  # what one call of two makes
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(traces[i].image), np.asarray(together[i].image))
    with pytest.raises(ValueError, match="batch_size must be ≥ 1"):
        run_prompt_set(factory(pipe), jobs, tmp_path / "out2", progress=False, batch_size=0)


def test_another_prompt_set_in_the_same_folder_is_refused(pipe, tmp_path):
    out = tmp_path / "set"
    run_prompt_set(factory(pipe), read_prompts(prompt_file(tmp_path, PROMPTS[:1]), steps=2), out, progress=False)
    with pytest.raises(ValueError, match="already holds prompt 0 as 'a red circle on the left'.*use another --out"):
        run_prompt_set(factory(pipe), read_prompts(prompt_file(tmp_path, ["a moon"]), steps=2), out, progress=False)


def test_a_folder_without_traces_is_not_a_trace_set(tmp_path):
    with pytest.raises(FileNotFoundError, match="illustrated-sd batch"):
        TraceSet(tmp_path / "none")
    with pytest.raises(ValueError, match="holds no finished traces"):
        TraceSet(tmp_path)


# ---- from the shell ----------------------------------------------------------------------------------------------

def test_the_batch_command(tmp_path, capsys):
    assert main(["batch", str(prompt_file(tmp_path, PROMPTS[:2])), "--out", str(tmp_path / "set"), "--steps", "2", "--no-maps",
                 "--batch-size", "2"]) == 0
    assert "2 of 2 prompts traced" in capsys.readouterr().out
    traces = TraceSet(tmp_path / "set")
    assert traces.rows[0]["words"] == {} and traces[0].attention_maps == {}  # --no-maps: no maps, no word summaries
    assert main(["batch", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no prompt file at" in err and len(err.strip().splitlines()) == 1
    assert main(["batch", str(prompt_file(tmp_path, PROMPTS[:1])), "--out", str(tmp_path / "y"), "--batch-size", "0"]) == 2
    assert "batch_size must be ≥ 1" in capsys.readouterr().err


def test_accelerate_splits_a_set_between_two_cpu_processes(tmp_path):
    """`accelerate launch` with two processes: every prompt traced once, half by each, one index."""
    prompts = [f"a {c} circle on the left" for c in ("red", "blue", "green", "yellow", "purple", "orange")]
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores: one thread each
    with socket.socket() as s:  # a free port for the processes to meet on (accelerate's default, 29500, may be taken)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(port),
                           "-m", "illustrated_sd", "batch", str(prompt_file(tmp_path, prompts)), "--out", str(tmp_path / "set"),
                           "--steps", "2", "--no-maps"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = TraceSet(tmp_path / "set").rows
    assert [row["prompt"] for row in rows] == prompts  # none lost, none twice
    assert [row["rank"] for row in rows] == [0, 0, 0, 1, 1, 1]
    assert re.search(r"6 of 6 prompts traced", done.stdout)
    assert json.loads((tmp_path / "set" / "index.jsonl").read_text().splitlines()[3])["rank"] == 1
