"""Training the embedded default model on the synthetic world, in three stages as Stable Diffusion was, then two fine-tunes:

1. ``clip``: a CLIP text tower (transformers ``CLIPTextModel``) and a small image tower, trained
   contrastively on image/caption pairs; the text tower is then frozen.
2. ``vae``: a diffusers ``AutoencoderKL`` (4 latent channels, 8× downsampling) that compresses a
   128×128 image into a 4×16×16 latent and back.
3. ``unet``: a diffusers ``UNet2DConditionModel`` that learns to predict the noise added to latents,
   attending to the frozen text tower's 77 hidden states; 10% of captions are dropped so that
   classifier-free guidance works.

Two optional fine-tunes follow, using what only a synthetic world offers (it knows every object's mask):

4. ``ground``: the UNet, with a token loss that rewards each object's colour and shape words for
   looking at that object (``grounding.py``).
5. ``decoder``: the VAE's decoder alone, the encoder frozen so that the UNet's latents stay valid, with
   pixels on and around objects weighted 10× (``decoder.py``).

    python -m illustrated_sd.train run --stages clip,vae,unet --minutes 1.5,4,3.5 --out checkpoints/tiny-sd
    python -m illustrated_sd.train export checkpoints/tiny-sd illustrated_sd/assets/tiny-sd

Every stage runs for a time budget, writes its weights and loss curve to the checkpoint folder, and
resumes from what is there, so training fits in commands of a few minutes each.
"""
