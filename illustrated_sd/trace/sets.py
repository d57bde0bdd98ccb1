"""A prompt set, traced: one trace file per prompt and an index, resumable, split across processes.

    illustrated-sd batch prompts.txt --out DIR                          # one process
    accelerate launch --multi_gpu --num_processes 2 -m illustrated_sd batch prompts.txt --out DIR   # one process per GPU

What a folder holds, and why it is safe to stop at any moment:
    - ``000042.safetensors``: the trace of prompt 42 (its line in the prompt file, from 0), written
      atomically: a killed run leaves at most a hidden ``.000042.safetensors.*.tmp`` file, which the next run removes.
    - ``index-RANK.jsonl``: one line per finished prompt, appended by process RANK only *after* its trace
      file is complete. A trace that is not in an index was never finished; the next run makes it again.
    - ``index.jsonl``: every line, in prompt order, written when a whole run ends (the parts are then removed).
      Each line records the prompt's settings and the set's (model, scheduler, dtype, what is recorded).

A rerun skips every prompt already in an index whose trace loads (``isd.TraceSet`` reads the folder). A folder
that holds anything else (another prompt set, other settings, files this command did not write) is refused
before the model loads; ``--force`` writes beside files of other programs, and never replaces or removes them. The prompts are split
between processes by accelerate's ``PartialState.split_between_processes`` when accelerate is installed
(``accelerate launch`` sets it up; without it, one process does all).
"""

import csv
import io
import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tqdm.auto import tqdm

from .. import checks
from .files import atomic_write, check_output_folder
from .unet import read_header

SETTINGS = ("seed", "steps", "guidance", "negative")  # what a CSV / JSONL row may set per prompt
KINDS = {".txt": "text", "": "text", ".csv": "csv", ".jsonl": "jsonl"}  # a prompt file's suffix (any case) → its reader

# The names this command writes into --out. Nothing else there is ever replaced or removed.
TRACE_NAME = re.compile(r"\d{6,}\.safetensors")
INDEX_NAME = re.compile(r"index(-\d+)?\.jsonl")
TEMP_NAME = re.compile(r"\.(\d{6,}\.safetensors|index(-\d+)?\.jsonl)\..+\.tmp")  # atomic_write's scratch files


def ours(name: str) -> bool:
    """Whether ``name`` is one this command writes into a prompt set's folder."""
    return any(pattern.fullmatch(name) for pattern in (TRACE_NAME, INDEX_NAME, TEMP_NAME))


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


def lines(text: str) -> list[str]:
    """``text`` cut at line ends, which are ``\\n`` and ``\\r\\n`` only.

    ``str.splitlines`` also cuts at U+2028, U+0085, ``\\x0b``, ``\\x0c`` and more: characters that may sit
    inside a prompt (JSON allows U+2028 in a string), where a cut would make one prompt two and shift every
    later prompt's seed.
    """
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_prompts(path, seed: int = 0, steps: int = 25, guidance: float = 7.5, max_steps: int | None = None) -> list[Job]:
    """The prompts of ``path``: a ``.txt`` (one prompt per line; blank lines and ``#`` comments skipped), or a
    ``.csv`` / ``.jsonl`` with a ``prompt`` column or key and optionally ``seed``, ``steps``, ``guidance``,
    ``negative``. What a row does not set comes from the arguments; a text line's seed is ``seed + index``.

    The whole file is read and checked before anything is generated (``max_steps``: the most steps the model's
    scheduler allows, when known). A UTF-8 byte-order mark is read as the mark it is, not as text.

    Raises ``ValueError`` naming the file and line of the first bad row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prompt file at {path}; write one prompt per line into a .txt (or a .csv / .jsonl with a 'prompt' column)")
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: a prompt file is a .txt (one prompt per line), a .csv or a .jsonl (got {path.suffix!r}); "
                         "rename it with one of these suffixes")
    try:
        text = path.read_text(encoding="utf-8-sig")  # "-sig": a byte-order mark at the start is dropped
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start} is {err.object[err.start:err.start + 1]!r}); "
                         "save it as UTF-8") from None
    rows = []
    if kind == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if "prompt" not in (reader.fieldnames or []):
            raise ValueError(f"{path} has no 'prompt' column (its columns: {reader.fieldnames}); the first line names the columns")
        try:
            for row in reader:
                if None in row:  # more cells than columns: csv puts the rest under the key None
                    raise ValueError(f"{path}, line {reader.line_num}: more cells than the {len(reader.fieldnames)} columns "
                                     f"{reader.fieldnames}; quote a prompt that holds a comma")
                rows.append((reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}))
        except csv.Error as err:
            raise ValueError(f"{path}, line {reader.line_num}: {err}") from None
    elif kind == "jsonl":
        for n, line in enumerate(lines(text), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {n}: not JSON ({err.msg}); each line is one object like "
                                     '{"prompt": "a red circle", "seed": 3}') from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}, line {n}: each line is one JSON object like "
                                     f'{{"prompt": "a red circle", "seed": 3}} (got {type(row).__name__} {line.strip()[:40]})')
                rows.append((n, row))
    else:
        rows = [(n, {"prompt": line.strip()}) for n, line in enumerate(lines(text), start=1)
                if line.strip() and not line.lstrip().startswith("#")]
    jobs = []
    for index, (line, row) in enumerate(rows):
        try:
            jobs.append(_job(index, row, seed, steps, guidance, max_steps))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}, line {line}: {err}") from None
    if not jobs:
        raise ValueError(f"{path} holds no prompts")
    return jobs


def _job(index: int, row: dict, seed: int, steps: int, guidance: float, max_steps: int | None) -> Job:
    """One row of a prompt file as a :class:`Job`, every setting checked as the pipeline will check it."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"no prompt (each row needs a non-empty 'prompt' text; got {prompt!r})")
    unknown = sorted(set(row) - {"prompt", *SETTINGS})
    if unknown:
        raise ValueError(f"unknown settings {unknown}; a row may set {list(SETTINGS)}")
    negative = row.get("negative")
    if negative is not None and not isinstance(negative, str):
        raise ValueError(f"negative must be a text or null (got {negative!r})")
    return Job(index=index, prompt=prompt.strip(),
               seed=checks.seed(_number(row.get("seed", seed + index), int)),
               steps=checks.whole_number("steps", _number(row.get("steps", steps), int), minimum=1, maximum=max_steps,
                                         hint="the model's scheduler has that many timesteps" if max_steps else ""),
               guidance=checks.real_number("guidance", _number(row.get("guidance", guidance), float)),
               negative=negative)


