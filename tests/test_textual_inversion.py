"""Textual inversion: one new row of the token table learns; nothing else the model knows changes."""

import warnings

import pytest
import torch

import illustrated_sd as isd
from illustrated_sd.lessons.forward_diffusion import diffusion_loss
from illustrated_sd.train import textual_inversion
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


@pytest.fixture(scope="module")
def untaught():
    """A fresh embedded pipeline that every refusal must leave as it was."""
    return isd.load_pipeline()


def snapshot(pipe):
    """What learning a word changes: the tokenizer's words, the token table, the UNet calls made (a list, filled by a hook)."""
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    return dict(pipe.tokenizer.get_vocab()), pipe.text_encoder.get_input_embeddings().weight.detach().clone(), calls, handle


def assert_untouched(pipe, before):
    vocabulary, table, calls, handle = before
    handle.remove()
    assert calls == []  # nothing was trained
    assert pipe.tokenizer.get_vocab() == vocabulary and len(pipe.tokenizer) == len(vocabulary)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, table)


SCENES = concept_scenes("house", 2, placeholder=WORD)


@pytest.mark.parametrize("arguments, error, message", [
    (dict(word="red"), ValueError, r"'red' is already a token of this tokenizer \('red</w>'\).*e.g. '<red-2>'"),
    (dict(word=""), ValueError, "word is empty or only spaces"),  # it would retrain <|endoftext|>
    (dict(word=" \t"), ValueError, "word is empty or only spaces"),
    (dict(word="<my house>"), ValueError, r"one word, without spaces \(got '<my house>'\); e.g. '<my-house>'"),
    (dict(word="<|endoftext|>"), ValueError, r"holds CLIP's marker '<\|endoftext\|>'"),
    (dict(word="x<|startoftext|>"), ValueError, r"holds CLIP's marker '<\|startoftext\|>'"),
    (dict(word=7), TypeError, "word must be a string"),
    (dict(init_word="photorealistic"), ValueError, "init_word must be one token .* is 2 tokens"),
    (dict(init_word=""), ValueError, "init_word must be one token .* is 0 tokens"),
    (dict(init_word="<|endoftext|>"), ValueError, r"init_word '<\|endoftext\|>' is CLIP's marker"),
    (dict(init_word=None), TypeError, "init_word must be a string"),
    (dict(scenes=[]), ValueError, "scenes is empty"),
    (dict(scenes="a house"), TypeError, r"scenes must be a list of world Scenes \(got str\)"),
    (dict(scenes=[*SCENES, "a red <house>"]), TypeError, "scenes must hold world Scenes, and 'a red <house>' is a str"),
    (dict(scenes=concept_scenes("house", 2)), ValueError, "every caption must use '<house>' as a word of its own"),
    (dict(scenes=concept_scenes("house", 2, placeholder=WORD + "s")), ValueError, "every caption must use '<house>'"),
    (dict(steps=0), ValueError, r"steps must be ≥ 1 \(got 0\)"),
    (dict(steps=2.5), TypeError, "steps must be a whole number"),
    (dict(batch_size=0), ValueError, r"batch_size must be ≥ 1 \(got 0\)"),
    (dict(lr=0), ValueError, r"lr must be > 0 \(got 0\)"),
    (dict(lr=-1e-3), ValueError, "lr must be > 0"),
    (dict(lr=float("inf")), ValueError, "lr must be a finite number"),
    (dict(seed=0.5), TypeError, "seed must be a whole number"),
    (dict(progress="no"), TypeError, "progress must be True or False"),
    (dict(pipe="sd"), TypeError, r"pipe must be an IllustratedPipeline.*isd.load_pipeline\(\)"),
])
def test_bad_inputs_are_refused_with_the_fix_before_anything_changes(untaught, arguments, error, message):
    arguments = {"pipe": untaught, "scenes": SCENES, "word": WORD, "init_word": "square", "steps": 1, "progress": False, **arguments}
    before = snapshot(untaught)
    with pytest.raises(error, match=message):
        learn_word(**arguments)
    assert_untouched(untaught, before)


def test_models_it_cannot_teach_are_refused(sd2_pipe):
    before = snapshot(sd2_pipe)
    with pytest.raises(ValueError, match="ε-prediction loss .* this model predicts 'v_prediction'.*use an ε-predicting model"):
        learn_word(sd2_pipe, SCENES, WORD, init_word="square", steps=1, progress=False)
    assert_untouched(sd2_pipe, before)
    xl = isd.IllustratedPipeline(isd.build_random_pipeline("tiny-sdxl", seed=0))
    with pytest.raises(ValueError, match="SD 1/2's one text encoder, and an SDXL pipeline reads two"):
        learn_word(xl, SCENES, WORD, init_word="square", steps=1, progress=False)


def test_a_word_already_taught_is_refused_with_how_to_go_on(taught):
    pipe = taught[0]
    before = snapshot(pipe)
    for word in (WORD, WORD.upper()):  # CLIP reads text in lower case: <HOUSE> is the word <house>
        with pytest.raises(ValueError, match=r"was already added to this tokenizer .*pick a new word, e.g. '<.*-2>', or start again"):
            learn_word(pipe, SCENES, word, init_word="square", steps=1, progress=False)
    assert_untouched(pipe, before)


def test_an_interrupted_training_leaves_the_pipeline_as_it_was_and_can_be_retried(monkeypatch):
    pipe = isd.load_pipeline()
    vocabulary, table = len(pipe.tokenizer), pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    losses = []

    def interrupted(*args, **kwargs):
        losses.append(1)
        if len(losses) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the second step
        return diffusion_loss(*args, **kwargs)

    monkeypatch.setattr(textual_inversion, "diffusion_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        learn_word(pipe, SCENES, WORD, init_word="square", steps=3, batch_size=1, progress=False)
    monkeypatch.undo()
    assert len(losses) == 2 and len(pipe.tokenizer) == vocabulary and WORD not in pipe.tokenizer.get_added_vocab()
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, table)
    assert not pipe.text_encoder.get_input_embeddings()._forward_hooks  # the hook is gone
    assert all(p.requires_grad for p in pipe.unet.parameters())
    learned = learn_word(pipe, SCENES, WORD, init_word="square", steps=1, batch_size=1, progress=False)  # the retry works
    assert learned["token_id"] == vocabulary and pipe.tokenizer.tokenize(f"a {WORD}") == ["a</w>", WORD]


def test_a_new_word_never_changes_how_other_words_are_read():
    """A plain-letter word is read only where it stands alone: learning "ircl" must not cut "circle" into c·ircl·e."""
    pipe = isd.load_pipeline()
    before = pipe.tokenizer.tokenize("a red circle on the left")
    assert len(pipe.tokenizer.tokenize("ircl")) == 2  # not yet a token of its own
    learn_word(pipe, concept_scenes("house", 2, placeholder="ircl"), "ircl", init_word="square", steps=1, batch_size=1, progress=False)
    assert pipe.tokenizer.tokenize("a red circle on the left") == before
    assert pipe.tokenizer.tokenize("a red ircl") == ["a</w>", "red</w>", "ircl"]
