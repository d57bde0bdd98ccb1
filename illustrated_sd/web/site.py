"""A static web site in which the embedded model generates, in the visitor's browser: ``illustrated-sd export-web OUT/``.

The folder it writes needs no server code and nothing from the network; any static host (or ``python -m http.server``)
serves it:

    index.html, page.css, app.js   the page: prompt, seed, steps, guidance, sampler, Generate; progress; the explorer
    worker.js                      the generation loop, in a Web Worker (the page stays responsive while it runs):
                                   tokenize → encode [uncond, prompt] → seeded noise → for each t: UNet, guidance,
                                   DDIM step → decode; it builds the explorer's data (``plot/explorer.explorer_data``'s
                                   format) from what the loop saw
    torch_random.js                torch's CPU ``randn`` (mt19937 + Box–Muller), so a seed gives Python's noise
    explorer.html/.js/.css         the report's explorer (assets/explorer), reused as it is; colormaps.json its colours
    text_encoder.onnx, unet.onnx, vae_decoder.onnx, models.json    :func:`~illustrated_sd.web.onnx_export.export_onnx`
    tokenizer/                     the CLIP tokenizer (tokenizer.json, tokenizer_config.json), as transformers.js reads it
    vendor/                        onnxruntime-web (its WebAssembly build) and transformers.js (for the tokenizer),
                                   copied from the npm tarballs pinned in ``npm.lock.json``

The npm files are not in the package (onnxruntime's WebAssembly alone is 15 MB): the first export downloads the pinned
tarballs from registry.npmjs.org into ``~/.cache/illustrated_sd/npm/``, checks each one's sha512 against the lock
file, and copies the few files the page needs.
"""

import base64
import hashlib
import json
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from ..trace.files import atomic_write, check_writable_folder
from .onnx_export import MANIFEST, export_onnx

PAGE_FILES = ["index.html", "page.css", "app.js", "worker.js", "torch_random.js"]
EXPLORER_FILES = ["explorer.html", "explorer.js", "explorer.css"]
SITE_MANIFEST = "site.json"
SITE_FORMAT = "illustrated_sd web site 1"  # site.json says this folder was written here: only such a folder is rewritten
CACHE = Path.home() / ".cache" / "illustrated_sd" / "npm"


def npm_lock() -> dict:
    """The pinned npm packages: ``{name: {version, tarball, integrity, files: {path in tarball: name in vendor/}}}``;
    onnxruntime-web's ``webgpu_files`` are its JSPI build (WebAssembly with the WebGPU backend), vendored only when
    asked for (``export_web(webgpu=True)``)."""
    return json.loads(resources.files("illustrated_sd.web").joinpath("npm.lock.json").read_text(encoding="utf-8"))


def check_integrity(data: bytes, integrity: str, what: str) -> None:
    """Raise ``ValueError`` unless ``data`` has the npm ``integrity`` (``"sha512-<base64 digest>"``)."""
    algorithm, _, expected = integrity.partition("-")
    got = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if got != expected:
        raise ValueError(f"{what} does not match its pinned {algorithm} hash (got {got[:16]}…, want {expected[:16]}…); "
                         f"delete it from {CACHE} and export again")


def npm_tarball(name: str, package: dict, registry: str, cache: Path = CACHE) -> Path:
    """The tarball of a pinned package, from the cache or else downloaded (and cached); its hash checked either way."""
    path = cache / Path(package["tarball"]).name
    if path.is_file():
        data = path.read_bytes()
    else:
        url = f"{registry}/{package['tarball']}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise ValueError(f"cannot download {name}@{package['version']} ({err}); connect to the internet once, or put {url} "
                             f"into {cache}/") from err
        check_integrity(data, package["integrity"], f"the download of {url}")
        with atomic_write(path, "npm tarball") as tmp:
            tmp.write_bytes(data)
    check_integrity(data, package["integrity"], str(path))
    return path


def vendor_npm(folder: Path, cache: Path = CACHE, webgpu: bool = False) -> dict[str, int]:
    """Copy the files the page needs out of the pinned npm tarballs into ``folder`` (with ``webgpu``, onnxruntime-web's
    WebGPU build too); ``{file name: bytes}``."""
    lock = npm_lock()
    written = {}
    for name, package in lock["packages"].items():
        files = {**package["files"], **(package.get("webgpu_files", {}) if webgpu else {})}
        with tarfile.open(npm_tarball(name, package, lock["registry"], cache)) as tar:
            for inside, target in files.items():
                member = tar.extractfile(inside) if inside in tar.getnames() else None
                if member is None:
                    raise ValueError(f"{name}@{package['version']} has no file {inside}; npm.lock.json is wrong")
                with atomic_write(folder / target, "vendored file") as tmp:
                    tmp.write_bytes(member.read())
                written[target] = (folder / target).stat().st_size
    return written


