"""The explained report: written by the CLI, opened in a real headless Chromium, every image loaded; its
explorer driven there like a student would (slider, play, token picker, hover), offline."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from illustrated_sd.cli import main

from .conftest import launch


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    # the default settings (25 steps, 128²): the page a student gets from `make demo`
    assert main(["explain", "a yellow triangle on the left and a purple heart on the right", "--out", str(out)]) == 0
    return out / "report.html"


def test_report_is_self_contained_and_explains_each_part(report):
    page = report.read_text()
    for heading in ("From words to tokens", "text embeddings", "Where the UNet looked", "denoising loop",
                    "What the model believes", "noise schedule"):
        assert heading in page
    assert page.count("src='data:image/png;base64,") == 6  # the hero and five figures
    assert page.count('id="isd-explorer"') == 1 and page.count("id='isd-data'") == 1  # the explorer, its data inline
    assert report.stat().st_size <= 10 * 2**20  # small enough to e-mail
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    assert "&lt;|startoftext|&gt;" in page  # tokens are escaped, not swallowed as tags
    for png in ("image.png", "token_heatmaps.png", "filmstrip_pred_x0.png", "noise_schedule.png"):
        assert (report.parent / png).stat().st_size > 1000


def test_report_renders_in_headless_chromium(report, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    errors = []
    with sync_playwright() as p:
        browser = launch(p, chromium)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert len(widths) == 8 and all(w > 0 for w in widths)  # six figures, the explorer's image and x̂₀
    assert errors == []
    with Image.open(shot) as image:
        assert image.size[0] == 1200 and image.size[1] > 2000


# ---- the explorer, driven in the browser ------------------------------------------------------------------

def _canvas(page, selector: str) -> str:
    return page.eval_on_selector(selector, "c => c.toDataURL()")


def test_the_explorer_answers_the_slider_the_tokens_and_the_mouse_offline(report, chromium, tmp_path):
    """Each control changes what it should, the numbers shown are the trace's, nothing is fetched, no errors."""
    from playwright.sync_api import sync_playwright

    import illustrated_sd as isd

    trace = isd.Trace.load(report.parent / "trace.safetensors")
    errors, requests = [], []
    with sync_playwright() as p:
        browser = launch(p, chromium)
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda err: errors.append(str(err)))

        def only_the_file(route):  # the page itself may load; any other request fails the test
            if route.request.url == report.as_uri():
                return route.continue_()
            requests.append(route.request.url)
            return route.abort()

        page.route("**/*", only_the_file)
        page.goto(report.as_uri())
        page.wait_for_function("document.querySelectorAll('#isd-token-list button').length > 0")
        shot = lambda name: page.locator("#isd-explorer").screenshot(path=str(tmp_path / f"explorer-{name}.png"))  # noqa: E731
        shot("opened")

        # It opens at the last step, and the start marker's share is the trace's own (all layers, that step).
        assert page.input_value("#isd-step") == str(trace.num_steps - 1)
        assert page.locator("#isd-token-list button").count() == len(trace.tokens)
        start = page.locator("[data-token='0']").inner_text()
        assert start.startswith("0: <|startoftext|>")
        assert float(start.split()[-1].rstrip("%")) == pytest.approx(100 * trace.attention_shares(step=-1)["<|startoftext|>"], abs=1.0)

        # The slider: the first step's x̂₀ is another picture, and the label says which step.
        last_x0 = page.get_attribute("#isd-x0", "src")
        page.focus("#isd-step")
        page.keyboard.press("Home")
        assert page.get_attribute("#isd-x0", "src") != last_x0 and page.get_attribute("#isd-x0", "data-step") == "0"
        assert page.inner_text("#isd-step-label").startswith(f"step 1 of {trace.num_steps}")
        shot("first-step")

        # The token picker: another token, another heatmap.
        heat = _canvas(page, "#isd-heat")
        triangle = trace.tokens.index("triangle")
        page.click(f"[data-token='{triangle}']")
        assert _canvas(page, "#isd-heat") != heat
        assert "isd-selected" in page.get_attribute(f"[data-token='{triangle}']", "class")
        shot("token")

        # Hover: the words of one pixel, ranked, the first being the slot the trace gives that cell most.
        page.focus("#isd-step")
        page.keyboard.press("End")
        box = page.locator("#isd-heat").bounding_box()
        h, w = trace.latent_hw
        row, col = h // 2, w // 4  # a cell on the left half, where the triangle is
        page.mouse.move(box["x"] + (col + 0.5) * box["width"] / w, box["y"] + (row + 0.5) * box["height"] / h)
        items = page.locator("#isd-hover-list li").all_inner_texts()
        assert len(items) == 8
        maps = [m[-1].float().mean(0) for m in trace.attention_maps.values()]  # [H, W, 77] per layer, last step
        mean = torch.stack([F.interpolate(m.permute(2, 0, 1)[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                            for m in maps]).mean(0)[: len(trace.tokens), row, col]
        padding = 1 - float(mean.sum())  # the slots after the end marker, listed as one
        assert items[0].startswith(f"{int(mean.argmax())}: " if mean.max() > padding else "padding slots")
        assert any(item.startswith("padding slots") for item in items) or padding < float(mean.sort().values[-7])
        shot("hover")

        # Play runs the steps forward from the start, pause stops them.
        page.click("#isd-play")
        page.wait_for_function("Number(document.getElementById('isd-step').value) >= 2")
        page.click("#isd-play")
        stopped = page.input_value("#isd-step")
        page.wait_for_timeout(700)
        assert page.input_value("#isd-step") == stopped
        shot("paused")

        # Another layer group changes the heatmap too.
        heat = _canvas(page, "#isd-heat")
        page.select_option("#isd-group", index=page.locator("#isd-group option").count() - 1)
        assert _canvas(page, "#isd-heat") != heat
        shot("group")
        browser.close()
    assert errors == [] and requests == []
    for name in ("opened", "first-step", "token", "hover", "paused", "group"):
        with Image.open(tmp_path / f"explorer-{name}.png") as image:
            assert image.size[0] > 800 and np.asarray(image).std() > 10
