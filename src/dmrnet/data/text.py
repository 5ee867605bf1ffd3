"""Text as a sequence modality: a word tokenizer and a vocabulary fitted on the training
split, so text works with no extra package. A text item is its token ids (T_i,) (float32, as
every input; whole numbers), at most ``max_tokens`` of them; the collate pads them with the
padding id 0 and carries the lengths (:class:`~dmrnet.batch.Batch`).

Ids: 0 = padding, 1 = a word the vocabulary does not hold, 2.. = the training split's words,
most frequent first (ties alphabetical), at most ``VOCABULARY_SIZE`` ids in all.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dmrnet.batch import VOCABULARY_SIZE
from dmrnet.data.base import DataError
from dmrnet.data.io import read_text

PAD, UNKNOWN = 0, 1
WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def words(text: str, lowercase: bool = True) -> list[str]:
    """Words and punctuation marks of ``text``, in order (lower-cased by default)."""
    return WORDS.findall(text.lower() if lowercase else text)


@dataclass(frozen=True)
class Vocabulary:
    """Word -> id, fitted on training texts; stored with a model as plain lists.

    Attributes:
        words: the words of ids 2, 3, ... in order.
        lowercase: lower-case text before looking words up.
        max_tokens: T, the most tokens a text keeps (its first ones).
    """

    words: tuple[str, ...]
    lowercase: bool = True
    max_tokens: int = 128
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.words) + 2 > VOCABULARY_SIZE:
            raise DataError(f"a vocabulary holds at most {VOCABULARY_SIZE - 2} words; got "
                            f"{len(self.words)}")
        if self.max_tokens < 1:
            raise DataError(f"max_tokens must be at least 1; got {self.max_tokens}")
        object.__setattr__(self, "index", {w: i + 2 for i, w in enumerate(self.words)})

    @classmethod
    def fit(cls, texts: Iterable[str], max_words: int = VOCABULARY_SIZE - 2,
            min_count: int = 1, lowercase: bool = True, max_tokens: int = 128) -> Vocabulary:
        """The ``max_words`` most frequent words seen at least ``min_count`` times."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(words(text, lowercase))
        kept = sorted((w for w, c in counts.items() if c >= min_count),
                      key=lambda w: (-counts[w], w))[: max(0, int(max_words))]
        return cls(tuple(kept), lowercase=lowercase, max_tokens=int(max_tokens))

    def ids(self, text: str) -> Tensor:
        """(T_i,) float32 token ids of ``text``, 1 <= T_i <= max_tokens (a text with no word
        is one unknown-word id)."""
        found = [self.index.get(w, UNKNOWN) for w in words(text, self.lowercase)]
        return torch.tensor(found[: self.max_tokens] or [UNKNOWN], dtype=torch.float32)

    def to_dict(self) -> dict[str, Any]:
        """What a model folder stores (``preprocessing: {modality: {"vocabulary": ...}}``)."""
        return {"vocabulary": list(self.words), "lowercase": self.lowercase,
                "max_tokens": self.max_tokens}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any], where: str = "preprocessing") -> Vocabulary:
        """The vocabulary :meth:`to_dict` wrote (a DataError names what is malformed)."""
        vocab = stored.get("vocabulary")
        if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab) or \
                len(set(vocab)) != len(vocab):
            raise DataError(f"{where}: vocabulary must be a list of distinct words")
        tokens, lower = stored.get("max_tokens", 128), stored.get("lowercase", True)
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1 or \
                not isinstance(lower, bool):
            raise DataError(f"{where}: max_tokens must be a whole number >= 1 and lowercase "
                            "true or false")
        return cls(tuple(vocab), lowercase=lower, max_tokens=tokens)


def read_words(path: Path) -> str:
    """A UTF-8 text file's content (a DataError names an unreadable file)."""
    return read_text(path, "text file")


def fit_vocabulary(paths: Sequence[Path], **options: Any) -> Vocabulary:
    """A :class:`Vocabulary` fitted on the text files ``paths`` (the training split's)."""
    return Vocabulary.fit((read_words(p) for p in paths), **options)


@dataclass(frozen=True)
class PretrainedTokenizer:
    """A Hugging Face tokenizer from a local folder (``AutoTokenizer``, ``local_files_only``;
    needs transformers): the ids of its own vocabulary with its special tokens, the first
    ``max_tokens`` of them, for a pretrained text encoder of the same folder."""

    path: str
    max_tokens: int = 128
    tokenizer: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        folder = Path(self.path).expanduser()
        if not folder.is_dir() or (not any(folder.glob("tokenizer*.json")) and \
                not (folder / "vocab.txt").is_file()):
            raise DataError(f"tokenizer {self.path!r} is not a local tokenizer folder "
                            "(tokenizer.json or vocab.txt, as save_pretrained writes them); "
                            "nothing is downloaded")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 2:
            raise DataError(f"max_tokens must be at least 2 with a tokenizer; got "
                            f"{self.max_tokens!r}")
        try:
            from transformers import AutoTokenizer
        except ImportError as err:
            raise DataError("a tokenizer folder needs transformers: pip install "
                            "'dmrnet[hf]' (after torch)") from err
        object.__setattr__(self, "tokenizer",
                           AutoTokenizer.from_pretrained(folder, local_files_only=True))

    def ids(self, text: str) -> Tensor:
        """(T_i,) float32 token ids of ``text`` with the tokenizer's special tokens."""
        found = self.tokenizer(text, truncation=True, max_length=self.max_tokens)["input_ids"]
        return torch.tensor(found or [self.tokenizer.unk_token_id or 0], dtype=torch.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer": str(self.path), "max_tokens": self.max_tokens}


def text_reader(stored: Mapping[str, Any], where: str = "preprocessing"
                ) -> Vocabulary | PretrainedTokenizer:
    """What reads a text modality's raw text, from what a model stores (``vocabulary`` or
    ``tokenizer``)."""
    if "tokenizer" in stored:
        tokens = stored.get("max_tokens", 128)
        if not isinstance(stored["tokenizer"], str) or not isinstance(tokens, int):
            raise DataError(f"{where}: tokenizer must be a folder and max_tokens a number")
        return PretrainedTokenizer(stored["tokenizer"], tokens)
    return Vocabulary.from_dict(stored, where)


def is_text(stored: Any) -> bool:
    """Whether a modality's stored preprocessing is a text reader's."""
    return isinstance(stored, Mapping) and ("vocabulary" in stored or "tokenizer" in stored)
