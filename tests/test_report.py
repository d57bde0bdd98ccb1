"""The explained report: written by the CLI, opened in a real headless Chromium, every image loaded; its
explorer driven there like a student would (slider, play, token picker, hover), offline."""

import warnings
from dataclasses import replace
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from illustrated_sd.cli import main
from illustrated_sd.plot.report import write_report

from .conftest import launch
from .test_explorer import HOSTILE_PROMPTS


def open_offline(browser, path, errors: list, requests: list):
    """A new page on ``path`` (a report file) that records console errors in ``errors`` and refuses, recording it in
    ``requests``, every request but the file itself: the page must work with nothing else."""
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: errors.append(str(err)))

    def only_the_file(route):
        if route.request.url == path.as_uri():
            return route.continue_()
        requests.append(route.request.url)
        return route.abort()

    page.route("**/*", only_the_file)
    page.goto(path.as_uri())
    return page


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
        page = open_offline(browser, report, errors, requests)
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
        assert page.inner_text("#isd-step-label").startswith(f"step 0 of steps 0–{trace.num_steps - 1}")
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


# ---- a prompt is text on the page, whatever it holds ------------------------------------------------------------

class Parsed(HTMLParser):
    """A page as an HTML parser reads it: its elements (tag and attributes), comments, and the text of some elements."""

    READ = ("title", "h1", "code", "p")

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.elements, self.comments, self.texts, self._reading = [], [], [], None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag in self.READ:
            self._reading = tag
            self.texts.append((tag, dict(attrs).get("class"), ""))

    def handle_endtag(self, tag):
        if tag == self._reading:
            self._reading = None

    def handle_data(self, data):
        if self._reading:
            tag, cls, text = self.texts[-1]
            self.texts[-1] = (tag, cls, text + data)

    def handle_comment(self, data):
        self.comments.append(data)

    def text(self, tag, cls=None) -> list[str]:
        return [text for t, c, text in self.texts if t == tag and c == cls]


@pytest.fixture(scope="module")
def hostile_reports(pipe, tmp_path_factory):
    """A plain report, and one for each hostile prompt, whose model and scheduler names are hostile too (a trace loaded
    from a file may hold any strings): {prompt: (trace, page)}."""
    reports = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "the model never saw")
        for i, prompt in enumerate(["a red circle on the left", *HOSTILE_PROMPTS]):
            trace = pipe(prompt, num_inference_steps=2, seed=0, progress=False)
            if i:
                trace = replace(trace, model=f"tiny <!--{prompt}", scheduler="DDIM</p><script>alert(2)</script>")
            reports[prompt] = (trace, write_report(trace, tmp_path_factory.mktemp(f"hostile{i}")))
    return reports


@pytest.mark.parametrize("prompt", HOSTILE_PROMPTS)
def test_a_hostile_prompt_is_text_on_the_page(hostile_reports, prompt):
    trace, path = hostile_reports[prompt]
    page = path.read_text(encoding="utf-8")
    plain = Parsed(next(iter(hostile_reports.values()))[1].read_text(encoding="utf-8"))
    parsed = Parsed(page)
    assert page.lower().count("<script") == 2 and page.lower().count("</script") == 2  # the explorer's own two
    assert "<!--" not in page and parsed.comments == []
    # the same elements and attributes as the plain page (no <b>, no onerror=), the same alt texts
    assert {tag for tag, _ in parsed.elements} == {tag for tag, _ in plain.elements}
    assert {(tag, name) for tag, attrs in parsed.elements for name in attrs} == {(tag, name) for tag, attrs in plain.elements for name in attrs}
    alts = lambda p: [attrs["alt"] for tag, attrs in p.elements if tag == "img"]  # noqa: E731
    assert alts(parsed) == alts(plain)
    # and the words read back exactly
    assert parsed.text("title") == [f"illustrated_sd: {prompt}"] and parsed.text("h1") == [prompt]
    assert parsed.text("code")[: len(trace.tokens)] == trace.tokens
    assert parsed.text("p", "settings")[0].startswith("2 steps of DDIM</p><script>alert(2)</script>, guidance 7.5")
    assert parsed.text("p", "settings")[0].endswith(f"model tiny <!--{prompt}")