def write_tokenizer(tokenizer, folder: Path) -> list[str]:
    """Save ``tokenizer`` as a fast tokenizer into ``folder``: ``tokenizer.json`` (vocabulary, merges, normaliser,
    special tokens) and ``tokenizer_config.json``, the two files transformers.js's ``AutoTokenizer`` reads; the names."""
    from transformers import CLIPTokenizerFast

    folder.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tokenizer-") as scratch:
        tokenizer.save_pretrained(scratch)
        CLIPTokenizerFast.from_pretrained(scratch).save_pretrained(Path(scratch) / "fast")
        names = []
        for path in sorted((Path(scratch) / "fast").iterdir()):
            with atomic_write(folder / path.name, "tokenizer file") as tmp:
                shutil.copyfile(path, tmp)
            names.append(path.name)
    return names


def page_files() -> dict[str, str]:
    """The page's own files and the explorer's: ``{name in the site: text}``."""
    page = resources.files("illustrated_sd.web").joinpath("page")
    explorer = resources.files("illustrated_sd").joinpath("assets", "explorer")
    return ({name: page.joinpath(name).read_text(encoding="utf-8") for name in PAGE_FILES}
            | {name: explorer.joinpath(name).read_text(encoding="utf-8") for name in EXPLORER_FILES})


def check_site_folder(folder, force: bool) -> Path:
    """A folder to write the site into: new, empty, or one this function wrote (``site.json``); else refused
    unless ``force`` (then the site's files are written among the others, which stay)."""
    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()) and not force:
        ours = False
        try:
            ours = json.loads((folder / SITE_MANIFEST).read_text()).get("format") == SITE_FORMAT
        except (OSError, ValueError, UnicodeDecodeError, AttributeError):
            ours = False
        if not ours:
            raise ValueError(f"{folder} is not empty and was not written by export-web; refusing to write into it: "
                             "choose a new or empty folder, or pass --force (force=True) to write among its files")
    folder = check_writable_folder(folder)
    for sub in ("vendor", "tokenizer"):
        if (folder / sub).exists() and not (folder / sub).is_dir():
            raise ValueError(f"{folder / sub} is a file where the site keeps a folder; move it away")
    return folder


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def export_web(folder, pipe=None, force: bool = False, webgpu: bool = False) -> Path:
    """Write a static site in which ``pipe`` (default: the embedded model) generates in the browser; returns the folder.

    Open ``folder/index.html`` through any static web server (``python -m http.server -d folder``, a static host);
    it fetches nothing outside its folder. The page's generation equals ``pipe(prompt, seed=…,
    num_inference_steps=…, guidance_scale=…)`` within a few grey levels (float16 weights, float32 arithmetic).

    Args:
        folder: where to write: new, empty, or an earlier export (its files are replaced).
        pipe: an SD 1/2 :class:`~illustrated_sd.IllustratedPipeline` in float32 at a latent size the page draws
            (default: ``isd.load_pipeline()``, 128×128 px from 16×16×4 latents).
        force: write into a folder that holds other files too (they are left alone).
        webgpu: also ship onnxruntime-web's WebGPU build (18 MB more), which the page uses where the browser offers a
            GPU adapter and WebAssembly's JSPI (Chromium 137 and later); elsewhere it runs on WebAssembly as without.
    Returns:
        the folder; ``site.json`` in it lists what was written. For the embedded model it holds 64.6 MB (61.6 MiB):
        the three ONNX files 45.3 MB (float16 weights), onnxruntime's WebAssembly 14.8, the tokenizer 3.6,
        transformers.js 0.6.
    Example:
        >>> export_web("site")   # then: python -m http.server -d site, and open http://127.0.0.1:8000/
    """
    for flag, value in (("force", force), ("webgpu", webgpu)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} is True or False (got {value!r})")
    folder = check_site_folder(folder, force)
    if pipe is None:
        import illustrated_sd as isd

        pipe = isd.load_pipeline()
    vendored = vendor_npm(folder / "vendor", webgpu=webgpu)  # first: a missing download fails before the slow export
    for stale in set(npm_lock()["packages"]["onnxruntime-web"]["webgpu_files"].values()) - set(vendored):
        (folder / "vendor" / stale).unlink(missing_ok=True)  # an earlier export's WebGPU build, not asked for now
    info = export_onnx(pipe, folder)
    tokenizer = write_tokenizer(pipe.tokenizer, folder / "tokenizer")
    for name, text in page_files().items():
        with atomic_write(folder / name, "page file") as tmp:
            tmp.write_text(text, encoding="utf-8")
    from ..plot.explorer import page_colormaps

    with atomic_write(folder / "colormaps.json", "colormaps") as tmp:
        tmp.write_text(json.dumps(page_colormaps()))
    site = {"format": SITE_FORMAT, "model": info["model"], "models": MANIFEST, "tokenizer": tokenizer,
            "page": PAGE_FILES + EXPLORER_FILES + ["colormaps.json"],
            "vendor": {name: {"bytes": size} for name, size in vendored.items()},
            "npm": {name: p["version"] for name, p in npm_lock()["packages"].items()}, "webgpu": webgpu}
    with atomic_write(folder / SITE_MANIFEST, "site.json") as tmp:
        tmp.write_text(json.dumps(site, indent=1))
    return folder
