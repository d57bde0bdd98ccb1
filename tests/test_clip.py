import matplotlib.pyplot as plt
import pytest
import torch

import illustrated_sd as isd
from illustrated_sd.lessons.clip import clip_similarity, load_clip
from illustrated_sd.world import render, sample_scenes


@pytest.fixture(scope="module")
def world():
    scenes = sample_scenes(7, 8, n_objects=1)
    images, _ = render(scenes)
    return images, [s.caption for s in scenes]


def test_training_lights_the_diagonal(world):
    images, captions = world
    trained = clip_similarity(load_clip(), images, captions)
    random = clip_similarity(load_clip(trained=False), images, captions)
    assert trained.shape == random.shape == (8, 8)
    assert ((trained >= -1 - 1e-5) & (trained <= 1 + 1e-5)).all()
    hits = (trained.argmax(1) == torch.arange(8)).sum()
    assert hits >= 6, f"the trained CLIP matched only {hits}/8 images to their captions"
    # contrastive training pulls each image's own caption above the others: the diagonal stands out
    margin = lambda s: (s.diag().mean() - s.masked_fill(torch.eye(8, dtype=bool), 0).sum() / 56).item()
    assert margin(trained) > margin(random) + 0.1


def test_the_text_tower_is_the_shipped_text_encoder():
    clip, pipe = load_clip(), isd.load_pipeline()
    for (name, a), b in zip(clip.text_encoder.state_dict().items(), pipe.text_encoder.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_bad_images_are_refused(world):
    with pytest.raises(ValueError, match=r"\[N, 3, 128, 128\]"):
        clip_similarity(load_clip(trained=False), torch.zeros(2, 3, 64, 64), ["a", "b"])


def test_similarity_matrix_figure(world):
    images, captions = world
    fig = isd.plot.similarity_matrix(clip_similarity(load_clip(), images, captions), captions, images)
    assert "pick their own caption" in fig.axes[0].get_title()
    plt.close(fig)