def test_the_explorer_works_in_chromium_whatever_the_prompt(hostile_reports, chromium):
    """Each hostile page loads with no error and no alert, only its own two scripts, and the explorer lists the prompt's
    tokens as text."""
    from playwright.sync_api import sync_playwright

    errors, dialogs = [], []
    with sync_playwright() as p:
        browser = launch(p, chromium)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        for prompt, (trace, path) in list(hostile_reports.items())[1:]:
            page.goto(path.as_uri())
            page.wait_for_function("document.querySelectorAll('#isd-token-list button').length > 0", timeout=10_000)
            assert page.evaluate("document.scripts.length") == 2
            assert page.eval_on_selector("title", "t => t.textContent") == f"illustrated_sd: {prompt}"
            assert page.eval_on_selector("h1", "h => h.textContent") == prompt
            labels = page.eval_on_selector_all("#isd-token-list button", "bs => bs.map(b => b.firstChild.textContent)")
            assert [label.rsplit("  ", 1)[0] for label in labels] == [f"{i}: {token}" for i, token in enumerate(trace.tokens)]
        browser.close()
    assert errors == [] and dialogs == []


# ---- a diffusion transformer's report: the quadrant view, driven in the browser ------------------------------------

@pytest.fixture(scope="module")
def flow_report(tmp_path_factory):
    """Flux with true CFG (a guidance view too) and ConceptAttention: the report a student gets for a FlowTrace."""
    import illustrated_sd as isd

    pipe = isd.IllustratedPipeline(isd.build_random_pipeline("tiny-flux", seed=1))
    trace = pipe("a red circle on the left and a red square", num_inference_steps=4, seed=0, max_sequence_length=16,
                 true_cfg_scale=3.0, negative_prompt="a blue star", concepts=["circle", "sky"], progress=False)
    return trace, write_report(trace, tmp_path_factory.mktemp("flow-report"), decode=pipe.decode_latents)


def test_a_flow_report_explains_the_joint_sequence(flow_report):
    from illustrated_sd.plot.joint import telling_word

    trace, path = flow_report
    page = path.read_text(encoding="utf-8")
    for heading in ("From words to tokens", "Joint attention", "The flow from noise to picture", "ConceptAttention"):
        assert heading in page
    assert "Where the UNet looked" not in page and "http://" not in page and "https://" not in page
    assert page.count("src='data:image/png;base64,") == 3  # the hero, the joint attention, the concept maps
    assert f"Shown for “{telling_word(trace)}”" in page
    assert f"<tr><td>{int(trace.kept_slots[1])}</td><td><code>red</code></td><td>t5</td></tr>" in page  # slot, token, encoder
    assert f"…and {trace.padding_slots} padding slots of 16" in page and page.count('id="isd-explorer"') == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["concept_maps.png", "image.png", "joint_attention.png", "report.html"]


