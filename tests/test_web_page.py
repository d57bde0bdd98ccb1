"""The exported site (illustrated_sd/web/site.py): the embedded model generating in headless Chromium, offline.

The folder is served by Python's http.server on 127.0.0.1 (a static host, as the site is meant for); every request
outside it is aborted and fails the test, as does any console error.
"""

import base64
import io
import json
import subprocess
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from illustrated_sd.world.vocabulary import known_words, known_words_2

from .conftest import launch

PROMPT = "a red circle on the left"
STEPS, SEED = 4, 3


@pytest.fixture(scope="module")
def site(pipe, tmp_path_factory):
    from illustrated_sd.web.site import export_web

    return export_web(tmp_path_factory.mktemp("web") / "site", pipe)


@pytest.fixture(scope="module")
def server(site):
    """A plain static host: no COOP/COEP headers, so the page runs on one thread."""
    from illustrated_sd.web.serve import site_server

    httpd, url = site_server(site, isolated=False, background=True)
    yield url
    httpd.shutdown()


def halves(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f2").astype(np.float32)


def picture(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"), dtype=np.float64)


def test_torch_random_in_javascript_equals_torch(site, tmp_path):
    """torch_random.js draws torch.randn's numbers for a seed (to float32 rounding: torch's AVX2 path computes in float)."""
    script = tmp_path / "draw.mjs"
    script.write_text(f"import {{ torchRandn }} from {json.dumps((site / 'torch_random.js').as_uri())};\n"
                      "console.log(JSON.stringify([0, 1, 42, 2 ** 32 + 7].map((s) => Array.from(torchRandn(s, 1024)))"
                      ".concat([Array.from(torchRandn(5, 1000))])));\n")
    drawn = json.loads(subprocess.run(["node", str(script)], capture_output=True, text=True, check=True).stdout)
    for seed, values in zip([0, 1, 42, 2**32 + 7], drawn):
        want = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed)).flatten().numpy()
        np.testing.assert_allclose(values, want, atol=2e-6)
    np.testing.assert_allclose(drawn[-1], torch.randn(1000, generator=torch.Generator().manual_seed(5)).numpy(), atol=2e-6)


def open_page(browser, server, errors, outside):
    page = browser.new_page()
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: errors.append(str(err)))

    def only_the_folder(route):
        if route.request.url.startswith(server):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    page.context.route("**/*", only_the_folder)  # (the context's routes cover the Web Worker's requests too)
    page.goto(server)
    page.wait_for_function("/^(ready|error)/.test(document.getElementById('status').textContent)", timeout=60_000)
    assert page.text_content("#status") == "ready", page.text_content("#status")
    return page


def generate(page, prompt, steps, seed, guidance=7.5):
    page.fill("#prompt", prompt)
    page.fill("#steps", str(steps))
    page.fill("#seed", str(seed))
    page.fill("#guidance", str(guidance))
    page.evaluate("window.isdResult = null")
    page.click("#generate")
    page.wait_for_function("window.isdResult || document.getElementById('status').textContent.startsWith('error')", timeout=90_000)
    assert page.text_content("#status").startswith("done"), page.text_content("#status")
    # the picture comes first, each step's x̂₀ decoded after it: until then the slider shows latent channels 0–2
    assert page.evaluate("window.isdResult.data.x0_decoded") is False
    page.wait_for_function("window.isdResult.x0Ready || document.getElementById('status').textContent.startsWith('error')",
                           timeout=90_000)
    assert page.evaluate("window.isdExplorer.data.x0_decoded") is True
    return page.evaluate("window.isdResult")


