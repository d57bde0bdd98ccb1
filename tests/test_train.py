"""The training machinery, in its tiny CPU smoke mode: every stage runs, logs, saves, resumes and exports."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
from safetensors.torch import save_file as real_save_file

import illustrated_sd as isd
from illustrated_sd.paths import TINY_SD
from illustrated_sd.train.__main__ import main as train_main
from illustrated_sd.trace.files import load_weights
from illustrated_sd.train.checkpoint import read_log, save_weights, write_log
from illustrated_sd.train.decoder import (SEAM, DropletProbe, GroupNormProbe, decoder_loss, droplet_loss, impossible_colour,
                                         object_colour_error, object_weights, ring_error, ring_fill, speckle_ring, spliced, spread_loss,
                                         spread_share, constant_share, steady_loss, stray_colour, worst_error, train_decoder)
from illustrated_sd.train.stages import clip_loss


def test_smoke_run_resume_and_export(tmp_path):
    ckpt, folder = tmp_path / "ckpt", tmp_path / "model"
    assert train_main(["run", "--smoke", "--out", str(ckpt)]) == 0
    log = json.loads((ckpt / "train_log.json").read_text())
    for stage in ("clip", "vae", "unet"):
        assert log[stage]["total_steps"] == 3 and len(log[stage]["loss"]) == 3
        assert all(loss > 0 for loss in log[stage]["loss"])
    assert log["vae_scaling_factor"] > 0
    assert train_main(["run", "--smoke", "--stages", "unet", "--minutes", "1", "--out", str(ckpt)]) == 0  # resumes
    assert json.loads((ckpt / "train_log.json").read_text())["unet"]["total_steps"] == 6
    assert train_main(["run", "--smoke", "--stages", "ground", "--minutes", "1", "--binding", "0.1", "--two-objects", "0.6", "--name-backgrounds", "0.5",
                       "--out", str(ckpt)]) == 0  # fine-tunes
    assert json.loads((ckpt / "train_log.json").read_text())["ground"]["total_steps"] == 3
    before = load_file(ckpt / "vae-0.safetensors")
    assert train_main(["run", "--smoke", "--stages", "decoder", "--minutes", "1", "--local", "1", "--local-teacher", "--clean", "1",
                       "--clean-grey", "1", "--object-colour", "1", "--keep-generated", "1", "--out", str(ckpt)]) == 0
    after = load_file(ckpt / "vae-0.safetensors")
    assert train_main(["export", str(ckpt), str(folder)]) == 0  # a folder whose decoder draws the kept colours
    assert train_main(["run", "--smoke", "--stages", "decoder", "--minutes", "1", "--keep-generated", "1", "--colour-reference", str(folder),
                       "--out", str(ckpt)]) == 0
    assert json.loads((ckpt / "train_log.json").read_text())["decoder"]["total_steps"] == 6
    after = load_file(ckpt / "vae-0.safetensors")
    # the encoder is frozen, so the latents the UNet learned stay the same; only the decoder moves
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert train_main(["export", str(ckpt), str(folder), "--force"]) == 0
    plain = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    assert plain.vae.config.scaling_factor == log["vae_scaling_factor"]
    pipe = isd.load_pipeline(folder)
    assert pipe("a red circle", num_inference_steps=2, progress=False).latents.shape == (3, 4, 16, 16)


def test_max_steps_stops_a_stage_whatever_its_minutes(tmp_path):
    assert train_main(["run", "--smoke", "--stages", "vae", "--minutes", "10", "--max-steps", "2", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "train_log.json").read_text())["vae"]["total_steps"] == 2


def test_a_stage_killed_from_outside_keeps_its_last_save_and_trains_on_from_it(tmp_path):
    """A GPU call's time limit kills a stage without warning: what it saved every ``save_every`` seconds survives,
    with a log that says how many steps those weights have had (the EMA's weights, for an averaged stage)."""
    from illustrated_sd.train.stages import Budget, _run_averaged
    from illustrated_sd.trace.files import load_weights

    x, target = torch.randn(64, 4, generator=torch.Generator().manual_seed(1)), torch.randn(64, 1, generator=torch.Generator().manual_seed(2))

    class Killed(Exception):
        pass

    def fresh():
        torch.manual_seed(0)
        return torch.nn.Linear(4, 1)

    def steps(model, kill_at=None):
        def step_fn(step):
            if step == kill_at:
                raise Killed  # this step never finishes
            return ((model(x) - target) ** 2).mean()
        return step_fn

    killed, whole = tmp_path / "killed", tmp_path / "whole"
    model = fresh()
    with pytest.raises(Killed):
        _run_averaged("toy", steps(model, kill_at=5), model, "toy", 0.1, killed, Budget(10, None), 100, 0.9, save_every=0)
    assert json.loads((killed / "train_log.json").read_text())["toy"]["total_steps"] == 5
    # the same 5 steps run to their end: its final save is the average after 5 steps, and so was the killed run's last
    reference = fresh()
    assert _run_averaged("toy", steps(reference), reference, "toy", 0.1, whole, Budget(10, 5), 100, 0.9) == 5
    saved, expected = load_file(killed / "toy-0.safetensors"), load_file(whole / "toy-0.safetensors")
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    assert not torch.equal(saved["weight"], model.weight.detach().half())  # the average, not the last step's weights
    # started again as a stage starts (its weights loaded from the checkpoint), it trains on: the count goes on from 5
    resumed = torch.nn.Linear(4, 1)
    assert load_weights(resumed, killed, "toy")
    assert torch.equal(resumed.weight.detach().half(), saved["weight"])
    assert _run_averaged("toy", steps(resumed), resumed, "toy", 0.1, killed, Budget(10, 3), 100, 0.9) == 3
    assert json.loads((killed / "train_log.json").read_text())["toy"]["total_steps"] == 8


def test_weights_round_trip_through_fp16_shards(tmp_path):
    def make():
        return torch.nn.Sequential(torch.nn.Linear(600, 9000), torch.nn.Linear(9000, 600))  # 21.6 MB in fp16

    module, other = make(), make()
    paths = save_weights(module, tmp_path, "m")
    assert len(paths) == 2 and all(p.stat().st_size <= 15 * 2**20 for p in paths)
    assert load_weights(other, tmp_path, "m")
    torch.testing.assert_close(other[1].weight, module[1].weight.half().float())


def test_clip_loss_rewards_matching_pairs():
    a = torch.randn(8, 16)
    assert clip_loss(a, a, torch.tensor(3.0)) < clip_loss(a, torch.randn(8, 16), torch.tensor(3.0))


def test_object_token_slots_find_each_objects_words():
    from illustrated_sd.train.grounding import object_token_slots
    from illustrated_sd.world import sample_scenes

    pipe = isd.load_pipeline()
    scenes = sample_scenes(3, 20)
    ids = pipe.tokenizer([s.caption for s in scenes], padding="max_length", max_length=77, return_tensors="pt").input_ids
    slots = object_token_slots(ids, scenes, pipe.tokenizer)
    assert slots.shape == (20, 2, 2)
    for b, scene in enumerate(scenes):
        tokens = pipe.tokenizer.convert_ids_to_tokens(ids[b].tolist())
        for k, obj in enumerate(scene.objects):
            color, shape = slots[b, k].tolist()
            assert (tokens[color], tokens[shape]) == (obj.color + "</w>", obj.shape + "</w>"), scene.caption
        assert (slots[b, len(scene.objects):] == -1).all()


@pytest.mark.parametrize("encoder", ["clip", "t5"])
def test_object_token_slots_in_world_2_find_only_what_the_caption_says(encoder):
    """With tiny-sd 2's CLIP tokenizer (the ground stage) and tiny-flux's T5 one (the flux stage's token loss)."""
    from illustrated_sd.train.flux import world_t5_tokenizer
    from illustrated_sd.train.grounding import object_token_slots
    from illustrated_sd.world import sample_scenes

    tokenizer, length, piece = ((isd.load_pipeline().tokenizer, 77, lambda w: w + "</w>") if encoder == "clip"
                                else (world_t5_tokenizer(), 64, lambda w: "▁" + w))
    scenes = sample_scenes(5, 60, version=2)
    ids = tokenizer([s.caption for s in scenes], padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    slots = object_token_slots(ids, scenes, tokenizer, objects=4)
    assert slots.shape == (60, 4, 2)
    seen = {"unnamed": 0, "no colour": 0, "colour": 0}
    for b, scene in enumerate(scenes):
        tokens = tokenizer.convert_ids_to_tokens(ids[b].tolist())
        for k in range(4):
            color, shape = slots[b, k].tolist()
            obj = scene.objects[k] if k < len(scene.objects) else None
            if obj is None or not obj.said:
                assert color == shape == -1, scene.caption
                seen["unnamed"] += obj is not None
                continue
            assert tokens[shape] == piece(obj.shape), scene.caption
            if "color" in obj.said:
                assert (tokens[color], color) == (piece(obj.color), shape - 1), scene.caption
                seen["colour"] += 1
            else:
                assert color == -1, scene.caption
                seen["no colour"] += 1
    assert min(seen.values()) > 0  # the sample holds every case


def test_grounding_loss_rewards_attention_inside_the_mask():
    from illustrated_sd.train.grounding import grounding_loss

    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, :2, :2] = 1  # object 0 in the top-left corner; no object 1
    slots = torch.tensor([[[2, 3], [-1, -1]]])
    inside, outside = torch.zeros(1, 16, 77), torch.zeros(1, 16, 77)
    inside[0, [0, 1, 4, 5], 2:4] = 1.0  # tokens 2 and 3 looked at in the corner
    outside[0, [10, 11, 14, 15], 2:4] = 1.0
    loss = lambda probs: grounding_loss({"layer": probs}, {"layer": 1}, slots, masks).item()
    assert loss(inside) == 0.0 and loss(outside) == 1.0
    # a batch without a word to ground (every caption dropped) adds nothing, not NaN
    assert grounding_loss({"layer": inside}, {"layer": 1}, torch.full_like(slots, -1), masks).item() == 0.0


def test_decoder_loss_weighs_pixels_on_and_around_objects_more():
    masks = torch.zeros(1, 2, 32, 32)
    masks[0, 1, 10:14, 10:14] = 1  # one object, in slot 1
    weights = object_weights(masks)
    assert weights.shape == (1, 1, 32, 32)
    assert weights[0, 0, 12, 12] == 10 and weights[0, 0, 7, 7] == 10  # on it, and on its 4-pixel edge
    assert weights[0, 0, 0, 0] == 1 and weights[0, 0, 20, 20] == 1
    images = torch.zeros(1, 3, 32, 32)
    on_object, on_background = images.clone(), images.clone()
    on_object[..., 12, 12] = 1.0
    on_background[..., 25, 25] = 1.0
    assert decoder_loss(images, images, weights) == 0
    assert decoder_loss(on_object, images, weights) == pytest.approx(10 * decoder_loss(on_background, images, weights).item())


def test_equal_objects_weighs_a_small_object_like_a_big_one():
    masks = torch.zeros(1, 2, 128, 128)
    masks[0, 0, 10:20, 10:20] = 1  # small: 100 pixels → the largest boost
    masks[0, 1, 60:100, 60:100] = 1  # big: 1,600 pixels → no boost
    plain, equal = object_weights(masks), object_weights(masks, equal_objects=True)
    assert plain[0, 0, 15, 15] == plain[0, 0, 80, 80] == 10
    assert equal[0, 0, 15, 15] == 1 + 9 * 4 and equal[0, 0, 80, 80] == 10 and equal[0, 0, 40, 40] == 1


def test_stray_colour_prices_a_faint_coloured_patch_away_from_the_objects_only():
    masks = torch.zeros(1, 1, 128, 128)
    masks[0, 0, 20:40, 20:40] = 1  # one object
    images = torch.zeros(1, 3, 128, 128)
    def patch(y, x, rgb):  # a 6×6 patch added to the picture, 8 grey levels (0.0625 on [-1, 1]) in the given channels
        out = images.clone()
        out[0, :, y:y + 6, x:x + 6] += 0.0625 * torch.tensor(rgb).view(3, 1, 1)
        return out
    assert stray_colour(images, images, masks) == 0
    assert stray_colour(patch(90, 90, [1, 1, 1]), images, masks) == pytest.approx(0, abs=1e-6)  # grey: a pattern or shadow
    on_object = stray_colour(patch(27, 27, [1, 0, 0]), images, masks)
    away = stray_colour(patch(90, 90, [1, 0, 0]), images, masks)
    # the patch's colour length is 0.0625·√(2/3) = 0.051; the worst 1% (164 pixels) averages it with its 5×5 blur's rim
    assert on_object == 0 and 0.01 < away < 0.051
    assert stray_colour(patch(90, 90, [2, 0, 0]), images, masks) == pytest.approx(2 * away.item())
    # with grey weighed, a dark patch away from the object costs what its offset is; on the object, still nothing
    dark = stray_colour(patch(90, 90, [-1, -1, -1]), images, masks, grey=1)
    assert 0.01 < dark < 0.0625 and stray_colour(patch(27, 27, [-1, -1, -1]), images, masks, grey=1) == 0
    assert stray_colour(patch(90, 90, [1, 0, 0]), images, masks, grey=1) > away  # a red patch is a little lighter too
    # a texture drawn a little off, grey errors both ways (a checkerboard of ±8 levels over a quarter of the picture),
    # mostly averages out of the grey part: it costs less than the small dark patch (taking sizes before averaging,
    # it would cost its full 0.0625, more than four times the patch)
    texture = images.clone()
    texture[0, :, 64:, 64:] += 0.0625 * (torch.arange(64).view(-1, 1) + torch.arange(64)).remainder(2).mul(2).sub(1)
    assert stray_colour(texture, images, masks, grey=1) < dark / 2


def test_impossible_colour_prices_colours_beside_an_object_that_are_neither_its_blend_nor_its_shadow():
    """decoder.impossible_colour: beside a red square on grey, a darker grey (a shadow) or a red-grey blend (its soft
    edge) costs nothing, a green patch does; far from the object, or beside a grey object (no plane), nothing is asked."""
    masks = torch.zeros(1, 2, 64, 64)
    masks[0, 0, 20:30, 20:30] = 1  # a red square
    grey, red = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.8, -0.8, -0.8])  # in [-1, 1]
    picture = grey.view(1, 3, 1, 1).repeat(1, 1, 64, 64)
    picture[..., 20:30, 20:30] = red.view(3, 1, 1)

    def beside(rgb, y=31, x=31, size=3):  # a patch of colour rgb just below right of the square (its shadow's place)
        out = picture.clone()
        out[0, :, y:y + size, x:x + size] = torch.tensor(rgb).view(3, 1, 1)
        return out
    assert impossible_colour(picture, picture, masks) == pytest.approx(0, abs=1e-6)
    assert impossible_colour(beside([-0.4, -0.4, -0.4]), picture, masks) == pytest.approx(0, abs=1e-6)  # a shadow
    assert impossible_colour(beside([0.4, -0.4, -0.4]), picture, masks) == pytest.approx(0, abs=1e-6)  # a blend
    green = impossible_colour(beside([-0.4, 0.4, -0.4]), picture, masks)
    assert green > 0.05
    assert impossible_colour(beside([-0.4, 0.4, -0.4], y=50, x=50), picture, masks) == 0  # beyond NEAR_REACH: stray_colour's
    masks[0, 0] = 0
    masks[0, 1, 20:30, 20:30] = 1
    grey_square = picture.clone()
    grey_square[..., 20:30, 20:30] = 0.5  # a light grey square on grey: its colours lie on the background's line
    assert impossible_colour(beside([-0.4, 0.4, -0.4]), grey_square, masks) == 0


