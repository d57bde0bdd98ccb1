"""Execute the course notebooks top to bottom, save the executed copies, and time each one.

    python scripts/run_notebooks.py                       # → build/notebooks/*.ipynb, docs/notebook_times.json
    python scripts/run_notebooks.py notebooks/04_*.ipynb  # just one (its time joins the others in the record)

The committed notebooks stay without outputs; the docs site shows the executed copies (``make docs`` runs
only the ones older than their notebook or the package). The times are this machine's (CI's: 2 CPU cores).
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, default=sorted((ROOT / "notebooks").glob("*.ipynb")))
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "notebooks")
    parser.add_argument("--times", type=Path, default=ROOT / "docs" / "notebook_times.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    times = {}
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        # no widget state in the copy: with it, the docs page would load the widgets' JavaScript from a CDN
        NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=False, resources={"metadata": {"path": str(args.out)}}).execute()
        times[path.stem] = round(time.perf_counter() - start, 1)
        nbformat.write(nb, args.out / path.name)
        print(f"{path.stem}: {times[path.stem]} s", flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    before = json.loads(args.times.read_text()) if args.times.exists() else {}
    if before.get("machine") == machine:  # one notebook rerun keeps the others' times from the same machine
        times = {**before["seconds"], **times}
    args.times.parent.mkdir(parents=True, exist_ok=True)
    args.times.write_text(json.dumps({"machine": machine, "seconds": dict(sorted(times.items()))}, indent=1))


if __name__ == "__main__":
    main()
