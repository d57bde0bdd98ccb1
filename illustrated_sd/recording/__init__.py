"""Recorders installed for one call, and the edits that act through them: what watches (or changes) the attention.

    recorders.py          RecordOptions, the step and attention recorders; ``recording`` installs them all for one call
    attention_layers.py   where a UNet's attention layers are and the grid each one works on
    budget.py             what a recording will cost, checked before generating
    edits.py              Reweight / Remove / Swap (isd.edits), and how they act on a UNet's cross-attention
    joint_attention.py    the four quadrants of the joint attention, exact, from the fused kernel's log-sum-exp
    flow_edits.py         Reweight / Remove / Swap on the picture's attention to a word (SD3, Flux)
    concepts.py           ConceptAttention (Flux, SD3): maps of any words from the model's own layers

Each recorder is installed for one call and removed after it; a loop in ``loops/`` installs them and writes a ``trace/``.
"""
