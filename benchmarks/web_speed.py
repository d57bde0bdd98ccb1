"""Seconds per image of the exported web page (onnxruntime-web, WebAssembly, in headless Chromium) vs Python on this
machine's CPU: 25 steps of DDIM at guidance 7.5, 3 prompts, rounds alternating page and Python in one process.

    python benchmarks/web_speed.py --rounds 5 --out docs/web_speed.json

The page is served twice by Python's http.server: plainly (as any static host serves it: one WebAssembly thread), and
with the COOP/COEP headers that make it cross-origin isolated (SharedArrayBuffer, so onnxruntime may use threads).
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import illustrated_sd as isd
from illustrated_sd.web.serve import site_server

PROMPTS = ["a red circle on the left", "a yellow triangle on the left and a purple heart on the right",
           "a blue square at the top and a green star at the bottom"]


def serve(folder: Path, isolated: bool) -> tuple:
    return site_server(folder, isolated=isolated, background=True)


class Page:
    """The page open in headless Chromium, everything outside its folder refused; `load_seconds`: open → "ready"."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page()
        self.page.context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())
        started = time.perf_counter()
        self.page.goto(url)
        self.page.wait_for_function("/^(ready|error)/.test(document.getElementById('status').textContent)", timeout=120_000)
        self.load_seconds = time.perf_counter() - started
        assert self.page.text_content("#status") == "ready", self.page.text_content("#status")
        self.isolated = self.page.evaluate("self.crossOriginIsolated")

    def generate(self, prompt: str, seed: int, steps: int) -> tuple[float, float, dict]:
        """Seconds from pressing Generate to "done" (the picture and the explorer shown), to every step's x̂₀ decoded,
        and the worker's message."""
        for field, value in (("#prompt", prompt), ("#steps", steps), ("#seed", seed), ("#guidance", 7.5)):
            self.page.fill(field, str(value))
        self.page.select_option("#sampler", "ddim")
        self.page.evaluate("window.isdResult = null")
        started = time.perf_counter()
        self.page.click("#generate")
        self.page.wait_for_function("window.isdResult || document.getElementById('status').textContent.startsWith('error')",
                                    timeout=300_000, polling=50)
        seconds = time.perf_counter() - started
        assert self.page.text_content("#status").startswith("done"), self.page.text_content("#status")
        self.page.wait_for_function("window.isdResult.x0Ready", timeout=300_000, polling=50)
        x0_seconds = time.perf_counter() - started
        return seconds, x0_seconds, self.page.evaluate("({seconds: isdResult.seconds, threads: isdResult.threads, backend: isdResult.backend})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for Python")
    parser.add_argument("--site", type=Path, help="an exported site (default: export one into a temp folder)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", type=Path, default=Path("docs/web_speed.json"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from illustrated_sd.web.site import export_web

    torch.set_num_threads(args.threads)
    pipe = isd.load_pipeline()
    scratch = tempfile.TemporaryDirectory()
    site = args.site or export_web(Path(scratch.name) / "site", pipe)
    servers = {"page": serve(site, False), "page_isolated": serve(site, True)}

    def python(prompt, seed):
        started = time.perf_counter()
        pipe(prompt, num_inference_steps=args.steps, guidance_scale=7.5, seed=seed, progress=False)
        return time.perf_counter() - started

    runs = {name: [] for name in ("python", "page", "page_isolated")}
    worker_seconds, x0_seconds = {name: [] for name in servers}, {name: [] for name in servers}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        pages = {name: Page(browser, url) for name, (_, url) in servers.items()}
        used = {}
        python(PROMPTS[0], 0)
        for page in pages.values():
            page.generate(PROMPTS[0], 0, args.steps)  # warm-up: the first run compiles onnxruntime's kernels
        for r in range(args.rounds):
            for i, prompt in enumerate(PROMPTS):
                runs["python"].append(python(prompt, r * 10 + i))
                for name, page in pages.items():
                    seconds, x0, message = page.generate(prompt, r * 10 + i, args.steps)
                    runs[name].append(seconds)
                    x0_seconds[name].append(x0)
                    worker_seconds[name].append(message["seconds"])
                    used[name] = {"threads": message["threads"], "backend": message.get("backend"),
                                  "cross_origin_isolated": page.isolated, "load_seconds": round(page.load_seconds, 2)}
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in runs.items()),
                  flush=True)
        browser_version = browser.version
        browser.close()
    for httpd, _ in servers.values():
        httpd.shutdown()

    median = {name: round(statistics.median(v), 2) for name, v in runs.items()}
    result = {
        "what": f"seconds per image, {args.steps} DDIM steps, guidance 7.5, 3 prompts x {args.rounds} rounds, alternating; "
                "page: pressing Generate to 'done' (the picture and the explorer shown); page x0_seconds: to every step's x0 "
                "decoded for the slider, after the picture; "
                "page worker_seconds: the worker's own count, up to the final image",
        "written_by": "benchmarks/web_speed.py",
        "machine": {"cpu_count": os.cpu_count(), "chromium": browser_version,
                    "chromium_binary": subprocess.run([args.chromium, "--version"], capture_output=True, text=True).stdout.strip(),
                    "torch": torch.__version__, "torch_threads": args.threads},
        "median_seconds": median,
        "median_worker_seconds": {name: round(statistics.median(v), 2) for name, v in worker_seconds.items()},
        "median_x0_seconds": {name: round(statistics.median(v), 2) for name, v in x0_seconds.items()},
        "ratio_to_python": {name: round(median[name] / median["python"], 2) for name in servers},
        "page_settings": used,
        "runs": {name: [round(s, 3) for s in v] for name, v in runs.items()},
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("machine", "median_seconds", "median_worker_seconds", "ratio_to_python",
                                             "page_settings")}, indent=1))


if __name__ == "__main__":
    main()
