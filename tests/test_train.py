"""The training machinery, in its tiny CPU smoke mode: every stage runs, logs, saves, resumes and exports."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

import illustrated_sd as isd
from illustrated_sd.train.__main__ import main as train_main
from illustrated_sd.train.checkpoint import load_weights, save_weights
from illustrated_sd.train.decoder import decoder_loss, object_weights, train_decoder
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
    assert train_main(["run", "--smoke", "--stages", "ground", "--minutes", "1", "--binding", "0.1", "--two-objects", "0.6",
                       "--out", str(ckpt)]) == 0  # fine-tunes
    assert json.loads((ckpt / "train_log.json").read_text())["ground"]["total_steps"] == 3
    before = load_file(ckpt / "vae-0.safetensors")
    assert train_main(["run", "--smoke", "--stages", "decoder", "--minutes", "1", "--out", str(ckpt)]) == 0
    after = load_file(ckpt / "vae-0.safetensors")
    assert json.loads((ckpt / "train_log.json").read_text())["decoder"]["total_steps"] == 3
    # the encoder is frozen, so the latents the UNet learned stay the same; only the decoder moves
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert train_main(["export", str(ckpt), str(folder)]) == 0
    plain = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    assert plain.vae.config.scaling_factor == log["vae_scaling_factor"]
    pipe = isd.load_pipeline(folder)
    assert pipe("a red circle", num_inference_steps=2, progress=False).latents.shape == (3, 4, 16, 16)


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


def test_two_objects_sets_the_share_of_two_object_scenes():
    from illustrated_sd.world import sample_scenes

    share = lambda p: sum(len(s.objects) == 2 for s in sample_scenes(1, 400, two_objects=p)) / 400
    assert share(0.0) == 0.0 and share(1.0) == 1.0 and 0.5 < share(0.6) < 0.7
    assert [s.caption for s in sample_scenes(1, 20)] == [s.caption for s in sample_scenes(1, 20, two_objects=0.3)]
