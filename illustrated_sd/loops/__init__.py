"""The generation loops, one per model family, each written out to read beside its diffusers file.

    unet.py           IllustratedPipeline: SD 1/2 and SDXL's loop (``pipeline_stable_diffusion.py``), in numbered stages
    sdxl.py           what SDXL adds: the time ids and the pooled text vector beside cross-attention
    inputs.py         stage 1: every input check, with the fix in the message; the checked Settings
    starts.py         stage 3: where the loop starts for each mode (noise, img2img, inpainting)
    text.py           a prompt → CLIP tokens → the vectors the UNet listens to
    sampling.py       pred_x0, ᾱ per step, classifier-free guidance: the math as small functions
    flux.py, sd3.py   one generation loop per diffusion transformer family, each beside its diffusers file
    flow_shared.py    what the two loops share: input checks, the recording, decoding, the trace
    flow_prompt.py    which slots of the text sequence hold which encoder's tokens
    flow.py           FlowPipeline (what isd.IllustratedPipeline gives for an SD3 or Flux pipeline)

A loop runs the model; what it records is installed from ``recording/`` and written into a ``trace/``.
"""
