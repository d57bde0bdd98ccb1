"""The command line: ``illustrated-sd explain "a red circle on the left" --out DIR`` (one generation, explained)
``illustrated-sd batch prompts.txt --out DIR`` (a prompt set, traced; :mod:`illustrated_sd.trace.sets`) and
``illustrated-sd export-web OUT`` (a static site that generates in the browser; :mod:`illustrated_sd.web.site`) and
``illustrated-sd serve OUT`` (that site from this machine, with the headers that give the page several threads)."""

import argparse
import shutil
import sys
import warnings
from pathlib import Path

import torch

from . import checks
from .trace.files import atomic_write, check_folder_name, check_output_folder, check_writable_folder, publish_folder, scratch_folder_beside
from .loops.unet import SCHEDULERS
from .plot.report import FILES

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake prints one line (what was wrong, and where help is) instead of the whole usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse(parser: argparse.ArgumentParser, argv) -> argparse.Namespace | int:
    """``parser.parse_args(argv)``, or the exit code when argparse exits (a mistake, or ``--help``)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="illustrated-sd", description="Stable Diffusion that shows its work.")
    sub = parser.add_subparsers(dest="command", required=True)
    explain = sub.add_parser("explain", help="generate one image and write an explained report (report.html) of how it was made",
                             description="Generate one image, record how it was made, and write to --out: report.html (one "
                                         "self-contained page explaining each part), the figures as PNGs, the image, "
                                         "and the trace (trace.safetensors, readable with isd.Trace.load). An existing --out "
                                         "that holds an earlier report is replaced as a whole once the new one is complete.")
    explain.add_argument("prompt", help='what to draw, e.g. "a red circle on the left"')
    explain.add_argument("--out", default="outputs/explain", help="folder to write into (default: %(default)s)")
    _generation_options(explain, seed_help="seed of the initial noise")
    explain.add_argument("--negative", default=None, help="negative prompt")
    _model_options(explain)
    explain.add_argument("--explorer", choices=["auto", "full", "light", "none"], default="auto",
                         help="the page's interactive explorer: every step (full), at most 10 steps with small pictures "
                              "(light: SD 1.5 at 512² makes a page of about 6 MB instead of 55), none, or auto: full up to "
                              "256-px images, else light (default: %(default)s)")
    batch = sub.add_parser("batch", help="trace every prompt of a file into a folder (resumable; several GPUs with accelerate launch)",
                           description="Generate and trace every prompt of PROMPTS (a .txt with one prompt per line, or a .csv / "
                                       ".jsonl with a 'prompt' column and optional seed, steps, guidance, negative) into --out: one "
                                       "compact trace per prompt (000000.safetensors, ...: the heatmaps averaged over the steps, "
                                       "a few steps' latents; --full for everything) and index.jsonl (prompt, settings, file, each "
                                       "word's share of the attention and where it peaks). A rerun skips what is done. Several "
                                       "GPUs: accelerate launch --multi_gpu --num_processes N -m illustrated_sd batch PROMPTS --out DIR. "
                                       "Read the folder with isd.TraceSet(DIR).")
    batch.add_argument("prompts", help="the prompt file (.txt, .csv or .jsonl)")
    batch.add_argument("--out", default="outputs/batch", help="folder to write into (default: %(default)s)")
    _generation_options(batch, seed_help="prompt i's seed is SEED + i", unless=", unless its row says")
    batch.add_argument("--full", action="store_true", help="keep full traces (every step, layer and text layer; 12 MiB each for the "
                                                           "tiny model, 209 MiB for SD 1.5) instead of compact ones (default)")
    batch.add_argument("--no-maps", action="store_true", help="record no cross-attention maps (a much smaller trace; no word summaries)")
    batch.add_argument("--batch-size", type=int, default=None, help="prompts drawn together in one call (default: 8 on a GPU, "
                                                                    "1 on the CPU and for SDXL)")
    batch.add_argument("--force", action="store_true", help="write into an --out that holds files of other programs too (they are "
                                                            "left alone: nothing this command did not write is replaced or removed)")
    _model_options(batch)
    web = sub.add_parser("export-web", help="write a static web site in which the embedded model generates in the browser",
                         description="Write OUT: a static site (index.html, the model as ONNX files, onnxruntime-web and the "
                                     "tokenizer) in which a visitor's browser generates and explores images, with nothing "
                                     "fetched from outside the folder. Serve it with any static host, or locally: "
                                     "illustrated-sd serve OUT. The first export downloads the pinned npm packages "
                                     "(illustrated_sd/web/npm.lock.json) into ~/.cache/illustrated_sd/npm/.")
    web.add_argument("out", help="folder to write into (new, empty, or an earlier export-web)")
    web.add_argument("--force", action="store_true", help="write into an OUT that holds other files too (they are left alone)")
    web.add_argument("--webgpu", action="store_true", help="also ship onnxruntime-web's WebGPU build (18 MB more): the page runs "
                                                           "on the GPU where the browser offers one (Chromium 137+), else on WebAssembly")
    serve = sub.add_parser("serve", help="serve a site that export-web wrote, on this machine (browsers do not run it from file://)",
                           description="Serve SITE (written by export-web) at http://127.0.0.1:PORT/ until Ctrl-C, with the "
                                       "COOP/COEP headers that make the page cross-origin isolated, so onnxruntime-web runs on "
                                       "several threads. Opened straight from disk (file://) the page cannot load its model.")
    serve.add_argument("site", help="the folder export-web wrote")
    serve.add_argument("--port", type=int, default=8000, help="the port (default: %(default)s; 0 = any free one)")
    serve.add_argument("--plain", action="store_true", help="no COOP/COEP headers: one thread, as a plain static host serves it")
    return parser


def _generation_options(parser: argparse.ArgumentParser, seed_help: str, unless: str = "") -> None:
    """Steps, guidance and seed (``unless``: a batch file's row may set them itself)."""
    parser.add_argument("--steps", type=checks.positive_int, default=None,
                        help=f"denoising steps{unless} (default: the model's: 25 for SD 1/2 and SDXL, 28 for SD3 and Flux-dev, "
                             "4 for Flux-schnell)")
    parser.add_argument("--guidance", type=checks.finite_float, default=None,
                        help=f"guidance scale{unless} (default: the model's: classifier-free 7.5 for SD 1/2 and SDXL, 7.0 for "
                             "SD3; Flux-dev's distilled guidance 3.5)")
    parser.add_argument("--seed", type=checks.any_int, default=0, help=f"{seed_help}{unless} (default: %(default)s)")


def _model_options(parser: argparse.ArgumentParser) -> None:
    """Which model, where, in which precision, with which sampler: the same for every command."""
    parser.add_argument("--model", default=None, help="diffusers folder or Hub id (default: the embedded tiny model)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default: %(default)s; under accelerate launch, "
                                                        "each process's own)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="(default: %(default)s)")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default=None, help="the sampler (default: the model's)")


def _ours(name: str) -> bool:
    """Whether ``name`` is a file that ``explain`` writes (so an earlier report may be replaced)."""
    return name in (*FILES, "summary.txt", "trace.safetensors")


def explain(args) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import illustrated_sd as isd
    from illustrated_sd.plot.report import write_report

    # Everything that can be refused is refused before the model is loaded: the device, and --out.
    device = checks.device(args.device)
    out = check_output_folder(check_folder_name(args.out), _ours)  # (a link to a folder: its target, and the link stays)
    check_writable_folder(out.parent)
    # Everything is written into a scratch folder beside --out, which replaces --out in one step at
    # the end: a failure leaves the old report or the new one, never a mix.
    staging = scratch_folder_beside(out)
    try:
        pipe = isd.load_pipeline(args.model, device=device, dtype=DTYPES[args.dtype], scheduler=args.scheduler)
        steps, guidance = model_settings(args)
        trace = pipe(args.prompt, num_inference_steps=steps, seed=args.seed, negative_prompt=args.negative, **pipe.guidance_option(guidance))
        trace.save(staging / "trace.safetensors")
        write_report(trace, staging, scheduler=pipe.scheduler, decode=pipe.decode_latents,
                     explorer=None if args.explorer == "none" else args.explorer)
        with atomic_write(staging / "summary.txt") as tmp:
            tmp.write_text(summary(trace) + "\n", encoding="utf-8")
        check_output_folder(out, _ours)  # again: something may have appeared there while we generated
        publish_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def batch(args) -> Path:
    import illustrated_sd as isd
    from illustrated_sd.trace.sets import read_prompts, run_prompt_set
    from illustrated_sd.models.loading import train_timesteps

    # Everything that can be refused is refused before the model loads: the whole prompt file, the device,
    # --out (run_prompt_set checks the folder against the set and these settings before it calls make_pipe)
    out = check_folder_name(args.out)
    steps, guidance = model_settings(args)
    jobs = read_prompts(args.prompts, seed=args.seed, steps=steps, guidance=guidance, max_steps=train_timesteps(args.model))
    device = checks.device(args.device)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder for --out")
    check_writable_folder(out if out.exists() else out.parent)
    record = isd.RecordOptions(cross_attention=not args.no_maps, compact=not args.full)
    model = str(Path(args.model).expanduser().resolve()) if args.model and Path(args.model).expanduser().is_dir() else args.model
    settings = {"model": model or "embedded", "scheduler": args.scheduler or "the model's", "dtype": args.dtype}

    def make_pipe(process_device):
        return isd.load_pipeline(args.model, device=process_device or device, dtype=DTYPES[args.dtype], scheduler=args.scheduler)

    result = run_prompt_set(make_pipe, jobs, out, record=record, batch_size=args.batch_size, settings=settings, force=args.force)
    if result["rank"] == 0:
        print(f"{result['done']} of {len(jobs)} prompts traced in {out}/ ({result['skipped']} were already there); "
              f"read them with isd.TraceSet({str(out)!r})")
    return out


def export_web(args) -> Path:
    try:
        from illustrated_sd.web.site import export_web as write_site, folder_bytes
    except ImportError as err:  # onnx / onnxruntime missing: the message names the install
        raise ValueError(str(err)) from err

    out = write_site(args.out, force=args.force, webgpu=args.webgpu)
    print(f"wrote the site ({folder_bytes(out) / 2**20:.1f} MiB) to {out}/\nserve it: illustrated-sd serve {out} "
          f"(or any static server: python -m http.server -d {out}), then open http://127.0.0.1:8000/")
    return out


def serve(args) -> Path:
    from illustrated_sd.web.serve import site_server

    site = Path(args.site).expanduser()
    if not (site / "index.html").is_file() or not (site / "models.json").is_file():
        raise ValueError(f"{site} is not a site written by export-web (no index.html and models.json); "
                         f"write one first: illustrated-sd export-web {site}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be from 0 to 65535 (got {args.port}); 8000 is usual")
    httpd, url = site_server(site, port=args.port, isolated=not args.plain)
    threads = "one thread (--plain)" if args.plain else "several threads (cross-origin isolated)"
    print(f"serving {site}/ at {url} ({threads}); open it in a browser, Ctrl-C to stop", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        httpd.server_close()
    return site


def model_settings(args) -> tuple[int, float]:
    """``--steps`` and ``--guidance``, or the model's own where they were not given (read from its folder, not loaded)."""
    from illustrated_sd.models.loading import model_defaults

    defaults = model_defaults(args.model)
    return (defaults["steps"] if args.steps is None else args.steps,
            defaults["guidance"] if args.guidance is None else args.guidance)


def summary(trace) -> str:
    """The few lines ``explain`` prints into summary.txt: the trace, its tokens, where each word's attention peaks."""
    from illustrated_sd.trace.flow import FlowTrace

    if isinstance(trace, FlowTrace):  # SD3 / Flux: the prompt's tokens in the joint sequence, peaks on the image-token grid
        lines = [repr(trace), f"tokens: {trace.tokens}"]
        lines += [f"dropped (over {trace.text_length} {encoder} slots): {text}" for encoder, text in trace.truncated.items()]
        if "image_to_text" in trace.attention:
            lines.append(f"padding absorbs {trace.padding_share():.1%} of the picture's attention to the text")
            said = {w for w, _ in trace.words}
            for word, share in trace.attention_shares().items():
                if word in said:
                    heat = trace.cross_attention(word)
                    y, x = divmod(int(heat.argmax()), heat.shape[1])
                    lines.append(f"  {word!r:>14}: {share:.1%} of the text's attention, peaking at image token (row {y}, col {x}) "
                                 f"of {tuple(heat.shape)}")
        return "\n".join(lines)
    lines = [repr(trace), f"tokens: {trace.tokens}"]
    if trace.truncated_text:
        lines.append(f"dropped (over 77 tokens): {trace.truncated_text}")
    for token in trace.tokens[1:-1]:
        heat = trace.cross_attention(token)
        y, x = divmod(int(heat.argmax()), heat.shape[1])
        lines.append(f"  {token!r:>14}: attention peaks at latent pixel (row {y}, col {x}) of {tuple(heat.shape)}")
    return "\n".join(lines)


def one_line(err: BaseException) -> str:
    """An error as the one line a command line prints."""
    return " ".join(str(err).split()) or type(err).__name__


def main(argv=None) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            out = {"explain": explain, "batch": batch, "export-web": export_web, "serve": serve}[args.command](args)
    except (ValueError, TypeError, OSError, RuntimeError) as err:  # (FileNotFoundError and ModelLoadError among them)
        print(f"illustrated-sd: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("illustrated-sd: interrupted; nothing was written", file=sys.stderr)
        return 130
    if args.command == "explain":
        print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}/\nopen {out / 'report.html'} in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
