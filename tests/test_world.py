import re

import numpy as np
import pytest
import torch

from illustrated_sd.world import HELD_OUT, POSITIONS, known_words, render, sample_scenes
from illustrated_sd.world.detect import detect, invented_marks, stray_marks
from illustrated_sd.world.vocabulary import PAIR_FORMS, PATTERNS, POSITION_PHRASES, SHAPES_2, SINGLE_FORMS, STYLES, known_words_2


def test_scenes_are_deterministic_per_seed():
    a, b, c = sample_scenes(7, 20), sample_scenes(7, 20), sample_scenes(8, 20)
    assert [s.caption for s in a] == [s.caption for s in b] != [s.caption for s in c]
    images_a, _ = render(a[:4])
    images_b, _ = render(b[:4])
    assert torch.equal(images_a, images_b)


def test_captions_use_the_world_words_in_at_least_ten_forms():
    assert len(SINGLE_FORMS) + len(PAIR_FORMS) >= 10
    words = set(known_words())
    for needed in ("red", "green", "blue", "yellow", "purple", "orange", "white", "circle", "square", "triangle", "star",
                   "heart", "small", "big", "large", "left", "right", "top", "bottom", "center", "background"):
        assert needed in words
    for scene in sample_scenes(1, 300):
        assert set(re.findall(r"[a-z]+", scene.caption)) <= words, scene.caption
        assert "a o" not in scene.caption  # "an orange"
        for obj in scene.objects:
            assert obj.color in scene.caption and obj.shape in scene.caption


def test_held_out_pairs_never_appear_in_training_scenes():
    for scene in sample_scenes(2, 2000):
        assert all((o.color, o.shape) not in HELD_OUT for o in scene.objects)
    held = sample_scenes(3, 50, held_out=True, n_objects=1)
    assert all((s.objects[0].color, s.objects[0].shape) in HELD_OUT for s in held)


def test_render_shapes_ranges_and_masks():
    scenes = sample_scenes(4, 6)
    images, masks = render(scenes, size=64)
    assert images.shape == (6, 3, 64, 64) and masks.shape == (6, 2, 64, 64)
    assert images.min() >= -1 and images.max() <= 1
    for scene, m in zip(scenes, masks):
        for k in range(2):
            assert (m[k].sum() > 0) == (k < len(scene.objects))


def test_objects_are_where_their_caption_says():
    scenes = sample_scenes(5, 40)
    _, masks = render(scenes)
    for scene, m in zip(scenes, masks):
        for k, obj in enumerate(scene.objects):
            ys, xs = torch.nonzero(m[k] > 0.5, as_tuple=True)
            cx, cy = (xs.float().mean() + 0.5) / 128, (ys.float().mean() + 0.5) / 128
            nearest = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
            assert nearest == obj.position


def detector_reads(scenes, version: int) -> tuple[int, int]:
    """(objects the detector reads right — colour, shape, place — , objects) on the world's own renders."""
    images, _ = render(scenes)
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    right = total = 0
    for scene, image in zip(scenes, pixels):
        found = detect(image, version=version)
        for obj in scene.objects:
            d = min(found, key=lambda e: (e.center[0] - obj.center[0]) ** 2 + (e.center[1] - obj.center[1]) ** 2)
            right += (d.color, d.shape, d.position) == (obj.color, obj.shape, obj.position)
            total += 1
    return right, total


def test_detector_reads_the_worlds_own_pictures():
    right, total = detector_reads(sample_scenes(6, 60), version=1)
    assert right == total


def test_detector_finds_nothing_in_a_blank_image():
    assert detect(np.full((128, 128, 3), 120, dtype=np.uint8)) == []


@pytest.mark.parametrize("shape", SHAPES_2)  # version 1's five, then version 2's four
def test_every_shape_is_drawn(shape):
    from illustrated_sd.world import inside

    c = torch.linspace(-1.2, 1.2, 64)
    v, u = torch.meshgrid(c, c, indexing="ij")
    area = inside(shape, u, v).float().mean()
    assert 0.1 < area < 0.7


