"""Building and loading models.

    loading.py        load_pipeline: the embedded default model, a local diffusers folder, or a Hub id
    unet.py           SD 1/2/XL pipelines built from configs with random weights (tests, benchmarks)
    transformers.py   tiny random SD3 / Flux configs (tests) and the released models' shapes (benchmarks, notebook 08)
"""