def _number(value, kind):
    """A CSV cell is text: "3" → 3 (and "2.5" for a whole number is refused by the check after it)."""
    if isinstance(value, str):
        try:
            return kind(value) if kind is float or value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    return value


# ---- the index ------------------------------------------------------------------------------------------------
# One JSON line per finished prompt. Besides the prompt's own settings it records the set's (model, scheduler,
# dtype, recording), so that a rerun with other settings is refused rather than mixed into the same folder.

ROW = {  # key → (check, what it must be)
    "index": (lambda v: checks.is_int(v) and v >= 0, "a whole number ≥ 0"),
    "prompt": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty text"),
    "seed": (checks.is_int, "a whole number"),
    "steps": (lambda v: checks.is_int(v) and v >= 1, "a whole number ≥ 1"),
    "guidance": (checks.is_finite_number, "a finite number"),
    "negative": (lambda v: v is None or isinstance(v, str), "a text or null"),
    "file": (lambda v: isinstance(v, str), "a file name"),
    "rank": (lambda v: checks.is_int(v) and v >= 0, "a whole number ≥ 0"),
    "words": (lambda v: isinstance(v, dict), "an object"),
    "settings": (lambda v: isinstance(v, dict), "an object"),
}
OPTIONAL_ROW = {  # keys a line may have (sets written before them lack them)
    # the option the model read the guidance by: guidance_scale, or true_cfg_scale (tiny-flux's real guidance)
    "guidance_option": (lambda v: v in ("guidance_scale", "true_cfg_scale"), "guidance_scale or true_cfg_scale"),
}


def _check_row(row) -> None:
    """Raise ``ValueError(what is wrong)`` unless ``row`` is an index line this command writes."""
    if not isinstance(row, dict):
        raise ValueError(f"not an index line (a JSON object with {sorted(ROW)}; got {type(row).__name__})")
    missing, unknown = sorted(set(ROW) - set(row)), sorted(set(row) - set(ROW) - set(OPTIONAL_ROW))
    if missing or unknown:
        raise ValueError(f"keys {missing} are missing" if missing else f"keys {unknown} are unknown")
    for key, (ok, what) in (ROW | OPTIONAL_ROW).items():
        if key in row and not ok(row[key]):
            raise ValueError(f"{key} must be {what} (got {row[key]!r})")
    expected = f"{row['index']:06d}.safetensors"
    if row["file"] != expected:  # a name of our own making: never a path out of the folder
        raise ValueError(f"prompt {row['index']}'s file must be {expected!r} (got {row['file']!r})")