# ---- version 2: captions that say only part of the picture ---------------------------------------------

def test_version_2_scenes_are_deterministic_and_version_1_is_unchanged():
    a, b = sample_scenes(7, 30, version=2), sample_scenes(7, 30, version=2)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert torch.equal(render(a[:6])[0], render(b[:6])[0])
    assert [s.caption for s in sample_scenes(7, 20)] == [s.caption for s in sample_scenes(7, 20, version=1)]
    with pytest.raises(ValueError, match="versions 1 and 2"):
        sample_scenes(0, 1, version=3)


def test_version_2_captions_name_only_part_of_the_scene():
    words = set(known_words_2())
    scenes = sample_scenes(12, 600, version=2)
    for scene in scenes:
        assert set(re.findall(r"[a-z]+", scene.caption)) <= words, scene.caption
        assert 1 <= len(scene.named) <= len(scene.objects) <= 4
        for obj in scene.named:
            assert obj.shape in scene.caption and "shape" in obj.said
            if "color" in obj.said:
                assert obj.color in scene.caption
            if "position" in obj.said:
                assert any(phrase in scene.caption for phrase in POSITION_PHRASES[obj.position])
        assert all((o.color, o.shape) not in HELD_OUT for o in scene.objects)  # mentioned or not
    # the world is varied: unmentioned objects, every style and pattern, short and long captions
    assert sum(len(s.named) < len(s.objects) for s in scenes) > 100
    assert {s.style for s in scenes} == set(STYLES) and {s.pattern for s in scenes} == set(PATTERNS)
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES_2)
    lengths = [len(s.caption.split()) for s in scenes]
    assert min(lengths) == 2 and max(lengths) >= 20  # "a heart" … a long sentence


def test_name_backgrounds_practises_the_background_colour_word_and_leaves_the_default_mix_alone():
    plain = sample_scenes(14, 200, version=2)
    assert [s.caption for s in plain] == [s.caption for s in sample_scenes(14, 200, version=2, name_backgrounds=None)]
    said = lambda scenes: np.mean([f"{s.background} background" in s.caption for s in scenes])  # noqa: E731
    practised = sample_scenes(14, 400, version=2, name_backgrounds=1.0)
    assert all(s.mentioned["background"] for s in practised) and said(practised) == 1.0
    assert said(plain) < 0.4 and 0.35 < said(sample_scenes(15, 400, version=2, name_backgrounds=0.5)) < 0.8


def test_name_all_leaves_no_object_out_of_the_caption_and_the_default_mix_alone():
    plain = sample_scenes(16, 300, version=2)
    assert [s.caption for s in plain] == [s.caption for s in sample_scenes(16, 300, version=2, name_all=None)]
    named = lambda scene: all(o.shape in scene.caption.split() for o in scene.objects)  # noqa: E731
    left_out = lambda scenes: 1 - np.mean([named(s) for s in scenes])  # noqa: E731
    assert 0.3 < left_out(plain) < 0.5  # the world's own captions: about 39% leave an object out
    every = sample_scenes(16, 300, version=2, name_all=1.0)
    assert left_out(every) == 0 and max(len(s.objects) for s in every) == 4  # every object, however many
    assert 0.1 < left_out(sample_scenes(17, 400, version=2, name_all=0.5)) < 0.3


def test_version_2_objects_never_touch_and_masks_hold_each():
    scenes = sample_scenes(13, 40, version=2)
    _, masks = render(scenes)
    assert masks.shape == (40, 4, 128, 128)
    for scene, m in zip(scenes, masks):
        for k in range(4):
            assert (m[k].sum() > 0) == (k < len(scene.objects))
        assert (m > 0.5).sum(0).max() <= 1  # no pixel belongs to two objects


def test_detector_reads_the_version_2_pictures():
    right, total = detector_reads(sample_scenes(14, 60, version=2), version=2)
    assert right / total >= 0.98, (right, total)


