"""CTC beam search with an optional word n-gram language model (flashlight-text with KenLM).

Usage:
    conformer-prune transcribe runs/pruned-50/model.pt a.flac --beam 50 --lm lm.arpa --lm-weight 0.5
    conformer-prune evaluate runs/pruned-50/model.pt --data corpus/test --beam 50 --lm lm.arpa

The search is flashlight-text's `LexiconDecoder` (the decoder behind torchaudio's `ctc_decoder`
and fairseq's KenLM decoding): words are spelled with our SentencePiece tokenizer into a trie, and
each completed word scores ``lm_weight * log P_LM(word | history) + word_score``. The vocabulary
is the LM's own (its 1-grams) unless a lexicon (one word per line) is given; a KenLM binary
(``.bin``) needs one, since its words cannot be listed without KenLM's Python module. The
vocabulary is closed: a word outside it cannot be recognised. Without an LM, ``--beam`` runs
flashlight-text's lexicon-free prefix beam search over tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conformer_prune.data.tokenizer import Tokenizer, TokenizerError

__all__ = ["BeamSearchConfig", "BeamSearchDecoder", "arpa_unigrams"]

_BLANK = "<blk>"


@dataclass
class BeamSearchConfig:
    """Args:
    beam: hypotheses kept per frame.
    lm: a word n-gram LM, ARPA (``.arpa``) or KenLM binary (``.bin``); None for no LM.
    lm_weight: weight of the LM's natural-log probability.
    word_score: added per word (the word-insertion bonus; negative penalises words).
    lexicon: words the decoder may output, one per line (default: the ARPA file's 1-grams).
    beam_threshold: hypotheses scoring this much below the best are pruned.
    """

    beam: int = 50
    lm: Path | None = None
    lm_weight: float = 0.5
    word_score: float = 0.0
    lexicon: Path | None = None
    beam_threshold: float = 25.0

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError(f"beam must be a positive number of hypotheses, found {self.beam}")
        if self.lm is not None:
            self.lm = Path(self.lm)
            if self.lm.suffix not in (".arpa", ".bin"):
                raise ValueError(f"--lm {self.lm}: expected an ARPA (.arpa) or KenLM binary (.bin) file")
            if not self.lm.is_file():
                raise FileNotFoundError(f"language model {self.lm} does not exist")
            if self.lm.suffix == ".bin" and self.lexicon is None:
                raise ValueError(f"--lm {self.lm}: a KenLM binary needs --lexicon (its words, one per line)")
        if self.lexicon is not None:
            self.lexicon = Path(self.lexicon)
            if not self.lexicon.is_file():
                raise FileNotFoundError(f"lexicon {self.lexicon} does not exist")


def arpa_unigrams(path: str | Path) -> list[str]:
    """The words of an ARPA file's 1-gram section, without ``<s>``, ``</s>`` and ``<unk>``."""
    words: list[str] = []
    section = False
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if line == "\\1-grams:":
                section = True
            elif section and (line.startswith("\\") or not line):
                if line.startswith("\\"):
                    break
            elif section:
                fields = line.split()
                if len(fields) < 2:
                    raise ValueError(
                        f"{path}:{number}: expected '<log10 prob> <word> [backoff]', found {line!r}"
                    )
                if fields[1] not in ("<s>", "</s>", "<unk>"):
                    words.append(fields[1])
    if not section:
        raise ValueError(f"{path}: no \\1-grams: section; expected an ARPA language model")
    return words


class BeamSearchDecoder:
    """CTC beam search over log-probabilities (T, V) of a model whose blank is the last index.

    Args:
        tokenizer: the model's tokenizer (spells the lexicon's words).
        config: beam size, LM and weights.
    """

    def __init__(self, tokenizer: Tokenizer, config: BeamSearchConfig) -> None:
        from flashlight.lib.text import decoder as fl
        from flashlight.lib.text.dictionary import Dictionary, create_word_dict

        self.config = config
        self.tokenizer = tokenizer
        pieces = tokenizer.pieces
        self.blank = len(pieces)
        tokens = Dictionary()
        for piece in [*pieces, _BLANK]:
            tokens.add_entry(piece)
        beam_token = min(config.beam, len(pieces) + 1)
        if config.lm is None:
            options = fl.LexiconFreeDecoderOptions(
                config.beam, beam_token, config.beam_threshold, 0.0, 0.0, False, fl.CriterionType.CTC
            )
            # silence is the blank: SentencePiece marks word boundaries inside pieces
            self._decoder: Any = fl.LexiconFreeDecoder(options, fl.ZeroLM(), self.blank, self.blank, [])
            self._lexicon = False
            return
        words = (
            [w for w in config.lexicon.read_text(encoding="utf-8").split()]
            if config.lexicon
            else arpa_unigrams(config.lm)
        )
        spelled: dict[str, list[list[str]]] = {}
        for word in dict.fromkeys(words):
            try:
                ids = tokenizer.encode(word, where=f"lexicon word {word!r}")
            except TokenizerError:
                continue  # a word the model cannot spell can never be output
            spelled[word] = [[pieces[i] for i in ids]]
        if not spelled:
            raise ValueError(
                f"none of the {len(words)} words of {config.lm} can be spelled with the model's tokens"
            )
        # the word dictionary must hold <unk> (flashlight-text's default entry); the trie does not
        self.words = create_word_dict({**spelled, "<unk>": [["<unk>"]]})
        from flashlight.lib.text.decoder.kenlm import KenLM

        lm = KenLM(str(config.lm), self.words)
        trie = fl.Trie(len(pieces) + 1, self.blank)
        start = lm.start(False)
        for word, spellings in spelled.items():
            index = self.words.get_index(word)
            _, score = lm.score(start, index)
            for spelling in spellings:
                trie.insert([tokens.get_index(p) for p in spelling], index, score)
        trie.smear(fl.SmearingMode.MAX)
        options = fl.LexiconDecoderOptions(
            config.beam,
            beam_token,
            config.beam_threshold,
            config.lm_weight,
            config.word_score,
            -math.inf,  # unknown words: the vocabulary is closed
            0.0,
            False,
            fl.CriterionType.CTC,
        )
        unk = self.words.get_index("<unk>")
        self._decoder = fl.LexiconDecoder(options, trie, lm, self.blank, self.blank, unk, [], False)
        self._lexicon = True

    def decode_one(self, log_probs: np.ndarray) -> str:
        """The best hypothesis for one utterance's log-probabilities (T, V)."""
        emissions = np.ascontiguousarray(log_probs, dtype=np.float32)
        if emissions.ndim != 2 or emissions.shape[1] != self.blank + 1:
            raise ValueError(f"expected log-probabilities (T, {self.blank + 1}), found {emissions.shape}")
        frames, vocab = emissions.shape
        if frames == 0:
            return ""
        best = self._decoder.decode(emissions.ctypes.data, frames, vocab)[0]
        if self._lexicon:
            return " ".join(self.words.get_entry(w) for w in best.words if w >= 0)
        ids, previous = [], -1
        for t in best.tokens:  # merge repeats, drop blanks
            if t != previous and t != self.blank and t >= 0:
                ids.append(int(t))
            previous = t
        return self.tokenizer.decode(ids)

    def decode(self, log_probs: np.ndarray, lengths: np.ndarray) -> list[str]:
        """Hypotheses of a padded batch: log-probabilities (B, T, V), lengths (B,)."""
        return [self.decode_one(row[: int(n)]) for row, n in zip(log_probs, lengths, strict=True)]