def test_droplet_loss_prices_one_spike_that_dominates_a_picture_not_an_object_edge():
    """decoder.droplet_loss: a feature map whose peak norm is a few times its mean (an object's edge) costs nothing, one
    strong local spike (StyleGAN's droplet) does, and a stronger one more; DropletProbe holds the decoder's last two up
    blocks' outputs for one decode and leaves no hook behind."""
    smooth = torch.ones(2, 8, 32, 32)
    smooth[:, :, 10:20, 10] = 4.0  # an edge: 4 times the mean or less
    spike = smooth.clone()
    spike[1, :, 25, 25] = 300.0  # picture 1 draws a droplet
    stronger = smooth.clone()
    stronger[1, :, 25, 25] = 600.0
    assert droplet_loss([smooth, smooth]) == 0
    assert droplet_loss([smooth, spike]) > 0
    assert droplet_loss([smooth, stronger]) > droplet_loss([smooth, spike])
    vae = isd.build_random_pipeline("tiny-sd", seed=0).vae.eval()
    with torch.no_grad(), DropletProbe(vae.decoder) as probe:
        picture = vae.decode(torch.randn(2, 4, 8, 8)).sample
    assert [f.shape[-1] for f in probe.features] == [picture.shape[-1]] * 2  # both at full resolution
    assert all(not block._forward_hooks for block in vae.decoder.up_blocks)


