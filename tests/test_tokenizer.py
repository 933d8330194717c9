"""Tests of the torch-free CLIP BPE tokenizer and the ProST padding rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prost.errors import ConfigError
from prost.tokenizer import Tokenizer, get_tokenizer, tokenize

SOT, EOT = 49406, 49407

# Computed once with OpenAI's SimpleTokenizer as shipped in clip-anytorch 2.6.0 (clip/simple_tokenizer.py),
# with ftfy 6.3.1 and regex 2026.11.19.
PINNED = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "A man is playing a GUITAR on stage!!!": [320, 786, 533, 1629, 320, 5084, 525, 2170, 995],
    "don't stop, it's 2024": [847, 713, 1691, 267, 585, 568, 273, 271, 273, 275],
    "&amp;amp; café 日本 😀": [261, 15304, 39121, 19277, 361, 7334],
    "  Tabs\tand\nnewlines  ": [29163, 537, 1218, 3418],
    "unbelievably": [33781],
    "<|endoftext|>": [EOT],
}
LONG = "the quick brown fox jumps over the lazy dog " * 10  # 90 BPE ids


@pytest.mark.parametrize("text", list(PINNED))
def test_encode_matches_reference_ids(text: str) -> None:
    assert get_tokenizer().encode(text) == PINNED[text]


def test_vocabulary_layout() -> None:
    tok = get_tokenizer()
    assert (tok.vocab_size, tok.sot_id, tok.eot_id) == (49408, SOT, EOT)
    assert get_tokenizer() is tok


@pytest.mark.parametrize("width", [2, 8, 32, 77])
def test_padding_rule(width: int) -> None:
    text = "a photo of a cat"
    ids = PINNED[text][: width - 2]
    row = tokenize(text, context_length=width)[0]
    assert row[0] == SOT
    assert row[len(ids) + 1] == EOT
    assert row[1 : len(ids) + 1].tolist() == ids
    assert not row[len(ids) + 2 :].any()


def test_truncation_keeps_eot_last() -> None:
    ids = get_tokenizer().encode(LONG)
    assert len(ids) == 90
    row = tokenize(LONG, context_length=32)[0]
    assert row.tolist() == [SOT, *ids[:30], EOT]
    assert row[31] == EOT


def test_dtype_and_shape() -> None:
    out = tokenize(["a", "b c", ""], context_length=16)
    assert out.dtype == np.int32
    assert out.shape == (3, 16)
    assert tokenize("a").shape == (1, 32)
    assert tokenize([]).shape == (0, 32)


def test_empty_string() -> None:
    assert tokenize("", context_length=6)[0].tolist() == [SOT, EOT, 0, 0, 0, 0]
    assert tokenize("  \n\t ", context_length=4)[0].tolist() == [SOT, EOT, 0, 0]


def test_batch_equals_per_item() -> None:
    texts = [*PINNED, LONG, "", "Another CAPTION, with punctuation..."]
    batch = tokenize(texts, context_length=24)
    for row, text in zip(batch, texts):
        assert row.tolist() == tokenize(text, context_length=24)[0].tolist()


@pytest.mark.parametrize("text", ["a photo of a cat", "two dogs run on the beach at sunset", "hello world"])
def test_decode_round_trip(text: str) -> None:
    tok = get_tokenizer()
    # Like the reference, decode ends every word with a space.
    assert tok.decode(tok.encode(text)) == text + " "


def test_decode_rejects_unknown_id() -> None:
    with pytest.raises(ValueError, match="49408"):
        get_tokenizer().decode([320, 49408])


@pytest.mark.parametrize("width", [1, 0, -3])
def test_context_length_too_small(width: int) -> None:
    with pytest.raises(ConfigError, match="context_length"):
        tokenize("a cat", context_length=width)


def test_non_string_item_names_index() -> None:
    with pytest.raises(TypeError, match=r"texts\[2\]"):
        tokenize(["a", "b", 3, "d"])
    with pytest.raises(TypeError, match="str"):
        tokenize(5)  # type: ignore[arg-type]


def test_tokenizer_class_is_independent_of_singleton() -> None:
    assert Tokenizer().encode(LONG) == get_tokenizer().encode(LONG)


def test_import_does_not_load_torch() -> None:
    code = "import prost.tokenizer, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=Path(__file__).parents[1])
