"""SentencePiece tokenizer trained on the training transcripts and stored inside checkpoints."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import sentencepiece as spm

__all__ = ["Tokenizer", "TokenizerConfig", "TokenizerError"]


class TokenizerError(ValueError):
    """A transcript holds a character the tokenizer cannot encode."""


@dataclass
class TokenizerConfig:
    """Args:
    vocab_size: number of pieces (the CTC blank comes on top, as the last index).
    model_type: SentencePiece algorithm.
    """

    vocab_size: int = 128
    model_type: Literal["unigram", "bpe"] = "unigram"


class Tokenizer:
    """A SentencePiece model with an unknown-character check.

    Piece 0 is `<unk>`; no BOS/EOS/PAD pieces. Encoding a text with a character outside the
    training alphabet raises `TokenizerError` instead of silently emitting `<unk>`. When the
    alphabet has letters of one case only, text is folded to that case first.
    """

    def __init__(self, model_proto: bytes) -> None:
        self._proto = model_proto
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except (RuntimeError, TypeError) as err:
            raise TokenizerError(f"not a SentencePiece model ({err})") from err
        self.alphabet = {
            ch
            for i in range(self._sp.get_piece_size())
            if not self._sp.is_unknown(i)
            for ch in self._sp.id_to_piece(i)
        }
        self.alphabet.discard("▁")  # SentencePiece's word-boundary marker stands for a space
        # transcripts are folded to a one-case tokenizer's case: NeMo's English models are
        # lower-case, LibriSpeech transcripts upper-case
        lower = any(ch.islower() for ch in self.alphabet)
        upper = any(ch.isupper() for ch in self.alphabet)
        self.case: str | None = "lower" if lower and not upper else "upper" if upper and not lower else None

    @classmethod
    def train(cls, texts: Iterable[str], config: TokenizerConfig) -> Tokenizer:
        """Train on transcripts. A small corpus may yield fewer pieces than asked for."""
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)),
            model_writer=buffer,
            vocab_size=config.vocab_size,
            model_type=config.model_type,
            character_coverage=1.0,
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        return cls(buffer.getvalue())

    def to_bytes(self) -> bytes:
        return self._proto

    @property
    def pieces(self) -> list[str]:
        """The vocabulary: piece of each token id."""
        return [str(self._sp.id_to_piece(i)) for i in range(self.vocab_size)]

    @property
    def vocab_size(self) -> int:
        """Pieces, without the CTC blank."""
        return int(self._sp.get_piece_size())

    def fold(self, text: str) -> str:
        """`text` in the tokenizer's case (unchanged for a tokenizer of both cases)."""
        return text.lower() if self.case == "lower" else text.upper() if self.case == "upper" else text

    def unspellable(self, text: str) -> list[str]:
        """The characters of `text` (after case folding) that no piece contains, sorted."""
        return sorted({ch for ch in self.fold(text) if ch != " " and ch not in self.alphabet})

    def encode(self, text: str, where: str = "transcript") -> list[int]:
        """Token ids of `text`; `where` names the utterance in errors."""
        if not text.strip():
            raise TokenizerError(f"{where}: empty transcript; expected at least one word")
        text = self.fold(text)
        unknown = self.unspellable(text)
        if unknown:
            raise TokenizerError(
                f"{where}: characters {unknown} are not in the tokenizer's alphabet "
                f"({''.join(sorted(self.alphabet))})"
            )
        return list(self._sp.encode(text))

    def decode(self, ids: Iterable[int]) -> str:
        return str(self._sp.decode([int(i) for i in ids]))