def test_the_page_generates_what_python_generates_offline(site, server, pipe, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    started = time.perf_counter()
    trace = pipe(PROMPT, num_inference_steps=STEPS, seed=SEED, progress=False)
    python_seconds = time.perf_counter() - started
    errors, outside = [], []
    with sync_playwright() as p:
        browser = launch(p, chromium)
        page = open_page(browser, server, errors, outside)
        page.screenshot(path=tmp_path / "ready.png")
        result = generate(page, PROMPT, STEPS, SEED)
        page.wait_for_selector("#isd-token-list button")
        page.screenshot(path=tmp_path / "done.png", full_page=True)
        data = result["data"]
        # which backend ran, on how many threads: WebAssembly, one (this server sends no COOP/COEP headers)
        assert result["backend"] == "wasm" and page.text_content("#status").endswith("(wasm, 1 thread)")

        # the tokens: the ids Python's tokenizer gives, and the same labels
        assert result["ids"] == trace.token_ids.tolist()
        assert data["tokens"] == list(trace.tokens)
        # the picture: Python's within a few grey levels (float16 weights, float32 arithmetic in another order)
        difference = np.abs(picture(data["image"]) - np.asarray(trace.image, dtype=np.float64))
        assert difference.max() <= 4, difference.max()
        # a word's heatmap (all layers, mean over steps) is trace.cross_attention(word)
        group = data["groups"][0]
        maps = halves(group["data"]).reshape(STEPS, group["h"], group["w"], len(data["tokens"]))
        slots = trace.token_index("circle")
        page_heat = maps[..., slots].sum(-1).mean(0).ravel()
        correlation = np.corrcoef(page_heat, trace.cross_attention("circle").numpy().ravel())[0, 1]
        assert correlation >= 0.99, correlation
        print(f"\n[web page] image max difference {difference.max():.0f} grey levels, heatmap correlation {correlation:.6f}, "
              f"{STEPS}-step guided image: page {result['seconds']:.2f} s, Python {python_seconds:.2f} s")

        # one format: the page's data is explorer_data(trace)'s, field by field, its arrays within float16 rounding
        from illustrated_sd.plot.explorer import explorer_data

        python = explorer_data(trace, decode=pipe.decode_latents)
        assert data.keys() == python.keys()
        for field in ("kind", "preset", "prompt", "num_steps", "steps", "timesteps", "alpha_bars", "tokens", "x0_decoded",
                      "guidance_scale", "colormaps"):
            assert data[field] == python[field], field
        assert [g["name"] for g in data["groups"]] == [g["name"] for g in python["groups"]]
        for got, want in zip(data["groups"], python["groups"]):
            np.testing.assert_allclose(halves(got["data"]), halves(want["data"]), atol=2e-3)
        for field in ("latents", "noise"):
            np.testing.assert_allclose(halves(data[field]["data"]), halves(python[field]["data"]), atol=0.02)
        np.testing.assert_allclose(halves(data["guidance"]["data"]), halves(python["guidance"]["data"]), atol=0.02)
        assert max(np.abs(picture(a) - picture(b)).max() for a, b in zip(data["x0"], python["x0"])) <= 4

        # the step slider moves x̂₀; the token picker moves the heatmap
        x0_last = page.get_attribute("#isd-x0", "src")
        page.eval_on_selector("#isd-step", "e => { e.value = 0; e.dispatchEvent(new Event('input')); }")
        assert page.get_attribute("#isd-x0", "data-step") == "0" and page.get_attribute("#isd-x0", "src") != x0_last
        page.screenshot(path=tmp_path / "step-0.png", full_page=True)
        heat = lambda: page.eval_on_selector("#isd-heat", "c => c.toDataURL()")
        before = heat()
        picked = 1 if page.get_attribute("#isd-token-list button.isd-selected", "data-token") != "1" else 2
        page.click(f"#isd-token-list button[data-token='{picked}']")
        assert page.get_attribute("#isd-token-list button.isd-selected", "data-token") == str(picked)
        assert heat() != before
        page.screenshot(path=tmp_path / "token.png", full_page=True)

        # Euler, and guidance 1 (the prompt's row alone, no guidance view): Python's pictures too
        import illustrated_sd as isd

        page.select_option("#sampler", "euler")
        euler = generate(page, PROMPT, STEPS, SEED)
        want = isd.load_pipeline(scheduler="euler")(PROMPT, num_inference_steps=STEPS, seed=SEED, progress=False).image
        assert np.abs(picture(euler["data"]["image"]) - np.asarray(want, dtype=np.float64)).max() <= 4
        page.select_option("#sampler", "ddim")
        plain = generate(page, PROMPT, STEPS, SEED, guidance=1)
        want = pipe(PROMPT, num_inference_steps=STEPS, seed=SEED, guidance_scale=1, progress=False).image
        assert np.abs(picture(plain["data"]["image"]) - np.asarray(want, dtype=np.float64)).max() <= 4
        assert plain["data"]["guidance"] is None and "no guidance" in page.text_content("#isd-guidance-caption")
        # a second Generate while the first's x̂₀ frames are still decoding: the new picture comes, its frames after it
        page.fill("#steps", "4")
        page.evaluate("window.isdResult = null")
        page.click("#generate")
        page.wait_for_function("window.isdResult")
        first = page.evaluate("window.isdResult.run")
        second = generate(page, PROMPT, 4, SEED + 1)
        assert second["run"] == first + 1 and second["x0Ready"] and len(second["data"]["x0"]) == 4
        # a setting that makes no sense is one line on the page, and nothing runs
        page.fill("#steps", "0")
        page.click("#generate")
        assert page.text_content("#status").startswith("error: steps must be a whole number")
        browser.close()
    assert not outside, f"the page asked for something outside its folder: {outside}"
    assert not errors, errors


@pytest.mark.parametrize("prompt", [" ".join(known_words()), " ".join(known_words_2()), "café crème brûlée, naïve 🔴🦩 emoji",
                                    " ".join(["a red circle on the left"] * 16)])
def test_prompts_tokenize_as_in_python(site, server, pipe, chromium, prompt):
    """Every word of the world the model was trained on (both vocabularies); accents and emoji (🦩 and û split over two
    pieces each); a prompt over 77 tokens, cut as Python cuts it."""
    from playwright.sync_api import sync_playwright

    from illustrated_sd.loops.text import tokenize_prompt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the long prompt's warning that words were dropped)
        want = tokenize_prompt(pipe.tokenizer, prompt)
    errors, outside = [], []
    with sync_playwright() as p:
        browser = launch(p, chromium)
        page = open_page(browser, server, errors, outside)
        result = generate(page, prompt, 1, 0)
        browser.close()
    assert result["ids"] == want.input_ids[0].tolist()
    assert result["data"]["tokens"] == want.tokens
    assert not outside and not errors, (outside, errors)


def test_export_web_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    from illustrated_sd.cli import main

    (tmp_path / "notes.txt").write_text("mine")
    assert main(["export-web", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not written by export-web" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_offline_without_the_npm_files_says_what_to_fetch(tmp_path, monkeypatch):
    import urllib.request

    from illustrated_sd.web import site

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ValueError, match=r"cannot download onnxruntime-web@1\.31\.1 .*registry\.npmjs\.org/onnxruntime-web/-/onnxruntime-web-1\.31\.1\.tgz"):
        site.vendor_npm(tmp_path / "vendor", cache=tmp_path / "empty-cache")


def test_a_tampered_tarball_is_refused(tmp_path):
    from illustrated_sd.web import site

    package = site.npm_lock()["packages"]["onnxruntime-web"]
    (tmp_path / "onnxruntime-web-1.31.1.tgz").write_bytes(b"not the tarball")
    with pytest.raises(ValueError, match="does not match its pinned sha512"):
        site.npm_tarball("onnxruntime-web", package, "https://registry.npmjs.org", cache=tmp_path)


def test_export_web_rewrites_its_own_folder(site, capsys):
    from illustrated_sd.cli import main

    before = json.loads((site / "site.json").read_text())
    assert main(["export-web", str(site)]) == 0
    assert f"illustrated-sd serve {site}" in capsys.readouterr().out
    assert json.loads((site / "site.json").read_text()) == before
    assert not [p for p in site.rglob("*") if "node_modules" in p.parts or p.suffix == ".tgz"]


def test_serve_sends_the_isolating_headers_and_refuses_a_folder_that_is_no_site(site, tmp_path, capsys, monkeypatch):
    import http.server
    import urllib.request

    from illustrated_sd.cli import main
    from illustrated_sd.web.serve import site_server

    httpd, url = site_server(site, background=True)
    with urllib.request.urlopen(url + "index.html") as response:
        assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert b"app.js" in response.read()
    httpd.shutdown()
    assert main(["serve", str(tmp_path)]) == 2
    assert f"illustrated-sd export-web {tmp_path}" in capsys.readouterr().err
    assert main(["serve", str(site), "--port", "70000"]) == 2
    assert "--port must be from 0 to 65535" in capsys.readouterr().err

    def interrupted(self, *args):  # Ctrl-C at once
        raise KeyboardInterrupt
    monkeypatch.setattr(http.server.ThreadingHTTPServer, "serve_forever", interrupted)
    assert main(["serve", str(site), "--port", "0"]) == 0
    out = capsys.readouterr()
    assert "serving" in out.out and "several threads (cross-origin isolated)" in out.out and "stopped" in out.err


def test_opened_from_disk_the_page_says_how_to_serve_it(site, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p, chromium)
        page = browser.new_page()
        page.goto((site / "index.html").as_uri())
        status = page.text_content("#status")
        page.screenshot(path=tmp_path / "file.png")
        browser.close()
    assert "opened from disk" in status and "illustrated-sd serve" in status, status


def test_with_webgpu_the_page_runs_on_the_gpu_and_draws_pythons_picture(pipe, chromium, tmp_path):
    """export-web --webgpu, in a Chromium whose WebGPU adapter is SwiftShader (a GPU emulated on the CPU: slow, so one
    unguided step)."""
    from playwright.sync_api import sync_playwright

    from illustrated_sd.web.serve import site_server
    from illustrated_sd.web.site import export_web

    site = export_web(tmp_path / "site", pipe, webgpu=True)
    assert json.loads((site / "site.json").read_text())["webgpu"] is True and (site / "vendor" / "ort.jspi.min.mjs").is_file()
    httpd, url = site_server(site, isolated=False, background=True)
    want = np.asarray(pipe(PROMPT, num_inference_steps=1, seed=SEED, guidance_scale=1, progress=False).image, dtype=np.float64)
    errors, outside = [], []
    with sync_playwright() as p:
        browser = launch(p, chromium, extra=["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader", "--enable-unsafe-swiftshader"])
        page = open_page(browser, url, errors, outside)
        result = generate(page, PROMPT, 1, SEED, guidance=1)
        page.screenshot(path=tmp_path / "webgpu.png", full_page=True)
        browser.close()
    httpd.shutdown()
    assert result["backend"] == "webgpu"
    difference = np.abs(picture(result["data"]["image"]) - want)
    print(f"\n[web page, WebGPU on SwiftShader] image max difference {difference.max():.0f} grey levels")
    assert difference.max() <= 8, difference.max()  # WebGPU sums in another order than WebAssembly (≤ 1 there)
    assert not outside and not errors, (outside, errors)
    # the same site, exported again without --webgpu, drops the WebGPU build
    export_web(site, pipe)
    assert not (site / "vendor" / "ort.jspi.min.mjs").exists() and json.loads((site / "site.json").read_text())["webgpu"] is False

