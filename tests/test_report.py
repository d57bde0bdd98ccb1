"""The explained report: written by the CLI, opened in a real headless Chromium, every image loaded."""

import os
import shutil

import pytest
from PIL import Image

from illustrated_sd.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["explain", "a yellow triangle on the left and a purple heart on the right", "--steps", "6", "--out", str(out)]) == 0
    return out / "report.html"


def test_report_is_self_contained_and_explains_each_part(report):
    page = report.read_text()
    for heading in ("From words to tokens", "text embeddings", "Where the UNet looked", "denoising loop",
                    "What the model believes", "noise schedule"):
        assert heading in page
    assert page.count("<img") == 6 and page.count("src='data:image/png;base64,") == 6
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    assert "&lt;|startoftext|&gt;" in page  # tokens are escaped, not swallowed as tags
    for png in ("image.png", "token_heatmaps.png", "filmstrip_pred_x0.png", "noise_schedule.png"):
        assert (report.parent / png).stat().st_size > 1000


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium (`make test` installs it). Without one: a skip on a laptop, a failure under CI."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium for the browser test, and none is installed: run `make browser` (part of `make test`)")
        pytest.skip("no chromium on this machine: `make browser` installs Debian's (or install Chromium yourself)")
    return CHROMIUM


def test_report_renders_in_headless_chromium(report, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert len(widths) == 6 and all(w > 0 for w in widths)
    assert errors == []
    with Image.open(shot) as image:
        assert image.size[0] == 1200 and image.size[1] > 2000