def test_fill_holes_fills_enclosed_holes_only():
    from illustrated_sd.world.detect import fill_holes
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    ring = (r <= 12) & (r >= 7)
    assert (fill_holes(ring) == (r <= 12)).all()
    cup = ring & ~((xx > 20) & (abs(yy - 20) < 3))  # a ring with a gap: its inside reaches the outside
    assert (fill_holes(cup) == cup).all()


def test_stray_marks_finds_a_faint_coloured_smudge_and_not_the_worlds_own_patterns():
    images, _ = render(sample_scenes([7, 7], 64, held_out=True, version=2))
    pictures = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    assert sum(bool(stray_marks(p)) for p in pictures) <= 2  # patterns, shadows and outlines are not marks
    clean = next(p for p in pictures if not stray_marks(p))
    # a smudge as the model draws them: mottled colour a few grey levels off the background, 8×8 px, far from objects
    objects = np.zeros(clean.shape[:2], bool)
    for found in detect(clean, version=2):
        objects |= found.mask
    ys, xs = np.nonzero(~objects)
    free = [(y, x) for y, x in zip(ys, xs) if 12 <= y < 116 and 12 <= x < 116 and not objects[y - 12:y + 12, x - 12:x + 12].any()]
    y, x = free[len(free) // 2]
    smudged = clean.astype(np.int16)
    mottle = np.random.default_rng(0).choice([-14, 14], size=(8, 8, 3))
    smudged[y - 4:y + 4, x - 4:x + 4] += mottle
    found = stray_marks(smudged.clip(0, 255).astype(np.uint8))
    assert len(found) == 1 and abs(found[0][1][0] * 128 - x) < 3 and abs(found[0][1][1] * 128 - y) < 3
    # the same patch in grey (the same offset in R, G and B) is a pattern, not a smudge
    grey = clean.astype(np.int16)
    grey[y - 4:y + 4, x - 4:x + 4] += mottle[..., :1]
    assert not stray_marks(grey.clip(0, 255).astype(np.uint8))


def test_invented_marks_sorts_what_a_round_trip_adds_by_kind():
    """A dark patch away from the object is a darker mark, a reddish one (no lighter overall) a coloured mark, one
    touching the object counts only with a smaller clearance, and an unchanged round trip has none."""
    originals = torch.zeros(3, 3, 64, 64)  # a plain grey background, [-1, 1]
    masks = torch.zeros(3, 1, 64, 64)
    masks[:, :, 20:30, 20:30] = 1  # the object
    trips = originals.clone()
    trips[0, :, 45:53, 45:53] -= 0.2  # 25 grey levels darker, far from the object
    trips[1, 0, 45:53, 45:53] += 0.2  # redder, and green and blue down as much: no lighter
    trips[1, 1:, 45:53, 45:53] -= 0.1
    trips[2, :, 30:33, 20:30] -= 0.2  # darker, but touching the object
    found = {kind: marks.tolist() for kind, marks in invented_marks(trips, originals, masks, clearance=4).items()}
    assert found == {"coloured": [False, True, False], "darker": [True, False, False], "lighter": [False, False, False]}
    assert invented_marks(trips, originals, masks, clearance=1)["darker"].tolist() == [True, False, True]
    assert not any(m.any() for m in invented_marks(originals, originals, masks).values())


def test_darkest_addition_measures_the_faintest_marks_where_they_are():
    from illustrated_sd.world.detect import darkest_addition

    originals = torch.zeros(2, 3, 64, 64)
    masks = torch.zeros(2, 1, 64, 64)
    masks[:, :, 20:30, 20:30] = 1
    trips = originals.clone()
    trips[0, :, 45:52, 10:17] -= 6 / 127.5  # 6 grey levels darker over 7×7 pixels: below invented_marks' 8
    trips[1, :, 22:28, 22:28] -= 0.5  # darker, but on the object: not counted
    levels, where = darkest_addition(trips, originals, masks)
    row, column = where[0].tolist()
    assert levels[0].item() == pytest.approx(6, abs=1e-4) and 45 <= row < 52 and 10 <= column < 17
    assert levels[1].item() == pytest.approx(0, abs=1e-4)
    assert not invented_marks(trips, originals, masks)["darker"][0]