def test_worst_error_prices_a_few_pixels_the_per_pixel_loss_averages_away():
    """decoder.worst_error: a twenty-pixel mark, far off, costs nearly its whole error (the per-pixel loss a hundredth
    of it); the same error spread thinly over the picture costs next to nothing; a perfect picture costs nothing."""
    target = torch.zeros(2, 3, 128, 128)
    marked = target.clone()
    marked[0, 1, 60:64, 60:65] = 0.8  # 20 pixels of one picture, one channel 0.8 off
    assert worst_error(target, target) == 0
    assert worst_error(marked, target).item() == pytest.approx(0.4)  # the marked picture's worst 20: 0.8; the other's: 0
    assert decoder_loss(marked, target, torch.ones(2, 1, 128, 128)) < worst_error(marked, target) / 100
    assert worst_error(target + 0.01, target).item() == pytest.approx(0.01)


def test_ring_fill_paints_a_blot_out_of_the_ring_and_trusts_only_a_background_it_can_continue():
    """decoder.ring_fill: beside a red square on a grey gradient, a dark blot at its lower left is painted over with
    the gradient (a few levels off at most), a photo's shadow below right is not priced, a striped background is not
    trusted at all; ring_error then prices the blot against the target (the per-pixel loss a small fraction of it),
    and a picture that matches its target costs nothing."""
    size = 64
    ramp = torch.linspace(-0.15, 0.15, size)  # 0.6 grey levels a pixel: the world's steepest gradients are gentler
    picture = ramp.view(1, 1, 1, size).repeat(1, 3, size, 1)  # a grey gradient, left to right
    masks = torch.zeros(1, 2, size, size)
    masks[0, 0, 20:32, 24:36] = 1
    picture[..., 20:32, 24:36] = torch.tensor([0.8, -0.8, -0.8]).view(3, 1, 1)
    blotted = picture.clone()
    blotted[..., 34:37, 20:23] -= 0.5  # a dark blot 2-4 pixels beyond the square's lower-left corner
    target, where = ring_fill(blotted, masks)
    assert where.any() and not where[..., 20:32, 24:36].any()  # the ring only
    assert (target - picture).abs().amax() < 4 / 127.5  # the blot painted over; the gradient continued
    assert ring_error(blotted, target, where) > 0.2
    assert decoder_loss(blotted, target, torch.ones(1, 1, size, size)) < ring_error(blotted, target, where) / 20
    assert ring_error(target, target, where) == 0
    shadowed = picture.clone()
    shadowed[..., 33:36, 27:39] -= 0.3  # a shadow cast down and right, as the photo style draws it
    clean = ring_error(picture, *ring_fill(picture, masks)).item()  # the gradient painted in: a level or two off at worst
    assert clean < 3 / 127.5
    assert ring_error(shadowed, *ring_fill(shadowed, masks)).item() == pytest.approx(clean, abs=1e-4)  # the shadow: not asked away
    striped = picture.clone()
    striped[..., ::4, :] += 0.2  # a pattern: continuing the background from beyond would erase it
    assert not ring_fill(striped, masks)[1].any()
    assert speckle_ring(masks, reach=6, edge=2).sum() < speckle_ring(masks, reach=6).sum()  # the soft edge left out


def test_edge_darkening_script_puts_a_dark_patch_in_its_band_and_refuses_a_folder_without_a_vae(tmp_path, capsys):
    """scripts/edge_darkening.py: a patch darkened 1-2 px from a square shows most in the 0-2 px band (the 5×5 mean
    carries some of it 2 px further), not beyond 8 px; a lighter one
    counts as no darkening; a --decoder that is not a VAE folder is refused, naming what to give."""
    import runpy

    script = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "edge_darkening.py"))
    masks = torch.zeros(1, 2, 64, 64)
    masks[0, 0, 20:30, 20:30] = 1
    original = torch.zeros(1, 3, 64, 64)
    darker = original.clone()
    darker[..., 30:32, 22:27] -= 0.4  # 2 rows just below the square (1-2 px out), 51 grey levels darker
    bands = script["darkest_by_band"](darker, original, masks)
    assert list(bands) == ["0-2 px", "2-4 px", "4-8 px", "beyond 8 px"]
    assert bands["0-2 px"][0] > 15 and bands["0-2 px"][0] >= bands["2-4 px"][0] > bands["4-8 px"][0]
    assert bands["beyond 8 px"][0] == 0
    assert max(script["darkest_by_band"](original + 0.2, original, masks)["0-2 px"]) < 0  # lighter, not darker
    with pytest.raises(SystemExit):
        script["main"](["--decoder", f"x={tmp_path}"])
    assert "a folder with a VAE's config.json" in capsys.readouterr().err


def test_steady_loss_prices_statistics_that_differ_between_pictures():
    """decoder.steady_loss: pictures whose groups share one mean and spread cost nothing, whatever their content; a
    picture whose group mean moves, or whose spread doubles, costs (the mean's move measured against the spread, so
    scaling a layer changes nothing); GroupNormProbe(everywhere=True) holds every GroupNorm of the decoder."""
    norm = torch.nn.GroupNorm(2, 4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 16, 16, generator=gen)
    flat = x.reshape(4, 2, -1)
    same = ((flat - flat.mean(-1, keepdim=True)) / flat.std(-1, unbiased=False, keepdim=True)).reshape(x.shape)
    assert steady_loss([(norm, same)]).item() == pytest.approx(0, abs=1e-8)  # four pictures, one set of statistics
    shifted, doubled = same.clone(), same.clone()
    shifted[0, :2] += 1.0  # the first picture's first group moved by one spread
    doubled[0, 2:] *= 2.0  # its second group's spread doubled
    assert steady_loss([(norm, shifted)]) > 0.1 and steady_loss([(norm, doubled)]) > 0.1
    assert steady_loss([(norm, 10 * shifted)]).item() == pytest.approx(steady_loss([(norm, shifted)]).item(), rel=1e-4)
    vae = isd.build_random_pipeline("tiny-sd", seed=0).vae.eval()
    with torch.no_grad(), GroupNormProbe(vae.decoder, everywhere=True) as probe:
        vae.decode(torch.randn(2, 4, 8, 8))
    every = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert probe.norms == every and len(probe.inputs) == len(every) and steady_loss(probe.inputs) > 0
    assert all(not n._forward_hooks for n in every)


def test_spread_loss_prices_a_few_pixels_that_supply_a_groups_spread():
    """decoder.spread_share / spread_loss: in a group whose deviation is spread over the picture the 25 pixels deviating
    most supply little of its spread and cost nothing; one spike in one group's channels supplies most of that group's
    spread (not the others') and costs; GroupNormProbe holds every GroupNorm input of the last two up blocks and
    conv_norm_out for one decode and leaves no hook behind."""
    norm = torch.nn.GroupNorm(2, 4)
    x = torch.randn(1, 4, 128, 128, generator=torch.Generator().manual_seed(0))
    assert spread_share(norm, x).amax() < 0.02  # noise: 25 of 16,384 pixels supply about their share
    spiked = x.clone()
    spiked[0, 2, 60:62, 60:62] = 500.0  # a droplet in the second group's first channel
    share = spread_share(norm, spiked)
    assert share[0, 1] > 0.9 and share[0, 0] < 0.02
    assert spread_loss([(norm, x)]) == 0 and spread_loss([(norm, spiked)]) > 0
    vae = isd.build_random_pipeline("tiny-sd", seed=0).vae.eval()
    with torch.no_grad(), GroupNormProbe(vae.decoder) as probe:
        vae.decode(torch.randn(1, 4, 8, 8))
    assert len(probe.inputs) == len(probe.norms) > 1 and probe.inputs[-1][0] is vae.decoder.conv_norm_out
    assert all(not n._forward_hooks for n in probe.norms)


def test_constant_share_tells_a_channel_held_constant_from_a_spike():
    """decoder.constant_share: a group whose spread comes from one channel held at a constant level, far from its
    partner's, gets nearly all of it from the channels' means, where a spike's group (same spread, one pixel) gets
    almost none; noise gets almost none either; the spike is what spread_share sees instead."""
    norm = torch.nn.GroupNorm(2, 4)
    x = torch.randn(1, 4, 128, 128, generator=torch.Generator().manual_seed(0))
    x[0, 0] += 30.0  # first group: one channel held large and constant
    x[0, 2, 60, 60] = 3000.0  # second group: a spike
    share = constant_share(norm, x)
    assert share.shape == (1, 2) and share[0, 0] > 0.99 and share[0, 1] < 0.01
    assert spread_share(norm, x)[0, 1] > 0.9 and spread_share(norm, x)[0, 0] < 0.02
    assert constant_share(norm, torch.randn(2, 4, 32, 32)).amax() < 0.01


