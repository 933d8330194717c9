"""CLIP byte-level BPE tokenizer (OpenAI `SimpleTokenizer` semantics) and the ProST padding rule.

Torch-free on purpose: the Triton python backend imports this module, so it may use only numpy, regex, ftfy and the
standard library.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import numbers
from collections.abc import Iterable, Sequence

import ftfy
import numpy as np
import regex

from prost.errors import ConfigError

__all__ = ["Tokenizer", "get_tokenizer", "tokenize"]

_VOCAB_ASSET = "assets/bpe_simple_vocab_16e6.txt.gz"
_SOT = "<|startoftext|>"
_EOT = "<|endoftext|>"
_END_OF_WORD = "</w>"
# 256 byte symbols, their 256 end-of-word forms, the merges, then SOT and EOT: 49408 ids in all.
_N_MERGES = 49408 - 2 * 256 - 2
_WORD_CACHE_SIZE = 1 << 16

_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


def _byte_symbols() -> dict[int, str]:
    """Map each byte to a printable character, so BPE never sees whitespace or control bytes; the insertion order
    (printable bytes first, the rest shifted past U+00FF) is the order of ids 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    shifted = [b for b in range(256) if b not in symbols]
    symbols.update((b, chr(256 + n)) for n, b in enumerate(shifted))
    return symbols


def _clean(text: str) -> str:
    """Normalise a caption as CLIP does: ftfy, HTML unescape twice, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class Tokenizer:
    """CLIP BPE tokenizer over the 49408-id vocabulary shipped in `prost/assets`."""

    def __init__(self) -> None:
        asset = importlib.resources.files("prost").joinpath(_VOCAB_ASSET)
        lines = gzip.decompress(asset.read_bytes()).decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
        byte_symbols = _byte_symbols()
        self._byte_symbol = [byte_symbols[b] for b in range(256)]
        self._symbol_byte = {s: b for b, s in byte_symbols.items()}
        vocab = [*byte_symbols.values()] + [s + _END_OF_WORD for s in byte_symbols.values()]
        vocab += ["".join(m) for m in merges] + [_SOT, _EOT]
        self._encoder = {symbol: i for i, symbol in enumerate(vocab)}
        self._decoder = dict(enumerate(vocab))
        self._ranks = {m: r for r, m in enumerate(merges)}
        self.sot_id: int = self._encoder[_SOT]
        self.eot_id: int = self._encoder[_EOT]
        self.vocab_size: int = len(vocab)
        self._word_ids = functools.lru_cache(maxsize=_WORD_CACHE_SIZE)(self._bpe)

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-token: merge the lowest-ranked adjacent pair everywhere until no pair has a rank."""
        if word in (_SOT, _EOT):
            return (self._encoder[word],)
        symbols = [self._byte_symbol[b] for b in word.encode("utf-8")]
        symbols[-1] += _END_OF_WORD
        ranks = self._ranks
        while len(symbols) > 1:
            best = min(zip(symbols, symbols[1:]), key=lambda pair: ranks.get(pair, _N_MERGES))  # unranked last
            if best not in ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if symbols[i] == first and i + 1 < len(symbols) and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(self._encoder[s] for s in symbols)

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text`, without SOT/EOT."""
        ids: list[int] = []
        for word in _PATTERN.findall(_clean(text)):
            ids.extend(self._word_ids(word))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; as in the reference, every word is followed by a space and invalid UTF-8 becomes U+FFFD."""
        try:
            symbols = "".join(self._decoder[i] for i in ids)
        except KeyError as err:
            raise ValueError(f"token id {err.args[0]!r} is outside the vocabulary [0, {self.vocab_size})") from None
        raw = bytes(self._symbol_byte[c] for c in symbols)
        return raw.decode("utf-8", errors="replace").replace(_END_OF_WORD, " ")

    def tokenize(self, texts: str | Sequence[str], context_length: int = 32) -> np.ndarray:
        """int32 [B, context_length]: SOT, the first context_length - 2 BPE ids, EOT, then zeros."""
        if isinstance(context_length, bool) or not isinstance(context_length, numbers.Integral) or context_length < 2:
            raise ConfigError(f"context_length must be an integer >= 2 (room for SOT and EOT), got {context_length!r}")
        if isinstance(texts, str):
            items: list[str] = [texts]
        elif isinstance(texts, Iterable) and not isinstance(texts, (bytes, bytearray)):
            items = list(texts)
        else:
            raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise TypeError(f"texts[{index}] must be a str, got {type(item).__name__}")
        width = int(context_length)
        out = np.zeros((len(items), width), dtype=np.int32)
        for row, text in enumerate(items):
            ids = [self.sot_id, *self.encode(text)[: width - 2], self.eot_id]
            out[row, : len(ids)] = ids
        return out


@functools.cache
def get_tokenizer() -> Tokenizer:
    """The process-wide tokenizer, built on first use."""
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = 32) -> np.ndarray:
    """Tokenize one caption or a batch into int32 [B, context_length] with the ProST padding rule."""
    return get_tokenizer().tokenize(texts, context_length)
