"""A prompt set, traced: one trace file per prompt and an index, resumable, split across processes.

    illustrated-sd batch prompts.txt --out DIR                          # one process
    accelerate launch --multi_gpu --num_processes 2 -m illustrated_sd batch prompts.txt --out DIR   # one process per GPU

What a folder holds, and why it is safe to stop at any moment:
    - ``000042.safetensors``: the trace of prompt 42 (its line in the prompt file, from 0), written
      atomically: a killed run leaves at most a hidden ``.*.tmp`` file, which the next run removes.
    - ``index-RANK.jsonl``: one line per finished prompt, appended by process RANK only *after* its trace
      file is complete. A trace that is not in an index was never finished; the next run makes it again.
    - ``index.jsonl``: every line, in prompt order, written when a whole run ends (the parts are then removed).

A rerun skips every prompt already in an index (``isd.TraceSet`` reads the folder). The prompts are split
between processes by accelerate's ``PartialState.split_between_processes`` when accelerate is installed
(``accelerate launch`` sets it up; without it, one process does all).
"""

import csv
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from . import checks
from .files import atomic_write

SETTINGS = ("seed", "steps", "guidance", "negative")  # what a CSV / JSONL row may set per prompt


@dataclass(frozen=True)
class Job:
    """One prompt of a set, with its settings. ``index`` is its place in the file (0-based); it names the trace file."""

    index: int
    prompt: str
    seed: int
    steps: int
    guidance: float
    negative: str | None = None

    @property
    def file(self) -> str:
        return f"{self.index:06d}.safetensors"