def test_spliced_latents_ask_each_side_of_the_cut_for_its_own_picture():
    # picture i is the constant i (latent, pixels and mask), so every value says which picture it came from
    latents, images, masks = (torch.arange(4.0).view(4, 1, 1, 1).expand(4, c, s, s).clone() for c, s in ((4, 16), (3, 128), (2, 128)))
    mixed, targets, target_masks, weight = spliced(latents, images, masks, torch.Generator().manual_seed(0))
    assert mixed.shape == latents.shape and targets.shape == images.shape and weight.shape == (4, 1, 128, 128)
    for i in range(4):
        own, other = mixed[i, 0] == i, mixed[i, 0] == (i - 1) % 4  # the next picture of the batch is the rolled one
        assert (own | other).all() and own.any() and other.any()
        pixels_own = torch.nn.functional.interpolate(own[None, None].float(), scale_factor=8)[0, 0] > 0
        assert torch.equal(targets[i, 0] == i, pixels_own) and torch.equal(target_masks[i, 0] == i, pixels_own)
        # the weight is 0 on a band 2·SEAM latent pixels (16·SEAM px) wide along the cut, 1 elsewhere
        band = (weight[i, 0] == 0)
        assert band.float().mean().item() == pytest.approx(2 * SEAM / 16)


def test_decoder_stage_needs_a_trained_vae(tmp_path):
    with pytest.raises(RuntimeError, match="run the vae stage first"):
        train_decoder(tmp_path, 1, 2, torch.device("cpu"), 0, max_steps=1)


def test_binding_loss_penalises_attention_on_the_other_objects_words():
    from illustrated_sd.train.grounding import binding_loss

    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, :, :2], masks[0, 1, :, 2:] = 1, 1  # object 0 on the left half, object 1 on the right
    slots = torch.tensor([[[2, 3], [5, 6]]])
    bound, swapped = torch.zeros(1, 16, 77), torch.zeros(1, 16, 77)
    left, right = [i for i in range(16) if i % 4 < 2], [i for i in range(16) if i % 4 >= 2]
    bound[0, left, 2:4], bound[0, right, 5:7] = 0.5, 0.5  # each half looks at its own object's words
    swapped[0, left, 5:7], swapped[0, right, 2:4] = 0.5, 0.5  # … at the other object's words
    loss = lambda probs, s=slots: binding_loss({"layer": probs}, {"layer": 1}, s, masks).item()
    assert loss(bound) == 0.0 and loss(swapped) == 1.0
    one_object = torch.tensor([[[2, 3], [-1, -1]]])
    assert loss(swapped, one_object) == 0.0  # nothing to bind with a single object


def test_binding_loss_counts_only_named_objects_and_said_words():
    from illustrated_sd.train.grounding import binding_loss

    masks = torch.zeros(1, 4, 4, 4)
    masks[0, 0, :, 0], masks[0, 1, :, 1], masks[0, 2, :, 2], masks[0, 3, :, 3] = 1, 1, 1, 1  # four columns
    probs = torch.zeros(1, 16, 77)
    column = lambda c: [i for i in range(16) if i % 4 == c]
    probs[0, column(0), 3] = 1.0  # object 0's pixels look at its shape word (its colour was not said)
    probs[0, column(1), 6] = 1.0  # object 1's pixels look at object 2's shape word
    probs[0, column(2), 6] = 1.0  # object 2's pixels look at its own shape word
    probs[0, :, 0] = 0.5  # <|startoftext|>, which an unsaid colour's slot -1 must not read
    slots = torch.tensor([[[-1, 3], [-1, -1], [5, 6], [-1, -1]]])  # objects 1 and 3 are not named
    assert binding_loss({"layer": probs}, {"layer": 1}, slots, masks).item() == 0.0
    slots[0, 1] = torch.tensor([-1, 9])  # name object 1: its pixels looked only at object 2's word
    assert binding_loss({"layer": probs}, {"layer": 1}, slots, masks).item() == pytest.approx(1 / 3)


def test_two_objects_sets_the_share_of_two_object_scenes():
    from illustrated_sd.world import sample_scenes

    share = lambda p: sum(len(s.objects) == 2 for s in sample_scenes(1, 400, two_objects=p)) / 400
    assert share(0.0) == 0.0 and share(1.0) == 1.0 and 0.5 < share(0.6) < 0.7
    assert [s.caption for s in sample_scenes(1, 20)] == [s.caption for s in sample_scenes(1, 20, two_objects=0.3)]


def test_two_objects_in_world_2_adds_scenes_like_the_pair_prompts():
    from illustrated_sd.world import sample_scenes

    plain = sample_scenes(1, 400, version=2)
    assert [s.caption for s in plain] == [s.caption for s in sample_scenes(1, 400, two_objects=0.0, version=2)]
    fully_named = lambda s: len(s.objects) == 2 and all({"shape", "color", "position"} <= set(o.said) for o in s.objects)
    practice = sample_scenes(1, 400, two_objects=0.5, version=2)
    assert sum(map(fully_named, plain)) < 0.15 * 400 < 0.4 * 400 < sum(map(fully_named, practice))
    for scene in filter(fully_named, practice):  # the caption says both colours and both places
        for obj in scene.objects:
            assert f"{obj.color} " in scene.caption and obj.shape in scene.caption


# ---- refusing mistakes, and never touching what the package did not write ---------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint holding every component (random weights, as after a first short run)."""
    ckpt = tmp_path_factory.mktemp("ckpt")
    pipe = isd.build_random_pipeline("tiny-sd")
    for module, name in ((pipe.text_encoder, "text_encoder"), (pipe.vae, "vae"), (pipe.unet, "unet")):
        save_weights(module, ckpt, name)
    write_log(ckpt, {"vae_scaling_factor": 0.5})
    return ckpt


def refused(argv, capsys) -> str:
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, message", [
    (["run", "--out", "{tmp}/c", "--minutes", "abc"], "--minutes: 'abc' is not a number of minutes"),
    (["run", "--out", "{tmp}/c", "--minutes=-1,1,1"], "every stage needs a budget > 0 minutes \\(got -1\\)"),
    (["run", "--out", "{tmp}/c", "--minutes", "0,1,1"], "budget > 0"),
    (["run", "--out", "{tmp}/c", "--minutes", "nan,1,1"], "not a number of minutes"),
    (["run", "--out", "{tmp}/c", "--stages", "clip", "--minutes", "1,2"], "2 budget\\(s\\) for 1 stage\\(s\\)"),
    (["run", "--out", "{tmp}/c", "--stages", "clip,paint"], "unknown stage\\(s\\) \\['paint'\\]; choose from"),
    (["run", "--out", "{tmp}/c", "--batch-size", "0"], "argument --batch-size: must be ≥ 1"),
    (["run", "--out", "{tmp}/c", "--seed", "-1"], "argument --seed: must be ≥ 0"),
    (["run", "--out", "{tmp}/c", "--two-objects", "2"], "--two-objects is a share of scenes, in \\[0, 1\\]"),
    (["run", "--out", "{tmp}/c", "--binding=-1"], "--binding is a loss weight, ≥ 0"),
    (["run", "--out", "{tmp}/c", "--local=-1"], "--local is a loss weight, ≥ 0"),
    (["run", "--out", "{tmp}/c", "--clean=-1"], "--clean is a loss weight, ≥ 0"),
    (["run", "--out", "{tmp}/c", "--clean-grey=-1"], "--clean-grey is a loss weight, ≥ 0"),
    (["run", "--out", "{tmp}/c", "--clean-grey", "1"], "add --clean W"),
    (["run", "--out", "{tmp}/c", "--object-colour=-1"], "--object-colour is a loss weight, ≥ 0"),
    (["run", "--out", "{tmp}/c", "--name-backgrounds", "1.5"], "--name-backgrounds is a share of scenes, in \\[0, 1\\]"),
    (["run", "--out", "{tmp}/c", "--name-all=-0.5"], "--name-all is a share of scenes, in \\[0, 1\\]"),
    (["run", "--out", "{tmp}/c", "--keep-generated=-1"], "--keep-generated is a loss weight, ≥ 0"),
    (["run", "--out", "{tmp}/c", "--colour-reference", "{tmp}"], "whose pictures --keep-generated or --local-teacher hold to: add --keep-generated W \\(say 1\\), or --local W --local-teacher"),
    (["run", "--out", "{tmp}/c", "--bank-size", "64"], "chooses what --keep-generated keeps"),
    (["run", "--out", "{tmp}/c", "--local-teacher"], "--local-teacher chooses the targets of the --local term: add --local W"),
    (["run", "--out", "{tmp}/c", "--keep-generated", "1", "--colour-reference", "{tmp}"], "has no vae/config.json: pass an exported pipeline folder"),
    (["run", "--out", "{tmp}/c", "--bank-size", "0"], "argument --bank-size: must be ≥ 1"),
    (["run", "--out", "{tmp}/c", "--max-steps", "0"], "argument --max-steps: must be ≥ 1"),
    (["run", "--out", "{tmp}/afile"], "is a file; the checkpoint is a folder"),
    (["run"], "the following arguments are required: --out"),
    (["import", "{tmp}/nofolder", "{tmp}/ck"], "no pipeline folder at .*nofolder"),
    (["import", "{tmp}", "{tmp}/ck"], "has no train_log.json"),
    (["export", "{tmp}/no_ckpt", "{tmp}/model"], "no checkpoint folder at .*no_ckpt.*train run --out"),
    (["export", "{tmp}", "{tmp}/model"], "has no trained VAE"),
    (["export", "{tmp}/c", "{tmp}/afile"], "is a file; export writes a folder"),
])
def test_training_mistakes_give_one_line_and_exit_code_2(tmp_path, capsys, argv, message):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "c").mkdir()
    before = sorted(tmp_path.rglob("*"))
    assert re.search(message, refused([a.format(tmp=tmp_path) for a in argv], capsys))
    assert sorted(tmp_path.rglob("*")) == before  # nothing made, nothing lost


