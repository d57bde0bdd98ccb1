"""Render every plot helper from the embedded model into docs/gallery/ (the gallery page shows them), and a
screenshot of the report's explorer in headless Chromium (where one is installed: `make browser`).

    python scripts/make_gallery.py
"""

import io
import shutil
import tempfile
from pathlib import Path

import matplotlib
from PIL import Image

matplotlib.use("Agg")

import illustrated_sd as isd  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "gallery"
PROMPT = "a yellow triangle on the left and a purple heart on the right"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    pipe = isd.load_pipeline()
    # self-attention too, at the 16×16 grid of the 128-pixel model (the finest), for the self_attention panel
    trace = pipe(PROMPT, num_inference_steps=25, guidance_scale=7.5, seed=0, progress=False,
                 record=isd.RecordOptions(self_attention_resolutions=(16,)))
    figures = {
        "token_heatmaps": isd.plot.token_heatmaps(trace),
        "attention_grid": isd.plot.attention_grid(trace, "heart"),
        "attention_shares": isd.plot.attention_shares(trace),
        "filmstrip_pred_x0": isd.plot.denoising_filmstrip(trace, "pred_x0", decode=pipe.decode_latents),
        "filmstrip_latents": isd.plot.denoising_filmstrip(trace, "latents"),
        "latent_channels": isd.plot.latent_channels(trace),
        "noise_schedule": isd.plot.noise_schedule(pipe, trace),
        "text_embeddings": isd.plot.text_embeddings(trace),
        "guidance_map": isd.plot.guidance_map(trace),
        # the same prompt and seed with "purple" taken out (edits.Remove), beside where "purple" looked
        "intervention": isd.plot.intervention(trace, pipe(PROMPT, num_inference_steps=25, guidance_scale=7.5, seed=0, progress=False,
                                                          edits=[isd.edits.Remove("purple")]), "purple"),
        # on the triangle, on the heart, and on the background between them
        "self_attention": isd.plot.self_attention(trace, points=[(0.25, 0.5), (0.75, 0.5), (0.5, 0.15)]),
        "guidance_sweep": isd.plot.guidance_sweep(pipe, PROMPT, scales=(1.0, 3.0, 7.5, 12.0))[0],
        "vae_roundtrip": isd.plot.vae_roundtrip(pipe, trace.image),
        "prompt_similarity": isd.plot.prompt_similarity(pipe, ["a red circle", "a blue circle", "a red square",
                                                                "a red circle on the left", "a red circle on the right"]),
    }
    figures["heatmaps_against_masks"] = heatmaps_against_masks(pipe)
    for name, fig in figures.items():
        save_png(fig, OUT / f"{name}.png")
    isd.plot.animate(trace, OUT / "denoising.gif", decode=pipe.decode_latents, token="heart", size=160)
    print(f"wrote {len(figures) + 1} files to {OUT}")
    explorer_screenshot(trace, pipe)


def save_png(fig, path: Path) -> None:
    """``fig`` as an RGB PNG at 72 dpi. Matplotlib writes RGBA, and an opaque figure's alpha is 255 everywhere: the
    same pixels without it take a ninth less room (the repository's size is budgeted: it must travel to a GPU machine)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=72)
    picture = Image.open(buffer)
    if picture.mode == "RGBA" and picture.getchannel("A").getextrema() != (255, 255):
        raise ValueError(f"{path.name}: the figure has transparent pixels; keep its alpha")
    picture.convert("RGB").save(path, optimize=True)


def heatmaps_against_masks(pipe):
    """Three single-object prompts, traced compactly in one batch as `illustrated-sd batch` traces them, each word's
    heatmap against the detector's mask of the object: the model card's attention-at-scale study, in pictures."""
    from illustrated_sd.evaluate import match_object, world_of
    from illustrated_sd.world.detect import detect

    cases = [("a red circle on the left", ["red", "circle", "left"]), ("a blue square at the top", ["blue", "square", "top"]),
             ("a green star on the right", ["green", "star", "right"])]
    traces = pipe([text for text, _ in cases], num_inference_steps=25, guidance_scale=7.5, seed=[0, 1, 2], progress=False,
                  record=isd.RecordOptions(compact=True))
    masks = []
    for trace, (text, (color, shape, position)) in zip(traces, cases):
        found = match_object(detect(trace.image, version=world_of(pipe)), position, 1, world_of(pipe))
        if found is None or (found.color, found.shape) != (color, shape):
            raise RuntimeError(f"the model did not draw {text!r} (seed {trace.seed}): pick another seed for the gallery")
        masks.append(found.mask)
    return isd.plot.heatmaps_against_masks(traces, masks, [words for _, words in cases])


def explorer_screenshot(trace, pipe):
    """The explorer of the same trace, at step 7 (of steps 0–24, as the page counts) with "heart" picked and the mouse on the triangle."""
    from playwright.sync_api import sync_playwright

    from illustrated_sd.plot.report import write_report

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium: explorer.png not redrawn (`make browser` installs it)")
        return
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as p:
        page_path = write_report(trace, folder, scheduler=pipe.scheduler, decode=pipe.decode_latents)
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1120, "height": 1000})
        page.goto(page_path.as_uri())
        page.wait_for_function("document.querySelectorAll('#isd-token-list button').length > 0")
        page.focus("#isd-step")
        page.keyboard.press("Home")
        for _ in range(7):
            page.keyboard.press("ArrowRight")
        page.click(f"[data-token='{trace.tokens.index('heart')}']")
        box = page.locator("#isd-heat").bounding_box()
        page.mouse.move(box["x"] + 0.25 * box["width"], box["y"] + 0.5 * box["height"])
        page.locator("#isd-explorer").screenshot(path=str(OUT / "explorer.png"))
        browser.close()
    print(f"wrote {OUT / 'explorer.png'}")
    # docs/gallery.md says what the screenshot shows: checked here, so a retrained model cannot make it false
    from illustrated_sd.claims import claim

    heat = {i: trace.cross_attention(i, step=7) for i in range(len(trace.tokens))}  # [h, w] per slot, the step the page shows
    h, w = heat[0].shape
    ranked = sorted(heat, key=lambda i: -float(heat[i][int(0.5 * h), int(0.25 * w)]))
    claim("the triangle's pixel asks about 'yellow' first after the start marker",
          [trace.tokens[i] for i in ranked[:2]] == ["<|startoftext|>", "yellow"], ranked=[trace.tokens[i] for i in ranked[:4]])


if __name__ == "__main__":
    main()