def index_lines(folder) -> dict[int, tuple[dict, str]]:
    """Every index line in ``folder`` (``index.jsonl``, then the ``index-RANK.jsonl`` parts of a run in progress
    or cut short), checked, by prompt index: ``{index: (row, "FILE, line N")}``.

    A torn last line (a process killed while writing it) is skipped; every other line must be whole.
    Raises ``ValueError`` naming the file and line of a damaged line, or of a prompt indexed twice.
    """
    folder = Path(folder)
    found: dict[int, tuple[dict, str]] = {}
    parts = sorted(folder.glob("index-*.jsonl"), key=lambda p: int(p.stem.split("-")[1]) if INDEX_NAME.fullmatch(p.name) else -1)
    for part in [folder / "index.jsonl", *parts]:
        if not part.exists() and not part.is_symlink():
            continue
        if not part.is_file():
            raise ValueError(f"{part} is not a file (an index is a .jsonl file this command writes); move it away")
        try:
            text = part.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{part} is not UTF-8 text (byte {err.start}): not an index this command wrote") from None
        cut = lines(text)
        for n, line in enumerate(cut, start=1):
            if not line.strip():
                continue
            where = f"{part}, line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                if n == len(cut):  # no newline after it: a line torn by a kill, never finished
                    continue
                raise ValueError(f"{where}: not JSON ({err.msg})") from None
            try:
                _check_row(row)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            earlier = found.get(row["index"])
            # The same line in index.jsonl and a part: a merge cut short between writing one and removing the other
            if earlier is not None and (earlier[0] != row or earlier[1].rsplit(", line", 1)[0] == str(part)):
                raise ValueError(f"{where}: prompt {row['index']} is indexed twice (also {earlier[1]}); "
                                 "remove one of the two lines")
            found[row["index"]] = (row, where)
    return found


def read_index(folder) -> dict[int, dict]:
    """Every finished prompt's index line in ``folder``, by prompt index (see :func:`index_lines`)."""
    return {i: row for i, (row, _) in index_lines(folder).items()}


def disagreement(row: dict, header: dict) -> str | None:
    """What a trace file's header (:func:`~illustrated_sd.trace.unet.read_header`) says otherwise than its index
    ``row``, or ``None`` when they agree. The row's guidance is compared with the option the model read it as
    (``row["guidance_option"]``: ``guidance_scale``, or ``true_cfg_scale`` for tiny-flux's real guidance)."""
    pairs = (("prompt", "prompt"), ("seed", "seed"), ("steps", "num_steps"), ("guidance", row.get("guidance_option", "guidance_scale")))
    for key, field in pairs:
        if row[key] != header.get(field):
            return f"its trace file holds {key} {header.get(field)!r}, the index says {row[key]!r}"
    if (row["negative"] or None) != (header.get("negative_prompt") or None):
        return f"its trace file holds the negative prompt {header.get('negative_prompt')!r}, the index says {row['negative']!r}"
    return None


def trace_problem(folder: Path, row: dict) -> str | None:
    """Why ``row``'s trace file does not stand for it (missing, not a trace, another prompt), or ``None``."""
    try:
        header = read_header(Path(folder) / row["file"])
    except FileNotFoundError:
        return f"its trace file {row['file']} is missing"
    except ValueError as err:
        return str(err)
    return disagreement(row, header)


def set_settings(record=None, **settings) -> dict:
    """What makes the traces of a set what they are, besides each prompt's own settings: the model, scheduler
    and dtype asked for (``settings``) and what is recorded (``record``, a ``RecordOptions``), as JSON."""
    if record is not None:
        keep = ("compact", "keep_steps", "cross_attention", "layers", "per_head", "self_attention_resolutions", "map_dtype")
        settings["record"] = {f.name: getattr(record, f.name) for f in fields(record) if f.name in keep}
    return json.loads(json.dumps(settings, default=str))  # as the index will read it back (a tuple is a list)


def _changed(before: dict, now: dict, prefix: str = "") -> list[str]:
    """The settings that differ between two :func:`set_settings`, as "name: before → now"."""
    out = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} → {b!r}")
    return out


