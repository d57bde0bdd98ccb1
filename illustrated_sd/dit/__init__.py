"""Diffusion transformers, traced: SD3, SD3.5 and Flux.

    flux.py, sd3.py       one generation loop per family, each beside its diffusers file
    shared.py             what the two loops share: input checks, the recording, decoding, the trace
    joint_attention.py    the four quadrants of the joint attention, exact, from the fused kernel's log-sum-exp
    concepts.py           ConceptAttention (Flux, SD3): maps of any words from the model's own layers
    edits.py              Reweight / Remove / Swap on the picture's attention to a word
    prompt.py             which slots of the text sequence hold which encoder's tokens
    trace.py              FlowTrace
    pipeline.py           FlowPipeline (what isd.IllustratedPipeline gives for an SD3 or Flux pipeline)
    architectures.py      tiny random configs (tests) and the released models' shapes (benchmarks, notebook 08)
"""
