import pytest
from transformers import CLIPTokenizer

from illustrated_sd.paths import CLIP_TOKENIZER
from illustrated_sd.loops.text import readable, tokenize_prompt

from .conftest import PROMPT


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(CLIP_TOKENIZER)


def test_shipped_tokenizer_is_clips(tokenizer):
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    # ids from OpenAI's CLIP for a classic prompt (scripts/convert_clip_tokenizer.py checks more against open_clip)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_tokens_are_readable_and_padded_to_77(tokenizer):
    tokenized = tokenize_prompt(tokenizer, PROMPT)
    assert tokenized.input_ids.shape == (1, 77)
    assert tokenized.tokens == ["<|startoftext|>", "a", "red", "circle", "on", "the", "left", "<|endoftext|>"]
    assert tokenized.truncated_text == ""
    assert readable("circle</w>") == "circle" and readable("cyber") == "cyber"


@pytest.mark.filterwarnings("ignore:the model never saw")
def test_long_prompt_warns_with_the_dropped_words(tokenizer, pipe):
    prompt = " ".join(["red circle"] * 37) + " and a purple elephant"
    with pytest.warns(UserWarning, match=r"dropped: \[.*'purple', 'elephant'\]"):
        tokenized = tokenize_prompt(tokenizer, prompt)
    assert tokenized.truncated_text.endswith("purple elephant")
    assert len(tokenized.tokens) == 77 and tokenized.tokens[-1] == "<|endoftext|>"
    with pytest.warns(UserWarning, match="dropped"):
        trace = pipe(prompt, num_inference_steps=1, progress=False)
    assert trace.truncated_text.endswith("purple elephant")