def check_set_folder(out: Path, jobs: list[Job], settings: dict, force: bool = False) -> dict[int, dict]:
    """Refuse an ``out`` that is not this prompt set's folder, before the model loads; returns the done rows by index.

    Refused (``ValueError``, naming the fix): a file; a folder holding what this command did not write (unless
    ``force``: then those are left alone); a damaged index line; a trace file at one of our names that is no trace
    (beside other files); a row for one of ``jobs`` with another prompt, seed, steps, guidance or negative prompt;
    traces made with other ``settings``. A row whose trace file is missing or does not load is not done: it is made again.
    Reads only; nothing is written.
    """
    out = check_output_folder(out, ours, force=force, fix="choose a new or empty folder, or pass --force to write beside "
                                                          "them (nothing this command did not write is ever replaced)")
    if not out.is_dir():
        return {}
    found = index_lines(out)
    done = {i: row for i, (row, _) in found.items() if trace_problem(out, row) is None}
    for row, where in found.values():
        changed = _changed(row["settings"], settings)
        if changed:
            raise ValueError(f"{out} holds traces made with other settings ({'; '.join(changed)}; {where}); rerun with "
                             "those settings to go on, or use another --out for these")
    for job in jobs:  # a folder of another prompt set would be silently mixed in: refuse it
        row = found.get(job.index, (None,))[0]
        if row is not None and (row["prompt"], row["seed"], row["steps"], row["guidance"], row["negative"]) != (
                job.prompt, job.seed, job.steps, job.guidance, job.negative):
            raise ValueError(f"{out} already holds prompt {job.index} as {row['prompt']!r} (seed {row['seed']}, {row['steps']} steps, "
                             f"guidance {row['guidance']}, negative {row['negative']!r}), not {job.prompt!r} (seed {job.seed}, "
                             f"{job.steps} steps, guidance {job.guidance}, negative {job.negative!r}); use another --out for "
                             "another prompt set")
    # Beside other programs' files (--force), a trace-named file that no index line claims is ours only if it is a
    # trace. (Alone in the folder it is ours either way: what a run killed after the save and before the index left.)
    indexed = {row["file"] for row, _ in found.values()}
    for path in sorted(out.iterdir()) if force else []:
        if TRACE_NAME.fullmatch(path.name) and path.name not in indexed:
            try:
                read_header(path)
            except ValueError:
                raise ValueError(f"{path} is not a trace, and this command would write one there; move it away "
                                 "or choose another --out") from None
    return done
def summary(trace) -> dict:
    """What the index keeps of a trace's attention: each word's share of all attention, and where its heatmap peaks
    (``[row, column]`` in latent pixels; for SD3 / Flux in image tokens, see :meth:`FlowTrace.attention_shares`)."""
    from .flow import FlowTrace

    if isinstance(trace, FlowTrace):
        if "image_to_text" not in trace.attention:
            return {}
        words, said = {}, {w for w, _ in trace.words}
        for word, share in trace.attention_shares().items():
            words[word] = {"share": round(share, 5)}
            if word in said:  # (not the padding, nor a marker such as T5's </s>)
                heat = trace.cross_attention(word)
                words[word]["peak"] = list(divmod(int(heat.argmax()), heat.shape[1]))
        return words
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
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a line torn by a kill: cut it off, or ours would join it
            tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
            os.ftruncate(fd, size - len(tail) + tail.rfind(b"\n") + 1)
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


