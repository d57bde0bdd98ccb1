"""How big is the report's explorer? The whole report.html, per explorer preset, for one layout's trace.

    python benchmarks/explorer_size.py                                  # the embedded tiny model, 128², 25 steps (CPU)
    python benchmarks/explorer_size.py --layout sd15 --device cuda      # SD 1.5's architecture, 512², 50 steps

A real architecture is built with random weights (as in gpu_speed.py): its pictures are noise, the worst
case for PNG, so its sizes are an upper bound for a trained model's. Results are merged into --out, one
entry per layout.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import pipeline_for  # benchmarks/common.py
from illustrated_sd.plot.explorer import PRESETS
from illustrated_sd.plot.report import write_report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="tiny", help="'tiny' (the embedded model) or an isd.models.unet layout, e.g. sd15")
    parser.add_argument("--steps", type=int, default=None, help="default: 25 for tiny, 50 otherwise")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("docs/explorer_size.json"))
    args = parser.parse_args()
    pipe, steps = pipeline_for(args.layout, args.device, args.steps)
    trace = pipe("a red circle on the left", num_inference_steps=steps, seed=0, progress=False)
    row = {"model": pipe.name, "size": [trace.height, trace.width], "steps": steps, "trace_mib": round(trace.nbytes / 2**20, 1),
           "report_mib": {}, "seconds": {}}
    with tempfile.TemporaryDirectory() as folder:
        for preset in [None, *PRESETS]:
            start = time.perf_counter()
            page = write_report(trace, Path(folder) / str(preset), scheduler=pipe.scheduler, decode=pipe.decode_latents, explorer=preset)
            row["report_mib"][preset or "none"] = round(page.stat().st_size / 2**20, 2)
            row["seconds"][preset or "none"] = round(time.perf_counter() - start, 1)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[args.layout] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