def test_export_never_replaces_a_folder_of_the_users(checkpoint, tmp_path, capsys):
    mywork = tmp_path / "mywork"
    mywork.mkdir()
    (mywork / "notes.txt").write_text("the user's")
    message = refused(["export", str(checkpoint), str(mywork)], capsys)
    assert "not empty (notes.txt" in message and "--force" in message
    assert [p.name for p in mywork.iterdir()] == ["notes.txt"] and (mywork / "notes.txt").read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mywork"]  # no scratch folder left either


def test_export_replaces_an_earlier_export_whole_and_force_replaces_anything(checkpoint, tmp_path):
    model = tmp_path / "model"
    assert train_main(["export", str(checkpoint), str(model)]) == 0
    (model / "unet" / "stale.bin").write_bytes(b"from the old export")
    assert train_main(["export", str(checkpoint), str(model)]) == 0  # an earlier export: replaced as a whole
    assert not (model / "unet" / "stale.bin").exists() and (model / "illustrated_sd.json").is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert train_main(["export", str(checkpoint), str(other), "--force"]) == 0
    assert not (other / "notes.txt").exists() and isd.load_pipeline(other).unet is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "other"]


def test_a_failed_checkpoint_save_keeps_the_old_weights(tmp_path, monkeypatch):
    big = torch.nn.Sequential(torch.nn.Linear(600, 9000), torch.nn.Linear(9000, 600))  # two shards
    save_weights(big, tmp_path, "m")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    writes = []

    def second_write_fails(tensors, path, **kwargs):
        writes.append(path)
        if len(writes) == 2:
            raise OSError(28, "No space left on device")
        real_save_file(tensors, path, **kwargs)

    with torch.no_grad():
        big[0].weight.add_(1)
    monkeypatch.setattr("illustrated_sd.train.checkpoint.save_file", second_write_fails)
    with pytest.raises(OSError):
        save_weights(big, tmp_path, "m")
    assert len(writes) == 2  # the first new shard was complete when the second failed
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # both old shards, untouched; no temporaries


def test_fewer_shards_remove_the_stale_ones(tmp_path):
    save_weights(torch.nn.Sequential(torch.nn.Linear(600, 9000), torch.nn.Linear(9000, 600)), tmp_path, "m")
    save_weights(torch.nn.Linear(2, 2), tmp_path, "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-0.safetensors"]


def test_the_training_log_is_written_atomically(tmp_path, monkeypatch):
    write_log(tmp_path, {"unet": {"loss": [1.0]}})

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pathlib.Path.write_text", broken)
    with pytest.raises(OSError):
        write_log(tmp_path, {"unet": {"loss": [1.0, 0.5]}})
    monkeypatch.undo()
    assert read_log(tmp_path) == {"unet": {"loss": [1.0]}} and [p.name for p in tmp_path.iterdir()] == ["train_log.json"]
    (tmp_path / "train_log.json").write_text("{cut sho")
    with pytest.raises(ValueError, match="not a readable training log.*new --out folder"):
        read_log(tmp_path)


def test_a_checkpoint_learns_one_world(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert train_main(["run", "--smoke", "--world", "2", "--stages", "vae", "--minutes", "1", "--out", str(ckpt)]) == 0
    assert read_log(ckpt)["world"] == 2 and read_log(ckpt)["vae"]["total_steps"] == 3
    assert train_main(["run", "--smoke", "--stages", "vae", "--minutes", "1", "--out", str(ckpt)]) == 0  # resumes in its world
    assert read_log(ckpt)["vae"]["total_steps"] == 6
    capsys.readouterr()  # (the progress bars so far)
    message = refused(["run", "--smoke", "--world", "1", "--stages", "vae", "--minutes", "1", "--out", str(ckpt)], capsys)
    assert "learned the version-2 world" in message and "new --out folder" in message
    # every stage runs in world 2, grounding included (it finds the words of the objects its captions name)
    assert train_main(["run", "--smoke", "--stages", "clip,unet,ground,decoder", "--minutes", "1,1,1,1", "--out", str(ckpt)]) == 0
    assert all(read_log(ckpt)[stage]["total_steps"] == 3 for stage in ("clip", "unet", "ground", "decoder"))


def test_an_export_says_which_world_its_model_learned(checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt2"
    for path in checkpoint.glob("*.safetensors"):
        (ckpt / path.name).parent.mkdir(exist_ok=True)
        (ckpt / path.name).write_bytes(path.read_bytes())
    write_log(ckpt, {"vae_scaling_factor": 0.5, "world": 2})
    assert train_main(["export", str(ckpt), str(tmp_path / "model")]) == 0
    pipe = isd.load_pipeline(tmp_path / "model")
    assert pipe.world == 2 and {"moon", "striped", "painting"} <= pipe.known_words
    assert isd.load_pipeline().world == 2  # the shipped model (tiny-sd 2) learned version 2


def test_object_colour_error_prices_an_objects_mean_colour_not_its_background():
    images = torch.zeros(1, 3, 32, 32)
    masks = torch.zeros(1, 2, 32, 32)
    masks[0, 0, 4:12, 4:12] = 1  # one object; the second slot is empty and must not count
    images[:, :, 4:12, 4:12] = torch.tensor([1.0, 0.1, -1.0])[:, None, None]  # orange-ish
    assert object_colour_error(images, images, masks) == 0
    yellower = images.clone()
    yellower[:, 1, 4:12, 4:12] += 0.5  # every pixel of the object a little greener: a small per-pixel error, a new colour
    assert object_colour_error(yellower, images, masks) == pytest.approx(0.25)
    background = images.clone()
    background[:, :, 20:28, 20:28] = 0.7  # a change away from the object costs nothing here
    assert object_colour_error(background, images, masks) == 0


def test_the_generated_bank_holds_the_unets_latents_and_what_the_decoder_draws_from_them_now():
    from illustrated_sd.models.unet import build_random_pipeline
    from illustrated_sd.train.decoder import generated_bank

    pipe = build_random_pipeline("tiny-sd", seed=0)
    latents, pictures, masks = generated_bank(pipe, pipe.vae, 3, torch.device("cpu"), seed=0, world=2, batch=2, steps=2)
    assert latents.shape == (3, 4, 16, 16) and pictures.shape == (3, 3, 128, 128) and masks.shape == (3, 4, 128, 128)
    assert pictures.min() >= -1 and pictures.max() <= 1 and set(masks.unique().tolist()) <= {0.0, 1.0}
    with torch.no_grad():  # the decoder as it starts draws the bank's pictures: the term starts at zero
        again = pipe.vae.decode(latents).sample.float().clamp(-1, 1)
    torch.testing.assert_close(again, pictures)
    assert object_colour_error(again, pictures, masks) < 1e-10


def test_a_bank_with_colours_gives_half_its_captions_to_them(monkeypatch):
    """generated_bank(colours=…): half the captions name one of the colours, none a held-out pair."""
    from illustrated_sd.models.unet import build_random_pipeline
    from illustrated_sd.train import decoder
    from illustrated_sd.world import HELD_OUT, sample_scenes

    pipe = build_random_pipeline("tiny-sd", seed=0)
    asked = []
    real_call = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, prompts, **kw: asked.extend(prompts) or real_call(self, prompts, **kw))
    decoder.generated_bank(pipe, pipe.vae, 8, torch.device("cpu"), seed=0, world=2, batch=8, steps=1, colours=("orange",))
    plain = [scene.caption for scene in sample_scenes([0, 11], 8, version=2)]
    assert len(asked) == 8 and asked[:4] == plain[:4] and asked[4:] != plain[4:]  # the first half as without colours
    assert all("orange" in p.split() for p in asked[4:])
    assert not any(f"{c} {s}" in p for p in asked for c, s in HELD_OUT)
    with pytest.raises(ValueError, match="world captions name"):
        decoder.generated_bank(pipe, pipe.vae, 8, torch.device("cpu"), seed=0, world=2, colours=("teal",))


def test_the_flux_bank_holds_tiny_fluxs_latents_in_the_unets_latent_space_and_the_decoders_pictures_of_them():
    """decoder.flux_bank: a Flux pipeline's latents, unpacked from its tokens and unscaled as the decoder takes them
    [n, 4, h, w], with the decoder's pictures of them and the detector's masks; the captions are others than the UNet
    bank's, and with colours half of them name one."""
    from illustrated_sd.models.transformers import build_random_flux
    from illustrated_sd.train.decoder import bank_captions, flux_bank

    flux, vae = build_random_flux("tiny-flux", seed=0), isd.build_random_pipeline("tiny-sd", seed=0).vae
    asked = []
    real_call = type(flux).__call__
    spy = lambda self, prompt, **kw: asked.extend(prompt) or real_call(self, prompt=prompt, **kw)  # noqa: E731
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(flux), "__call__", spy)
        latents, pictures, masks = flux_bank(flux, vae, 3, torch.device("cpu"), seed=0, world=2, batch=2, steps=2)
    assert latents.shape == (3, 4, 16, 16) and pictures.shape == (3, 3, 128, 128) and masks.shape == (3, 4, 128, 128)
    assert asked == bank_captions(3, 1, 2) and asked != bank_captions(3, 0, 2)
    with torch.no_grad():  # the decoder as it starts draws the bank's pictures
        torch.testing.assert_close(vae.decode(latents).sample.float().clamp(-1, 1), pictures)
    assert all("orange" in c.split() for c in bank_captions(8, 1, 2, ("orange",))[4:])


