"""Render every plot helper from the embedded model into docs/gallery/ (the gallery page shows them).

    python scripts/make_gallery.py
"""

from pathlib import Path

import matplotlib

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
    for name, fig in figures.items():
        fig.savefig(OUT / f"{name}.png", dpi=72)
    isd.plot.animate(trace, OUT / "denoising.gif", decode=pipe.decode_latents, token="heart", size=160)
    print(f"wrote {len(figures) + 1} files to {OUT}")


if __name__ == "__main__":
    main()
