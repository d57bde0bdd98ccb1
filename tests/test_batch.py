"""A prompt set, traced (illustrated_sd.trace.sets, `illustrated-sd batch`): files, index, resume, several processes."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import illustrated_sd as isd
from illustrated_sd.trace.sets import TraceSet, batches, read_index, read_prompts, run_prompt_set
from illustrated_sd.cli import main
from illustrated_sd.paths import TINY_SD

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
    ("p.jsonl", '{"prompt": "a moon"}\n{"prompt": null}\n', "line 2: no prompt .*got None"),
    ("p.jsonl", '{"prompt": "a moon"}\n["a red circle"]\n', "line 2: each line is one JSON object .*got list"),
    ("p.jsonl", '42\n', "line 1: each line is one JSON object .*got int"),
    ("p.jsonl", '"a red circle"\n', "line 1: each line is one JSON object .*got str"),
    ("p.jsonl", '{"prompt": "a moon", "negative": 5}\n', "line 1: negative must be a text or null"),
    ("p.jsonl", '{"prompt": "a moon", "seed": 18446744073709551616}\n', "line 1: seed must be between .* any whole number"),
    ("p.jsonl", '{"prompt": "a moon", "seed": true}\n', "line 1: seed must be a whole number"),
    ("p.jsonl", '{"prompt": "a moon", "steps": 5000}\n', "line 1: steps must be between 1 and 1000 .*scheduler has that many"),
    ("p.jsonl", '{"prompt": "a moon", "guidance": "nan"}\n', "line 1: guidance must be a finite number"),
    ("p.csv", 'prompt,seed\na red circle, big,3\n', "line 2: more cells than the 2 columns .*quote a prompt"),
    ("p.json", '{"prompt": "a moon"}\n', r"a prompt file is a .txt .*got '.json'.*rename it"),
    ("p.txt", b"a red circle\n\xff\xfe a moon\n", "is not UTF-8 text .*save it as UTF-8"),
])
def test_bad_prompt_files_name_the_line_and_the_fix(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_prompts(path, max_steps=1000)


def test_lines_are_cut_at_newlines_only_and_a_bom_is_no_text(tmp_path):
    """U+2028, U+0085, \\x0b and \\x0c may sit inside a prompt: a line is cut at \\n (and \\r\\n) only, so no seed shifts."""
    odd = ["a red\u2028circle", "a blue\x85square", "a green\x0bstar", "a moon\x0con the left"]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in odd))
    assert "\u2028" in (tmp_path / "p.jsonl").read_text()  # the raw character, valid in a JSON string
    jobs = read_prompts(tmp_path / "p.jsonl", seed=5)
    assert [(j.prompt, j.seed) for j in jobs] == [(p, 5 + i) for i, p in enumerate(odd)]
    (tmp_path / "p.txt").write_bytes(("\ufeffa red circle\r\n" + "\r\n".join(odd) + "\r\n").encode())
    assert [j.prompt for j in read_prompts(tmp_path / "p.txt")] == ["a red circle", *odd]  # no BOM in prompt 0
    (tmp_path / "p.csv").write_bytes("\ufeffprompt,seed\na red circle,4\n".encode())
    assert [(j.prompt, j.seed) for j in read_prompts(tmp_path / "p.csv")] == [("a red circle", 4)]  # the BOM is not in 'prompt'
    (tmp_path / "P.JSONL").write_text('{"prompt": "a moon", "seed": 9}\n')  # an upper-case suffix is still JSON lines
    assert [(j.prompt, j.seed) for j in read_prompts(tmp_path / "P.JSONL")] == [("a moon", 9)]


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


# ---- a damaged folder: refused with file and line, or made again --------------------------------------------------

NO_MAPS = isd.RecordOptions(cross_attention=False)


@pytest.fixture(scope="module")
def made_set(pipe, tmp_path_factory):
    """A finished set of the three prompts (2 steps, no maps), to copy and damage."""
    folder = tmp_path_factory.mktemp("made")
    run_prompt_set(factory(pipe), read_prompts(prompt_file(folder), steps=2), folder / "set", record=NO_MAPS, progress=False)
    return folder / "set"


def edit_line(folder, n, change):
    lines = (folder / "index.jsonl").read_text().splitlines()
    lines[n] = change(lines[n])
    (folder / "index.jsonl").write_text("\n".join(lines) + "\n")


def row_edit(key, value):
    def change(line):
        row = json.loads(line)
        row.pop(key) if value is KeyError else row.update({key: value})
        return json.dumps(row)
    return change


def swap_traces(folder):
    (folder / "000000.safetensors").rename(folder / "x")
    (folder / "000001.safetensors").rename(folder / "000000.safetensors")
    (folder / "x").rename(folder / "000001.safetensors")


def index_as_folder(folder):
    (folder / "index.jsonl").unlink()
    (folder / "index.jsonl").mkdir()


DAMAGE = {  # what was done to a finished set → what TraceSet says, and which prompts batch makes again (None: refused)
    "a key missing": (lambda f: edit_line(f, 1, row_edit("seed", KeyError)), r"index.jsonl, line 2: keys \['seed'\] are missing", None),
    "index not a number": (lambda f: edit_line(f, 0, row_edit("index", "abc")), r"index.jsonl, line 1: index must be a whole number", None),
    "file outside": (lambda f: edit_line(f, 0, row_edit("file", "../../etc/passwd")),
                     r"index.jsonl, line 1: prompt 0's file must be '000000.safetensors'", None),
    "line twice": (lambda f: edit_line(f, 2, lambda line: line + "\n" + line), r"index.jsonl, line 4: prompt 2 is indexed twice .*line 3", None),
    "not UTF-8": (lambda f: (f / "index.jsonl").write_bytes(b"\xff\xfe" + (f / "index.jsonl").read_bytes()), "index.jsonl is not UTF-8", None),
    "index a folder": (index_as_folder, r"index.jsonl is not a file.*move it away", None),
    "traces swapped": (swap_traces, r"line 1: its trace file holds prompt 'a blue square at the top', the index says 'a red circle", [0, 1]),
    "trace garbage": (lambda f: (f / "000001.safetensors").write_bytes(b"garbage"), r"line 2: .*000001.safetensors is not a valid trace", [1]),
    "trace cut short": (lambda f: (f / "000002.safetensors").write_bytes((f / "000002.safetensors").read_bytes()[:-99]),
                        r"line 3: .*not a valid trace.*cut short", [2]),
    "trace missing": (lambda f: (f / "000000.safetensors").unlink(), r"line 1: its trace file 000000.safetensors is missing", [0]),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_set_is_named_by_traceset_and_redone_or_refused_by_batch(pipe, made_set, tmp_path, damage):
    do, message, redone = DAMAGE[damage]
    out = tmp_path / "set"
    shutil.copytree(made_set, out)
    do(out)
    with pytest.raises(ValueError, match=message):
        TraceSet(out)
    calls = []
    jobs = read_prompts(prompt_file(tmp_path), steps=2)
    if redone is None:  # a damaged index: refused with the same words, before anything is generated or written
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        with pytest.raises(ValueError, match=message):
            run_prompt_set(factory(pipe, calls), jobs, out, record=NO_MAPS, progress=False)
        assert calls == [] and {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    else:  # a trace that does not stand for its row is made again; the set reads back whole
        assert run_prompt_set(factory(pipe, calls), jobs, out, record=NO_MAPS, progress=False)["made"] == len(redone)
        assert calls == [PROMPTS[i] for i in redone]
        assert [t.prompt for t in TraceSet(out)] == PROMPTS


def test_traceset_rows_are_indexed_by_number(made_set):
    traces = TraceSet(made_set)
    assert traces[-1].prompt == PROMPTS[-1]
    with pytest.raises(TypeError, match="indexed by row number, 0–2"):
        traces["a red circle"]
    with pytest.raises(IndexError, match="row 3 does not exist: this set has 3 traces"):
        traces[3]


def test_a_torn_last_line_is_cut_off_before_the_next_line(pipe, tmp_path):
    out = tmp_path / "set"
    jobs = read_prompts(prompt_file(tmp_path), steps=2)
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_prompt_set(factory(pipe, calls, fail_at=3), jobs, out, record=NO_MAPS, progress=False)
    with (out / "index-0.jsonl").open("a") as f:
        f.write('{"index": 2, "prompt": "a gre')  # killed while writing prompt 2's line
    # prompt 1 had finished: its line follows prompt 0's, and the torn fragment is gone, not ended as a line of its own
    run_prompt_set(factory(pipe), jobs, out, record=NO_MAPS, progress=False)
    assert [json.loads(line)["index"] for line in (out / "index.jsonl").read_text().splitlines()] == [0, 1, 2]


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


# ---- --out: never someone else's files; never a mixed set -------------------------------------------------------

@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: these refusals come before it."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before refusing")
    monkeypatch.setattr(isd, "load_pipeline", load)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def users_folder(tmp_path, extra=()):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, data in {"notes.txt": b"my notes", "index.jsonl": b'{"experiment": 3}\n', **dict(extra)}.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("out, force, message", [
    ("users", False, r"holds things this command did not write \(notes.txt\).*--force"),
    ("users", True, r"mine/index.jsonl, line 1: keys .* are missing"),  # --force: still never over the user's index.jsonl
    ("users_trace", True, r"mine/000001.safetensors is not a trace, and this command would write one there"),
    ("", False, r"--out is empty; name a folder"),
    ("/", False, r"--out / is the root of the file system"),
])
def test_batch_never_writes_over_what_it_did_not_write(tmp_path, capsys, no_model, out, force, message):
    if out.startswith("users"):
        trace_named = out == "users_trace"
        out = users_folder(tmp_path, {"000001.safetensors": b"my weights"} if trace_named else {})
        if trace_named:
            (out / "index.jsonl").unlink()
        out = str(out)
    args = ["batch", str(prompt_file(tmp_path)), "--out", out, "--steps", "2"] + ["--force"] * force
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(args) == 2
    assert re.search(message, one_error_line(capsys))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written, nothing removed


def test_force_writes_beside_the_users_files_and_leaves_them_alone(tmp_path):
    out = users_folder(tmp_path, {".draft.tmp": b"my draft"})
    (out / "index.jsonl").unlink()
    assert main(["batch", str(prompt_file(tmp_path, PROMPTS[:1])), "--out", str(out), "--steps", "2", "--no-maps", "--force"]) == 0
    assert (out / "notes.txt").read_bytes() == b"my notes" and (out / ".draft.tmp").read_bytes() == b"my draft"
    assert [t.prompt for t in TraceSet(out)] == PROMPTS[:1]


@pytest.mark.parametrize("change, message", [
    (["--scheduler", "ddim"], r"other settings \(scheduler: \"the model's\" → 'ddim'"),
    (["--full"], r"other settings \(record.compact: True → False"),
    (["--dtype", "bfloat16"], r"other settings \(dtype: 'float32' → 'bfloat16'"),
    (["--model", str(TINY_SD)], r"other settings \(model: 'embedded' → '.*tiny-sd'"),
    (["--negative-file"], r"already holds prompt 0 .*negative None\), not .*negative 'blue'\)"),
])
def test_a_rerun_with_other_settings_is_refused_naming_them(tmp_path, capsys, monkeypatch, change, message):
    prompts = prompt_file(tmp_path, PROMPTS[:1])
    out = tmp_path / "set"
    assert main(["batch", str(prompts), "--out", str(out), "--steps", "2", "--no-maps"]) == 0
    capsys.readouterr()
    rows = (out / "index.jsonl").read_text()
    assert json.loads(rows)["settings"] == {"model": "embedded", "scheduler": "the model's", "dtype": "float32",
                                            "record": {**json.loads(rows)["settings"]["record"], "compact": True, "cross_attention": False}}
    monkeypatch.setattr(isd, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded before refusing"))
    if change == ["--negative-file"]:
        (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": PROMPTS[0], "negative": "blue"}) + "\n")
        prompts, change = tmp_path / "p.jsonl", []
    assert main(["batch", str(prompts), "--out", str(out), "--steps", "2", "--no-maps", *change]) == 2
    assert re.search(message, one_error_line(capsys))
    assert (out / "index.jsonl").read_text() == rows
