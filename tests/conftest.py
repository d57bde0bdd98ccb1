"""Shared, session-scoped objects: real (tiny) pipelines and a real trace, built once."""

import importlib
import os
import shutil

import matplotlib
import pytest
import torch

# The recording's GPU kernels (illustrated_sd/recording/joint_kernels.py, Triton) are tested on the CPU by Triton's
# interpreter, which must be on before Triton is first imported (diffusers imports it when it is installed).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import illustrated_sd as isd  # noqa: E402  (after the interpreter is chosen)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

PROMPT = "a red circle on the left"


@pytest.fixture(autouse=True)
def close_figures():
    """Every test starts with no open matplotlib figure, and leaves none (pyplot keeps each one until closed)."""
    yield
    plt.close("all")


@pytest.fixture(scope="session")
def interpreted_kernels():
    """:mod:`illustrated_sd.recording.joint_kernels`: the GPU kernels, run on the CPU by Triton's interpreter (turned on
    above)."""
    pytest.importorskip("triton", reason="Triton is a dev dependency (pip install -e '.[dev]')")
    if os.environ.get("TRITON_INTERPRET") != "1":  # a machine with a GPU: benchmarks/dit_kernels.py checks them there
        pytest.skip("the kernels run through Triton's interpreter on machines without a GPU")
    return importlib.import_module("illustrated_sd.recording.joint_kernels")


@pytest.fixture(scope="session")
def pipe():
    """The embedded default pipeline, as a student gets it from isd.load_pipeline()."""
    return isd.load_pipeline()


@pytest.fixture(scope="session")
def sd2_pipe():
    """A tiny pipeline in the SD 2.x layout: v-prediction, linear projections, per-block head counts."""
    return isd.IllustratedPipeline(isd.build_random_pipeline("tiny-sd2", seed=1))


@pytest.fixture(scope="session")
def trace(pipe):
    return pipe(PROMPT, num_inference_steps=6, guidance_scale=7.5, seed=0, progress=False)


@pytest.fixture(scope="session")
def head_trace(pipe):
    return pipe(PROMPT, num_inference_steps=3, seed=0, progress=False,
                record=isd.RecordOptions(per_head=True, self_attention_resolutions=(8,)))


def plain_image(illustrated, prompt, steps, guidance, seed, **kwargs):
    """What plain diffusers makes with the same components and settings."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return illustrated.pipeline(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator, **kwargs).images[0]


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium (`make test` installs it). Without one: a skip on a laptop, a failure under CI."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium for the browser tests, and none is installed: run `make browser` (part of `make test`)")
        pytest.skip("no chromium on this machine: `make browser` installs Debian's (or install Chromium yourself)")
    return found


def launch(playwright, chromium: str, extra=(), **kwargs):
    """Headless Chromium for a test: no sandbox (CI runs as root), no GPU (unless ``extra`` flags ask for an emulated
    one), nothing that phones home."""
    gpu = [] if extra else ["--disable-gpu"]
    return playwright.chromium.launch(executable_path=chromium, args=[
        "--no-sandbox", *gpu, "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", *extra], **kwargs)