def test_the_quadrant_view_answers_the_words_the_patches_and_the_slider_offline(flow_report, chromium, tmp_path):
    """Pick a word: both heatmaps change; hover a patch: its words ranked, the padding one of them, the numbers the
    trace's own; the slider and the layer groups; no error, no request."""
    from playwright.sync_api import sync_playwright

    from illustrated_sd.plot.joint import telling_word, word_choices

    trace, path = flow_report
    entries = word_choices(trace)
    errors, requests = [], []
    with sync_playwright() as p:
        browser = launch(p, chromium)
        page = open_offline(browser, path, errors, requests)
        page.wait_for_function("document.querySelectorAll('#isd-token-list button').length > 0", timeout=10_000)

        # The words (each once, then the end marker), opened on the most telling word; each button's share is the trace's.
        labels = page.eval_on_selector_all("#isd-token-list button", "bs => bs.map(b => b.firstChild.textContent)")
        assert [label.rsplit("  ", 1)[0] for label in labels] == [label for label, _ in entries]
        selected = page.eval_on_selector("#isd-token-list button.isd-selected", "b => b.firstChild.textContent")
        assert selected.startswith(telling_word(trace) + "  ")
        for label, (_, key) in zip(labels, entries):
            assert float(label.rsplit("  ", 1)[1].rstrip("%")) == pytest.approx(100 * float(trace.cross_attention(key, step=-1).mean()),
                                                                                  rel=0.02, abs=0.002)
        assert page.is_visible("#isd-reads") and page.inner_text("#isd-step-label").startswith(f"step {trace.num_steps - 1} of steps 0–{trace.num_steps - 1}, σ = ")
        assert "v̂" in page.inner_text("#isd-prediction-title") and page.locator("#isd-latents canvas").count() == 4

        # Another word: both heatmaps change, the captions name it.
        heat, reads = _canvas(page, "#isd-heat"), _canvas(page, "#isd-reads")
        other = next(i for i, (label, _) in enumerate(entries) if label in ("circle", "square") and not selected.startswith(label + "  "))
        page.click(f"[data-token='{other}']")
        assert _canvas(page, "#isd-heat") != heat and _canvas(page, "#isd-reads") != reads
        assert f'"{entries[other][0]}"' in page.inner_text("#isd-heat-caption") and f'"{entries[other][0]}"' in page.inner_text("#isd-reads-caption")
        # each caption's scale is the maximum of that word's map: the trace's image→text and text→image at the last step
        for caption, heat in (("#isd-heat-caption", trace.cross_attention), ("#isd-reads-caption", trace.text_to_image)):
            shown = float(page.inner_text(caption).split("maximum, ")[1].split("%")[0])
            assert shown == pytest.approx(100 * float(heat(entries[other][1], step=-1).max()), rel=0.01)

        # A patch: its words ranked by its image→text attention, the padding as its own entry, the first the trace's largest.
        gh, gw = trace.grid_hw
        row, col = 1, gw - 1
        page.locator("#isd-heat").scroll_into_view_if_needed()
        box = page.locator("#isd-heat").bounding_box()
        page.mouse.move(box["x"] + (col + 0.5) * box["width"] / gw, box["y"] + (row + 0.5) * box["height"] / gh)
        items = page.eval_on_selector_all("#isd-hover-list li", "lis => lis.map(li => li.textContent)")
        values = {label: float(trace.cross_attention(key, step=-1)[row, col]) for label, key in entries}
        values[f"padding ({trace.padding_slots} slots)"] = float(trace.text_share(step=-1)[row, col]) - sum(values.values())
        ranked = sorted(values, key=values.get, reverse=True)[:8]
        assert [item.rsplit("  ", 1)[0] for item in items] == ranked
        assert float(items[0].rsplit("  ", 1)[1].rstrip("%")) == pytest.approx(100 * values[ranked[0]], rel=0.01)
        assert any(item.startswith("padding (") for item in items) or values[f"padding ({trace.padding_slots} slots)"] < values[ranked[-1]]
        assert page.inner_text("#isd-hover-where").startswith(f"patch (row {row}, column {col}) of the {gh}×{gw} tokens gives "
                                                              f"{100 * float(trace.text_share(step=-1)[row, col]):.1f}%")
        page.screenshot(path=str(tmp_path / "flow.png"), full_page=True)

        # The slider: the first step, another x̂₀ and other maps; then the single-stream blocks, other maps again.
        heat, x0 = _canvas(page, "#isd-heat"), page.get_attribute("#isd-x0", "src")
        page.focus("#isd-step")
        page.keyboard.press("Home")
        assert page.inner_text("#isd-step-label").startswith(f"step 0 of steps 0–{trace.num_steps - 1}, σ = 1")
        assert page.get_attribute("#isd-x0", "src") != x0 and _canvas(page, "#isd-heat") != heat
        heat, reads = _canvas(page, "#isd-heat"), _canvas(page, "#isd-reads")
        page.select_option("#isd-group", label="single-stream blocks (2)")
        assert _canvas(page, "#isd-heat") != heat and _canvas(page, "#isd-reads") != reads
        browser.close()
    assert errors == [] and requests == []
    with Image.open(tmp_path / "flow.png") as image:
        assert np.asarray(image).std() > 10