def empty_bank(n: int) -> tuple:
    """A stand-in for decoder.generated_bank's ``n`` latents, pictures and masks (zeros, of the tiny world's shapes)."""
    return torch.zeros(n, 4, 16, 16), torch.zeros(n, 3, 128, 128), torch.zeros(n, 4, 128, 128)


def test_colour_reference_draws_the_bank_with_its_own_decoder(checkpoint, tmp_path, monkeypatch):
    """--colour-reference: the bank's pictures (whose colours the decoder is held to) come from that folder's VAE, not
    from the decoder being trained."""
    import illustrated_sd.train.decoder as decoder

    reference = isd.build_random_pipeline("tiny-sd", seed=7)  # other weights than the checkpoint's
    reference.vae.save_pretrained(tmp_path / "ref" / "vae")
    seen = []

    def bank(pipe, vae, n, device, seed, world):
        seen.append({k: v.clone() for k, v in vae.decoder.state_dict().items()})
        return empty_bank(n)

    monkeypatch.setattr(decoder, "generated_bank", bank)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    for folder in (None, tmp_path / "ref"):
        train_decoder(ckpt, 1, 2, torch.device("cpu"), 0, max_steps=1, keep_generated=1.0, bank_size=2, colour_reference=folder)
    own, referenced = seen
    wanted = reference.vae.decoder.state_dict()
    assert all(torch.equal(referenced[k], wanted[k]) for k in wanted)
    assert not all(torch.equal(own[k], wanted[k]) for k in wanted)


def test_local_teacher_holds_each_spliced_side_to_the_starting_decoders_picture(checkpoint, tmp_path, monkeypatch):
    """--local-teacher: what a spliced half is held to is the starting decoder's own picture of that side (what
    scripts/decoder_locality.py measures), not the world's picture; without it, the world's picture."""
    import illustrated_sd.train.decoder as decoder

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    start = isd.build_random_pipeline("tiny-sd", seed=0).vae
    assert load_weights(start, ckpt, "vae")
    start.float().eval()
    calls, real = [], decoder.spliced
    monkeypatch.setattr(decoder, "spliced", lambda latents, images, *rest: calls.append((latents, images)) or real(latents, images, *rest))
    train_decoder(ckpt, 1, 2, torch.device("cpu"), 0, max_steps=2, local=1.0, local_teacher=True)
    train_decoder(ckpt, 1, 2, torch.device("cpu"), 0, max_steps=1, local=1.0)
    with torch.no_grad():  # both steps held to the decoder as it started (a frozen copy), not as it trains
        for latents, taught in calls[:2]:
            assert torch.equal(taught, start.decode(latents).sample.clamp(-1, 1))
        latents, plain = calls[2]
        assert not torch.allclose(plain.float(), start.decode(latents).sample, atol=0.1)  # the world's pictures instead


def test_the_decoder_stage_counts_drawing_its_bank_in_its_minutes(checkpoint, tmp_path, monkeypatch):
    """--minutes is the stage's whole wall time: a bank that takes longer than the budget leaves no time to train (a
    device call cut part 10 off before its export when the bank's minutes came on top)."""
    import time

    import illustrated_sd.train.decoder as decoder

    def bank(pipe, vae, n, device, seed, world, wait=0.0):
        time.sleep(wait)
        return empty_bank(n)

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    monkeypatch.setattr(decoder, "generated_bank", lambda *args: bank(*args, wait=1))  # longer than the 0.6 s budget
    assert train_decoder(ckpt, 0.01, 2, torch.device("cpu"), 0, keep_generated=1.0, bank_size=2) == 0
    monkeypatch.setattr(decoder, "generated_bank", bank)  # drawn at once, with time left: it trains
    assert train_decoder(ckpt, 1, 2, torch.device("cpu"), 0, max_steps=1, keep_generated=1.0, bank_size=2) == 1


def test_decoder_learning_rate_shrinks_with_the_batch():
    from illustrated_sd.train.decoder import decoder_lr

    assert decoder_lr(256) == decoder_lr(1024) == 2e-4  # the GPU's batches: as before
    assert decoder_lr(16) == pytest.approx(5e-5)  # 16 times smaller: gradients 4 times noisier, a step 4 times shorter


@pytest.mark.parametrize("part", [2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16])
def test_training_script_starts_a_part_again_from_its_own_checkpoint(tmp_path, part):
    # PYTHON=echo prints each command the script would run. A part imports the pipeline folder into its checkpoint only
    # while it has none; started again, it trains on from that checkpoint (and says so), then exports it.
    script = Path(__file__).parents[1] / "scripts" / "train_tiny_sd2.sh"
    ckpt, model = tmp_path / f"ckpt.{part}", tmp_path / "model"
    out = f"{model}.{part}" if part >= 12 else str(model)  # the decoder candidates export beside the model, to be graded

    def commands():
        run = subprocess.run(["bash", str(script), str(tmp_path / "ckpt"), str(model), "", str(part)],
                             env={"PATH": "/usr/bin:/bin", "PYTHON": "echo"}, capture_output=True, text=True, check=True)
        lines = [line.split() for line in run.stdout.splitlines()]  # "-m illustrated_sd.train <command> …"
        return [(words[2], words[words.index("--out") + 1] if "--out" in words else words[3:5]) for words in lines], run.stderr

    first, _ = commands()
    runs = first[1:-1]  # a part may train several stages, each a run into its own checkpoint
    assert first[0] == ("import", [str(model), str(ckpt)]) and first[-1] == ("export", [str(ckpt), out])
    assert runs and runs == [("run", str(ckpt))] * len(runs)
    ckpt.mkdir()
    write_log(ckpt, {})  # what an import leaves last (see the test below)
    again, said = commands()
    assert again == first[1:] and "training on from it" in said