def read_prompts(path, seed: int = 0, steps: int = 25, guidance: float = 7.5) -> list[Job]:
    """The prompts of ``path``: a ``.txt`` (one prompt per line; blank lines and ``#`` comments skipped), or a
    ``.csv`` / ``.jsonl`` with a ``prompt`` column or key and optionally ``seed``, ``steps``, ``guidance``,
    ``negative``. What a row does not set comes from the arguments; a text line's seed is ``seed + index``.

    Raises ``ValueError`` naming the file and line of the first bad row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prompt file at {path}; write one prompt per line into a .txt (or a .csv / .jsonl with a 'prompt' column)")
    rows = []
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "prompt" not in (reader.fieldnames or []):
                raise ValueError(f"{path} has no 'prompt' column (its columns: {reader.fieldnames}); the first line names the columns")
            rows = [(n + 2, {k: v for k, v in row.items() if v not in (None, "")}) for n, row in enumerate(reader)]
    elif path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {n}: not JSON ({err.msg}); each line is one object like "
                                     '{"prompt": "a red circle", "seed": 3}') from None
    else:
        rows = [(n, {"prompt": line.strip()}) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
                if line.strip() and not line.lstrip().startswith("#")]
    jobs = []
    for index, (line, row) in enumerate(rows):
        where = f"{path}, line {line}"
        if not isinstance(row, dict) or not str(row.get("prompt", "")).strip():
            raise ValueError(f"{where}: no prompt (each row needs a non-empty 'prompt')")
        unknown = sorted(set(row) - {"prompt", *SETTINGS})
        if unknown:
            raise ValueError(f"{where}: unknown settings {unknown}; a row may set {list(SETTINGS)}")
        try:
            jobs.append(Job(index=index, prompt=str(row["prompt"]).strip(),
                            seed=checks.whole_number("seed", _number(row.get("seed", seed + index), int)),
                            steps=checks.whole_number("steps", _number(row.get("steps", steps), int), minimum=1),
                            guidance=checks.real_number("guidance", _number(row.get("guidance", guidance), float)),
                            negative=row.get("negative")))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None
    if not jobs:
        raise ValueError(f"{path} holds no prompts")
    return jobs


def _number(value, kind):
    """A CSV cell is text: "3" → 3 (and "2.5" for a whole number is refused by the check after it)."""
    if isinstance(value, str):
        try:
            return kind(value) if kind is float or value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    return value


def read_index(folder) -> dict[int, dict]:
    """Every finished prompt's index line in ``folder`` (``index.jsonl`` and the parts of a run in progress or
    cut short), by prompt index. A line whose trace file is missing, or a torn last line, does not count."""
    folder = Path(folder)
    done = {}
    for part in sorted(folder.glob("index*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a process killed while writing it
            if isinstance(row, dict) and (folder / str(row.get("file", ""))).is_file():
                done[int(row["index"])] = row
    return done


def summary(trace) -> dict:
    """What the index keeps of a trace's attention: each word's share of all attention, and where its heatmap peaks."""
    if not trace.attention_maps:
        return {}
    words = {}
    for label, share in trace.attention_shares().items():
        entry = {"share": round(share, 5)}
        if label not in (trace.tokens[0], trace.tokens[-1], "padding"):
            # a word said twice is labelled "a (5)": its slot, so that its own heatmap is the one summed up
            repeated = re.search(r" \((\d+)\)$", label)
            word = int(repeated[1]) if repeated else label
            heat = trace.cross_attention(word)
            entry["peak"] = [round(v, 3) for v in divmod(int(heat.argmax()), heat.shape[1])]  # [row, column] in latent pixels
        words[label] = entry
    return words


def _append_line(path: Path, row: dict) -> None:
    """One index line, in one write, flushed to disk: a line is either whole or (killed mid-write) unreadable."""
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a line torn by a kill: end it, or ours would join it
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _state():
    """accelerate's PartialState (rank, world size, device) when accelerate is installed, else ``None`` (one process).

    Without a GPU it is told so (``cpu=True``): then ``accelerate launch --multi_gpu --num_processes N`` runs N
    CPU processes that find each other through torch.distributed's gloo backend (the tests do this).
    """
    try:
        import torch
        from accelerate import PartialState
    except ImportError:
        return None
    return PartialState(cpu=not torch.cuda.is_available())


def run_prompt_set(pipe_factory, jobs: list[Job], out, record=None, progress: bool = True, batch_size: int | None = None) -> dict:
    """Trace every job not yet done in ``out``; returns ``{"done": n, "made": n, "skipped": n, "rank": r, "batch_size": b}``.

    Args:
        pipe_factory: ``device → IllustratedPipeline``, called once per process with that process's device
            (``None`` when there is one process: then the caller's choice stands).
        jobs: from :func:`read_prompts`.
        out: the folder (made if missing).
        record: :class:`~illustrated_sd.recorders.RecordOptions` for every trace (default: the pipeline's).
        batch_size: prompts drawn together in one call (neighbours with the same steps, guidance and negative
            prompt; see :func:`batches`). ``None``: 8 on a GPU (where one prompt leaves it waiting for Python),
            1 on the CPU (busy either way) and for SDXL (whose pipeline draws one prompt at a time).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = _state()
    rank, world, device = (0, 1, None) if state is None else (state.process_index, state.num_processes, state.device)
    if rank == 0:  # what killed processes left half-written: never a trace, so never in an index
        for stale in out.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    if state is not None:
        state.wait_for_everyone()
    done = read_index(out)
    for job in jobs:  # a folder of another prompt set would be silently mixed in: refuse it
        row = done.get(job.index)
        if row is not None and (row["prompt"], row["seed"], row["steps"], row["guidance"]) != (job.prompt, job.seed, job.steps, job.guidance):
            raise ValueError(f"{out} already holds prompt {job.index} as {row['prompt']!r} (seed {row['seed']}, {row['steps']} steps, "
                             f"guidance {row['guidance']}), not {job.prompt!r} (seed {job.seed}, {job.steps} steps, guidance "
                             f"{job.guidance}); use another --out for another prompt set")
    pending = [job for job in jobs if job.index not in done]
    mine = pending
    if state is not None and world > 1:
        with state.split_between_processes(pending) as part:
            mine = list(part)
    if batch_size is not None:  # refused before the model is loaded
        batch_size = checks.whole_number("batch_size", batch_size, minimum=1, hint="prompts per call, e.g. 8 on a GPU")
    pipe = pipe_factory(device if world > 1 else None)  # one process: the device the user chose
    if batch_size is None:
        batch_size = 8 if pipe.device.type == "cuda" and not pipe.is_sdxl else 1
    if batch_size > 1 and pipe.is_sdxl:
        raise ValueError("SDXL prompt sets are drawn one prompt at a time: use --batch-size 1")
    part_file = out / f"index-{rank}.jsonl"
    bar = tqdm(total=len(mine), desc=f"prompts (process {rank + 1} of {world})" if world > 1 else "prompts", disable=not progress)
    for group in batches(mine, batch_size):
        first = group[0]
        traces = pipe([job.prompt for job in group], num_inference_steps=first.steps, guidance_scale=first.guidance,
                      seed=[job.seed for job in group], negative_prompt=first.negative, record=record, progress=False)
        for job, trace in zip(group, traces):
            trace.save(out / job.file)  # atomic: complete, or not there at all
            _append_line(part_file, {**asdict(job), "file": job.file, "rank": rank, "words": summary(trace)})
        bar.update(len(group))
    bar.close()
    if state is not None:
        state.wait_for_everyone()
    if rank == 0:
        _merge_index(out)
    return {"done": len(done) + len(pending), "made": len(mine), "skipped": len(done), "rank": rank, "batch_size": batch_size}


def batches(jobs: list[Job], size: int) -> list[list[Job]]:
    """``jobs`` in order, cut into groups of at most ``size`` that one call can draw: neighbours with the same
    steps, guidance and negative prompt (their seeds and prompts may differ)."""
    groups = []
    for job in jobs:
        last = groups[-1][-1] if groups else None
        if last is None or len(groups[-1]) == size or (job.steps, job.guidance, job.negative) != (last.steps, last.guidance, last.negative):
            groups.append([])
        groups[-1].append(job)
    return groups


def _merge_index(out: Path) -> None:
    """All index lines into ``index.jsonl``, in prompt order; then the parts go."""
    rows = read_index(out)
    with atomic_write(out / "index.jsonl", "index") as tmp:
        tmp.write_text("".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in sorted(rows)), encoding="utf-8")
    for part in out.glob("index-*.jsonl"):
        part.unlink()


class TraceSet:
    """A folder written by ``illustrated-sd batch``: its index, and each trace loaded when asked for.

    Example:
        >>> traces = isd.TraceSet("outputs/set")
        >>> len(traces), traces.rows[0]["prompt"]
        >>> trace = traces[0]                       # loads 000000.safetensors now
        >>> [row["words"]["red"]["share"] for row in traces.rows if "red" in row["words"]]
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"no folder at {self.folder}; make one with `illustrated-sd batch prompts.txt --out {self.folder}`")
        by_index = read_index(self.folder)
        if not by_index:
            raise ValueError(f"{self.folder} holds no finished traces (no index*.jsonl lines with their files); "
                             "is it the --out of `illustrated-sd batch`?")
        self.rows: list[dict] = [by_index[i] for i in sorted(by_index)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from .trace import Trace

        return Trace.load(self.folder / self.rows[i]["file"])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"TraceSet({str(self.folder)!r}, {len(self)} traces)"