def run_prompt_set(pipe_factory, jobs: list[Job], out, record=None, progress: bool = True, batch_size: int | None = None,
                   settings: dict | None = None, force: bool = False) -> dict:
    """Trace every job not yet done in ``out``; returns ``{"done": n, "made": n, "skipped": n, "rank": r, "batch_size": b}``.

    Args:
        pipe_factory: ``device → IllustratedPipeline``, called once per process with that process's device
            (``None`` when there is one process: then the caller's choice stands).
        jobs: from :func:`read_prompts`.
        out: the folder (made if missing). One that holds anything else than an earlier run of the same set with
            the same settings is refused before the model loads (see :func:`check_set_folder`).
        record: :class:`~illustrated_sd.recording.recorders.RecordOptions` for every trace (default: the pipeline's).
        batch_size: prompts drawn together in one call (neighbours with the same steps, guidance and negative
            prompt; see :func:`batches`). ``None``: 8 on a GPU (where one prompt leaves it waiting for Python),
            1 on the CPU (busy either way) and for SDXL (whose pipeline draws one prompt at a time).
        settings: what else makes these traces what they are (``{"model": …, "scheduler": …, "dtype": …}``, as
            the command line asks for them); kept in the index with ``record``, and a rerun must match them.
        force: write into a folder that holds other things too (they are left alone).
    """
    out = Path(out)
    if batch_size is not None:
        batch_size = checks.whole_number("batch_size", batch_size, minimum=1, hint="prompts per call, e.g. 8 on a GPU")
    settings = set_settings(record, **(settings or {}))
    # Every process checks the folder (reading only), so that all refuse together, before any model loads
    done = check_set_folder(out, jobs, settings, force=force)
    state = _state()
    rank, world, device = (0, 1, None) if state is None else (state.process_index, state.num_processes, state.device)
    if state is not None:
        state.wait_for_everyone()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.iterdir():  # what killed processes left half-written: never a trace, so never in an index
            if TEMP_NAME.fullmatch(stale.name):
                stale.unlink(missing_ok=True)
        _merge_index(out, done)  # traces that no longer load leave the index, to be made again
    if state is not None:
        state.wait_for_everyone()
    pending = [job for job in jobs if job.index not in done]
    mine = pending
    if state is not None and world > 1:
        with state.split_between_processes(pending) as part:
            mine = list(part)
    pipe = pipe_factory(device if world > 1 else None)  # one process: the device the user chose
    from ..loops.flow import FlowPipeline

    one_at_a_time = pipe.is_sdxl or isinstance(pipe, FlowPipeline)  # SDXL's loop, SD3's and Flux's draw one prompt per call
    if batch_size is None:
        batch_size = 8 if pipe.device.type == "cuda" and not one_at_a_time else 1
    if batch_size > 1 and one_at_a_time:
        raise ValueError(f"{'SDXL' if pipe.is_sdxl else pipe.family} prompt sets are drawn one prompt at a time: use --batch-size 1")
    part_file = out / f"index-{rank}.jsonl"
    bar = tqdm(total=len(mine), desc=f"prompts (process {rank + 1} of {world})" if world > 1 else "prompts", disable=not progress)
    for group in batches(mine, batch_size):
        first = group[0]
        if one_at_a_time:  # (the option the model reads the guidance by: guidance_scale, or tiny-flux's true_cfg_scale)
            guidance = pipe.guidance_option(first.guidance)
            traces = [pipe(first.prompt, num_inference_steps=first.steps, seed=first.seed, negative_prompt=first.negative,
                           record=record, progress=False, **guidance)]
        else:
            guidance = {"guidance_scale": first.guidance}
            traces = pipe([job.prompt for job in group], num_inference_steps=first.steps, seed=[job.seed for job in group],
                          negative_prompt=first.negative, record=record, progress=False, **guidance)
        option = next(iter(guidance))
        for job, trace in zip(group, traces):
            trace.save(out / job.file)  # atomic: complete, or not there at all
            _append_line(part_file, {**asdict(job), "file": job.file, "rank": rank, "words": summary(trace), "settings": settings,
                                     "guidance_option": option})
        bar.update(len(group))
    bar.close()
    if state is not None:
        state.wait_for_everyone()
    if rank == 0:
        _merge_index(out, read_index(out))
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


def _merge_index(out: Path, rows: dict[int, dict]) -> None:
    """``rows`` into ``index.jsonl``, in prompt order; then the parts go. Nothing to do in a folder without an index."""
    parts = list(out.glob("index-*.jsonl"))
    if not rows and not parts and not (out / "index.jsonl").exists():
        return
    with atomic_write(out / "index.jsonl", "index") as tmp:
        tmp.write_text("".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in sorted(rows)), encoding="utf-8")
    for part in parts:
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
        found = index_lines(self.folder)
        if not found:
            raise ValueError(f"{self.folder} holds no finished traces (no index*.jsonl lines); is it the --out of `illustrated-sd batch`?")
        for row, where in found.values():  # each trace's header against its row: a file swapped, replaced or cut short
            problem = trace_problem(self.folder, row)
            if problem is not None:
                raise ValueError(f"{where}: {problem}; rerun `illustrated-sd batch` with the same prompt file and --out to make it again")
        self.rows: list[dict] = [found[i][0] for i in sorted(found)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        """The trace of row ``i`` (Python-style: ``-1`` is the last), loaded now and checked against its row."""
        from .unet import Trace

        if not checks.is_int(i):
            raise TypeError(f"a TraceSet is indexed by row number, 0–{len(self) - 1} (got {i!r}); rows[i]['prompt'] says which prompt it is")
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} does not exist: this set has {len(self)} traces, 0–{len(self) - 1} (or -1 for the last)")
        row = self.rows[i]
        trace = Trace.load(self.folder / row["file"])
        problem = disagreement(row, {"prompt": trace.prompt, "seed": trace.seed, "num_steps": trace.num_steps,
                                     "guidance_scale": trace.guidance_scale, "true_cfg_scale": getattr(trace, "true_cfg_scale", None),
                                     "negative_prompt": trace.negative_prompt})
        if problem is not None:  # the file changed since the set was opened
            raise ValueError(f"{self.folder / row['file']}: {problem}; rerun `illustrated-sd batch` to make it again")
        return trace

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"TraceSet({str(self.folder)!r}, {len(self)} traces)"
