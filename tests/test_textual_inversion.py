"""Textual inversion: one new row of the token table learns; nothing else the model knows changes."""

import warnings

import pytest
import torch

import illustrated_sd as isd
from illustrated_sd.train.textual_inversion import concept_scenes, learn_word, nearest_words
from illustrated_sd.world import SHAPES_2, render
from illustrated_sd.world.detect import classify_shape, fill_holes

WORD = "<house>"


@pytest.fixture(scope="module")
def taught():
    """A fresh embedded pipeline (learning changes its tokenizer) that learned WORD for 3 steps, and what it was before."""
    pipe = isd.load_pipeline()
    table_before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    unet_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    learned = learn_word(pipe, concept_scenes("house", 4, placeholder=WORD), WORD, init_word="square", steps=3, batch_size=2,
                         progress=False)
    return pipe, learned, table_before, unet_before


def test_concept_scenes_name_the_placeholder_and_draw_the_unseen_shape():
    scenes = concept_scenes("house", 5, seed=1, placeholder=WORD)
    assert all(WORD in s.caption and "square" not in s.caption.split() for s in scenes)
    assert all([o.shape for o in s.objects] == ["house"] for s in scenes)
    assert "house" not in SHAPES_2  # no training scene holds one
    _, masks = render(scenes)
    # the detector's template matching knows the unseen shape, so pictures of the concept can be read
    read = [classify_shape(fill_holes(m[0].numpy() > 0.5), list(SHAPES_2) + ["house"]) for m in masks]
    assert read == ["house"] * 5


def test_only_the_new_row_learns(taught):
    pipe, learned, table_before, unet_before = taught
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert table.shape[0] == table_before.shape[0] + 1
    assert torch.equal(table[:-1], table_before)  # every word the model knew is untouched
    assert learned["token_id"] == table.shape[0] - 1
    assert torch.equal(table[learned["token_id"]], learned["embedding"])
    assert torch.equal(learned["start"], table_before[pipe.tokenizer.convert_tokens_to_ids("square</w>")])
    assert not torch.equal(learned["embedding"], learned["start"])  # and the new one moved
    assert all(torch.equal(v, unet_before[k]) for k, v in pipe.unet.state_dict().items())
    assert all(p.requires_grad for p in pipe.unet.parameters())  # the flags are given back as they were
    assert len(learned["losses"]) == 3 and all(loss > 0 for loss in learned["losses"])


def test_the_new_word_is_one_token_the_pipeline_and_trace_accept(taught):
    pipe = taught[0]
    assert pipe.tokenizer.tokenize(f"a red {WORD}") == ["a</w>", "red</w>", WORD]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "the model never saw ['house']" warning for a taught word
        trace = pipe(f"a red {WORD} on the left", num_inference_steps=2, seed=0, progress=False)
    assert trace.tokens[3] == WORD
    assert trace.cross_attention(WORD).shape == trace.cross_attention("red").shape
    with pytest.warns(UserWarning, match="never saw"):  # a word not taught still warns
        pipe("a red house", num_inference_steps=1, seed=0, progress=False)


def test_nearest_words_finds_a_words_own_row(taught):
    pipe = taught[0]
    red = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("red</w>")]
    nearest = nearest_words(pipe, red, ["blue", "red", "circle"], k=2)
    assert nearest[0] == ("red", 1.0) and len(nearest) == 2


@pytest.mark.parametrize("word, init, scenes, message", [
    ("red", "square", None, "already a token"),
    (WORD, "photorealistic", None, "one token"),
    (WORD, "square", [], "scenes is empty"),
    (WORD, "square", "plain captions", "every caption must use"),
])
def test_bad_inputs_are_refused_with_the_fix(word, init, scenes, message):
    pipe = isd.load_pipeline()
    if scenes is None:
        scenes = concept_scenes("house", 2, placeholder=WORD)
    elif scenes == "plain captions":
        scenes = concept_scenes("house", 2)
    vocabulary = len(pipe.tokenizer)
    with pytest.raises(ValueError, match=message):
        learn_word(pipe, scenes, word, init_word=init, steps=1, progress=False)
    assert len(pipe.tokenizer) == vocabulary  # nothing was added before the refusal