def test_training_script_part_17_regroups_the_model_with_the_options_it_is_given(tmp_path):
    script = Path(__file__).parents[1] / "scripts" / "train_tiny_sd2.sh"
    model = tmp_path / "model"
    run = subprocess.run(["bash", str(script), str(tmp_path / "ckpt"), str(model), "", "17"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": "echo", "REGROUP_ARGS": "--colour 10 --bank-colours orange,yellow"},
                         check=True)
    assert run.stdout.split() == ["-m", "illustrated_sd.train.regroup", str(model), f"{model}.17", "--groups", "16", "--minutes", "7",
                                  "--colour", "10", "--bank-colours", "orange,yellow"]


def test_import_writes_the_log_that_marks_a_checkpoint_whole(tmp_path):
    # the training script takes a checkpoint with a train_log.json as started (its start() above)
    assert train_main(["import", str(TINY_SD), str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "train_log.json").is_file() and (tmp_path / "ckpt" / "vae-0.safetensors").is_file()


def test_blend_decoders_mixes_the_two_decoders_weight_by_weight(tmp_path):
    """scripts/blend_decoders.py: α = 0 gives A's decoder, 1 gives B's, ½ their mean; the encoder and the rest of the
    pipeline are A's; wrong inputs, and an output that would overwrite a folder, are refused naming the fix."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("blend", Path(__file__).parents[1] / "scripts" / "blend_decoders.py")
    blend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blend)
    for name, seed in (("a", 0), ("b", 1)):
        isd.build_random_pipeline("tiny-sd", seed=seed).save_pretrained(tmp_path / name)
    a, b = (load_file(tmp_path / name / blend.WEIGHTS) for name in "ab")
    for alpha in (0.0, 0.5, 1.0):
        counts = blend.blend(tmp_path / "a", tmp_path / "b", tmp_path / "out", alpha, force=True)
        mixed = load_file(tmp_path / "out" / blend.WEIGHTS)
        for k in a:
            wanted = (1 - alpha) * a[k] + alpha * b[k] if k.startswith(blend.DECODER) else a[k]
            torch.testing.assert_close(mixed[k], wanted)
    # the convolutions' random weights differ; the norms' ones and zeros are the same in both
    assert 0 < counts["differing"] < counts["decoder_tensors"] < len(a)
    assert (tmp_path / "out" / "unet").is_dir()  # the rest of A's pipeline comes along
    with pytest.raises(ValueError, match=r"--alpha must be within \[0, 1\], got 1.5"):
        blend.blend(tmp_path / "a", tmp_path / "b", tmp_path / "new", 1.5)
    with pytest.raises(FileExistsError, match="pass --force to replace it"):
        blend.blend(tmp_path / "a", tmp_path / "b", tmp_path / "out", 0.5)
    for kept in (tmp_path / "a", tmp_path):  # a folder blended, or one that holds it: never replaced, even with force
        with pytest.raises(ValueError, match="is one of the folders blended"):
            blend.blend(tmp_path / "a", tmp_path / "b", kept, 0.5, force=True)
    assert (tmp_path / "a" / blend.WEIGHTS).exists()
    other = isd.build_random_pipeline("tiny-sd3")  # another VAE layout
    other.vae.save_pretrained(tmp_path / "c" / "vae")
    with pytest.raises(ValueError, match="VAEs of different layouts"):
        blend.blend(tmp_path / "a", tmp_path / "c", tmp_path / "new", 0.5)


def test_decoder_marks_builds_its_reference_from_the_references_own_config(tmp_path):
    """scripts/decoder_marks.py --reference: VAEs of 8 groups and of 16 share every weight's shape, so the
    reference is built from its own folder's config.json (not loaded into the measured VAE's grouping), and weights
    without a config beside them are refused, naming where to get it."""
    import importlib.util

    from illustrated_sd.train.regroup import regrouped

    spec = importlib.util.spec_from_file_location("marks", Path(__file__).parents[1] / "scripts" / "decoder_marks.py")
    marks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(marks)
    regrouped(isd.build_random_pipeline("tiny-sd", seed=0).vae, 8).save_pretrained(tmp_path / "vae")  # tiny-sd has 4
    for given in (tmp_path / "vae", tmp_path / "vae" / "diffusion_pytorch_model.safetensors"):  # the folder or its weights
        assert marks.reference_vae(given).config.norm_num_groups == 8
    (tmp_path / "bare").mkdir()
    shutil.copy(tmp_path / "vae" / "diffusion_pytorch_model.safetensors", tmp_path / "bare")
    with pytest.raises(SystemExit, match="no config.json in .*bare; give the VAE's folder .*git show COMMIT"):
        marks.reference_vae(tmp_path / "bare" / "diffusion_pytorch_model.safetensors")


def test_budget_begin_steps_keeps_the_deadline_and_starts_the_anneal_again():
    from illustrated_sd.train.stages import Budget

    budget = Budget(1, None)
    budget.start -= 30  # half a minute of setup gone
    budget.deadline -= 30
    assert budget.used(0) == pytest.approx(0.5, abs=0.01)
    deadline = budget.deadline
    budget.begin_steps()
    assert budget.deadline == deadline and budget.used(0) < 0.01 and budget.more(0)



def test_the_ema_follows_its_recurrence_and_keeps_counters_as_they_are():
    from illustrated_sd.train.stages import EMA

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5))  # BatchNorm counts its batches in a long
    ema, expected = EMA(module, 0.9), {k: v.clone() for k, v in module.state_dict().items()}
    for n in range(6):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p))
            module[1].num_batches_tracked += 1
        ema.update(n)
        decay = min(0.9, (1 + n) / (10 + n))  # ramps up: the first updates forget the start quickly
        for k, v in module.state_dict().items():
            if v.is_floating_point():
                expected[k] = expected[k] + (1 - decay) * (v - expected[k])
    for k, v in expected.items():
        if v.is_floating_point():
            torch.testing.assert_close(ema.weights[k], v, rtol=1e-6, atol=1e-6)
    assert ema.weights["1.num_batches_tracked"] == 6  # a counter is not averaged: the latest count


def test_regrouped_copies_every_weight_into_fewer_groups_and_refuses_a_grouping_that_does_not_divide():
    """train.regroup.regrouped: diffusers' own AutoencoderKL with another norm_num_groups, every weight copied (a
    GroupNorm's scale and shift are per channel), yet another function (each norm pools other channels' statistics)."""
    from illustrated_sd.train.regroup import posterior_loss, regrouped

    vae = isd.build_random_pipeline("tiny-sd", seed=0).vae.eval()
    copy = regrouped(vae, 8).eval()
    assert copy.config.norm_num_groups == 8 and vae.config.norm_num_groups == 4
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), copy.state_dict().values()))
    assert {m.num_channels // m.num_groups for m in copy.decoder.modules() if isinstance(m, torch.nn.GroupNorm)} == {4, 8, 16}
    images = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        wanted = vae.encode(images).latent_dist
        assert posterior_loss(vae, wanted, images) == 0
        assert posterior_loss(copy, wanted, images) > 0
        latents = torch.randn(2, 4, 16, 16)
        assert not torch.allclose(copy.decode(latents).sample, vae.decode(latents).sample, atol=1e-3)
    with pytest.raises(ValueError, match=r"--groups 3 must divide every GroupNorm's channels \(32, 64, 128\): try one of \[1, 2, 4, 8, 16, 32\]"):
        regrouped(vae, 3)


def test_regroup_vae_writes_the_pipeline_with_its_vae_regrouped_and_never_over_a_folder(tmp_path, capsys):
    """python -m illustrated_sd.train.regroup: OUT is SOURCE with a regrouped, trained VAE (loadable by diffusers as it
    is) and the run's losses in its train_log.json; an existing OUT is refused before anything is trained."""
    from illustrated_sd.train.regroup import main as regroup_main

    source, out = tmp_path / "source", tmp_path / "out"
    isd.build_random_pipeline("tiny-sd", seed=0).save_pretrained(source)
    argv = [str(source), str(out), "--groups", "8", "--max-steps", "2", "--batch-size", "2", "--bank-size", "2"]
    assert regroup_main(argv) == 0
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    assert pipe.vae.config.norm_num_groups == 8
    before = load_file(source / "vae" / "diffusion_pytorch_model.safetensors")
    after = load_file(out / "vae" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before if k.startswith("decoder."))
    assert {t.dtype for t in after.values()} == {torch.float16}  # as every shipped weight (the source here is float32)
    assert read_log(out)["regroup"]["total_steps"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no scratch folder left behind
    from illustrated_sd.train.export import import_folder
    with pytest.raises(ValueError, match="VAE has 8 GroupNorm groups .* the training stages build 4: train it on with illustrated_sd.train.regroup"):
        import_folder(out, tmp_path / "ckpt")  # train run would rebuild it with 4 groups: another function, silently
    with pytest.raises(FileExistsError, match="exists: choose a new folder"):
        regroup_main(argv)
    with pytest.raises(SystemExit):
        regroup_main(argv[:2] + ["--splice-colour", "-1"])
    assert "--splice-colour is a loss weight, ≥ 0" in capsys.readouterr().err


def test_regroup_trains_on_from_start_and_its_colour_term_adds_to_the_loss(tmp_path, monkeypatch):
    """``--start`` begins from an earlier run's regrouped weights (another model's weights are refused), and
    ``--colour`` adds the objects' mean-colour term: the same first step (same seed) costs more with it."""
    from illustrated_sd.train import regroup

    source = tmp_path / "source"
    isd.build_random_pipeline("tiny-sd", seed=0).save_pretrained(source)
    earlier = tmp_path / "earlier.safetensors"
    real_save_file({k: v.half().contiguous() for k, v in regroup.regrouped(
        isd.build_random_pipeline("tiny-sd", seed=1).vae, 16).state_dict().items()}, earlier)
    losses, priced = [], []

    def one_step(name, step_fn, params, *args, **kwargs):  # stands in for the training loop: one loss, no update
        losses.append(step_fn(0).item())
        return 0

    def spy(recon, images, masks):  # the colour term, as regroup calls it
        value = object_colour_error(recon, images, masks)
        priced.append(value.item())
        return value

    monkeypatch.setattr(regroup, "_run", one_step)
    regroup.regroup_vae(source, tmp_path / "out0", 16, 1.0, 2, "cpu", bank_size=2, start=earlier)
    monkeypatch.setattr(regroup, "object_colour_error", spy)
    monkeypatch.setattr(regroup, "_run", one_step)
    regroup.regroup_vae(source, tmp_path / "out1", 16, 1.0, 2, "cpu", bank_size=2, start=earlier, colour=10.0)
    written = load_file(tmp_path / "out0" / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(written[k], v) for k, v in load_file(earlier).items())  # no step taken: the start, unchanged
    assert len(priced) == 2 and min(priced) > 0  # the encoder's latents and the UNet's, each priced
    assert losses[1] - losses[0] == pytest.approx(10 * sum(priced), rel=1e-4)
    marks = []

    def stray_spy(recon, images, masks, grey):  # the marks term, as regroup calls it: against the world's original
        value = stray_colour(recon, images, masks, grey=grey)
        marks.append((value.item(), grey))
        return value

    monkeypatch.setattr(regroup, "stray_colour", stray_spy)
    regroup.regroup_vae(source, tmp_path / "out5", 16, 1.0, 2, "cpu", bank_size=2, start=earlier, colour=10.0, clean=3.0)
    assert len(marks) == 2 and min(v for v, _ in marks) > 0  # the encoder's latents and the UNet's, each priced
    assert {grey for _, grey in marks} == {1.0}  # grey marks priced too, as part 14's
    assert losses[2] - losses[1] == pytest.approx(3 * sum(v for v, _ in marks), rel=1e-4)
    near = []

    def near_spy(recon, images, masks):  # the near-object term, as regroup calls it
        value = impossible_colour(recon, images, masks)
        near.append(value.item())
        return value

    monkeypatch.setattr(regroup, "impossible_colour", near_spy)
    regroup.regroup_vae(source, tmp_path / "out6", 16, 1.0, 2, "cpu", bank_size=2, start=earlier, colour=10.0, clean=3.0, near=5.0)
    assert len(near) == 2 and near[0] > 0  # the encoder's latents (the world's pictures, their objects known) and the UNet's
    assert losses[3] - losses[2] == pytest.approx(5 * sum(near), rel=1e-4)
    priced.clear()  # the colours on the spliced latents too: two more terms, each side against its own picture
    regroup.regroup_vae(source, tmp_path / "out7", 16, 1.0, 2, "cpu", bank_size=2, start=earlier, colour=10.0,
                        splice_colour=7.0)
    assert len(priced) == 4 and min(priced) > 0
    assert losses[4] - losses[1] == pytest.approx(7 * sum(priced[2:]), rel=1e-4)
    spikes = []

    def droplet_spy(features):  # the droplet term, as regroup calls it: on the features of its one decode call
        value = droplet_loss(features, limits=(1.0, 1.0))  # limits a random decoder surely passes: the term is > 0
        spikes.append((len(features), value.item()))
        return value

    monkeypatch.setattr(regroup, "droplet_loss", droplet_spy)
    regroup.regroup_vae(source, tmp_path / "out8", 16, 1.0, 2, "cpu", bank_size=2, start=earlier, colour=10.0, droplet=3.0)
    assert spikes[0][0] == 2 and spikes[0][1] > 0  # the last two up blocks
    assert losses[5] - losses[1] == pytest.approx(3 * spikes[0][1], rel=1e-4)
    regroup.regroup_vae(source, tmp_path / "out9", 16, 1.0, 2, "cpu", bank_size=2, start=earlier, colour=10.0, truth=True)
    assert losses[6] != pytest.approx(losses[1], rel=1e-3)  # the world's pictures as targets, not the source decoder's
    spreads = []

    def spread_spy(inputs):  # the spread term, as regroup calls it: on every probed GroupNorm's input of its one decode
        value = spread_loss(inputs, limit=0.0)  # a limit a random decoder surely passes: the term is > 0
        spreads.append((len(inputs), value.item()))
        return value

    monkeypatch.setattr(regroup, "spread_loss", spread_spy)
    regroup.regroup_vae(source, tmp_path / "out10", 16, 1.0, 2, "cpu", bank_size=2, start=earlier, colour=10.0, spread=4.0)
    assert spreads[0][0] > 1 and spreads[0][1] > 0
    # a term of 0.001 read as the difference of two float32 totals: a few 1e-7 of rounding besides the relative 1e-4
    assert losses[7] - losses[1] == pytest.approx(4 * spreads[0][1], rel=1e-4, abs=1e-6)
    steadies = []

    def steady_spy(inputs):  # the steady term, as regroup calls it: every GroupNorm of the decoder, one decode
        value = steady_loss(inputs)
        steadies.append((len(inputs), value.item()))
        return value

    monkeypatch.setattr(regroup, "steady_loss", steady_spy)
    regroup.regroup_vae(source, tmp_path / "out10b", 16, 1.0, 2, "cpu", bank_size=2, start=earlier, colour=10.0, steady=2.0)
    assert steadies[0][0] > spreads[0][0] and steadies[0][1] > 0  # more norms than the spread term's
    assert losses[8] - losses[1] == pytest.approx(2 * steadies[0][1], rel=1e-4)
    worsts = []

    def worst_spy(recon, target):  # the worst-pixels term, as regroup calls it: the encoder's latents, their targets
        value = worst_error(recon, target)
        worsts.append((len(recon), value.item()))
        return value

    monkeypatch.setattr(regroup, "worst_error", worst_spy)
    regroup.regroup_vae(source, tmp_path / "out10c", 16, 1.0, 2, "cpu", bank_size=2, start=earlier, colour=10.0, worst=3.0)
    assert worsts == [(2, pytest.approx(worsts[0][1]))] and worsts[0][1] > 0  # one term, on the batch's 2 pictures
    assert losses[9] - losses[1] == pytest.approx(3 * worsts[0][1], rel=1e-4)
    rings = []

    def ring_spy(recon, target, where):  # the ring term, as regroup calls it: the encoder's latents, then the UNet's
        value = ring_error(recon, target, where)
        rings.append((len(recon), value.item()))
        return value

    monkeypatch.setattr(regroup, "ring_error", ring_spy)
    regroup.regroup_vae(source, tmp_path / "out10d", 16, 1.0, 2, "cpu", bank_size=2, start=earlier, colour=10.0, ring=2.0)
    assert [n for n, _ in rings] == [2, 1] and rings[0][1] > 0  # a random decoder's ring is no background
    assert losses[10] - losses[1] == pytest.approx(2 * sum(v for _, v in rings), rel=1e-4, abs=1e-6)
    from illustrated_sd.models.transformers import build_random_flux
    build_random_flux("tiny-flux", seed=0).save_pretrained(tmp_path / "flux")
    drawn = []
    real_flux_bank = regroup.flux_bank
    monkeypatch.setattr(regroup, "flux_bank", lambda *a, **kw: drawn.append(a[2]) or real_flux_bank(*a, **kw, steps=1))
    regroup.regroup_vae(source, tmp_path / "out11", 16, 1.0, 2, "cpu", bank_size=2, start=earlier, colour=10.0,
                        flux_bank_size=3, flux_model=tmp_path / "flux")
    assert drawn == [3] and losses[11] != pytest.approx(losses[1], rel=1e-3)  # the bank holds 2 + 3 latents to pick from
    (tmp_path / "config.json").write_text(json.dumps({"norm_num_groups": 8}))  # beside `earlier`: trained with 8 groups
    with pytest.raises(ValueError, match="trained with 8 GroupNorm groups, not 16: pass --groups 8"):
        regroup.regroup_vae(source, tmp_path / "out3", 16, 1.0, 2, "cpu", bank_size=2, start=earlier)
    with pytest.raises(ValueError, match="is a UNet2DConditionModel's weights, not a VAE's"):
        regroup.regroup_vae(source, tmp_path / "out2", 16, 1.0, 2, "cpu", bank_size=2,
                            start=source / "unet" / "diffusion_pytorch_model.safetensors")
    alone = tmp_path / "alone" / "weights.safetensors"  # no config beside it: the strict load refuses it by name
    alone.parent.mkdir()
    shutil.copy(source / "unet" / "diffusion_pytorch_model.safetensors", alone)
    with pytest.raises(RuntimeError, match="Missing key"):
        regroup.regroup_vae(source, tmp_path / "out4", 16, 1.0, 2, "cpu", bank_size=2, start=alone)
