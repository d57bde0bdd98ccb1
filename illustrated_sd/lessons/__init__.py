"""Tools the notebooks teach with: the parts of diffusion a generation alone does not show.

    forward_diffusion.py   noising an image to any t, and what one training step measures
    flow_matching.py       the straight path of tiny-flux's training, the velocity it names, and its σ schedule
    latent_space.py        the VAE's two doors, with their scaling
    loss_guidance.py       steering a generation with any differentiable score of its picture
    causal.py              what a word causes: generate with and without it, compared with its heatmap
    clip.py                the tiny CLIP's two towers and their image–caption similarity (isd.clip)
    paths.py               the road from noise to picture: how much longer than a straight line, drawn in one plane
"""
