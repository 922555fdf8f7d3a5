"""Where the errors are (`conformer_prune.evaluate.breakdown`, `conformer-prune errors`): per-speaker
counts that add up to the corpus WER, and reference words split by whether training saw them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformer_prune.evaluate.breakdown import breakdown, by_speaker, by_vocabulary, count_errors, speaker_of
from conformer_prune.evaluate.metrics import error_rates
from tests.conftest import write_recogs

RECOGS = {
    "11-2-0001": ("THE CAT SAT", "THE HAT SAT"),  # speaker 11: one substitution
    "11-2-0002": ("ON THE MAT", "ON THE MAT"),
    "7-1-0001": ("A DOG RAN", "A DOG"),  # speaker 7: one deletion, one insertion
    "7-1-0002": ("far away", "FAR AWAY NOW"),  # scored upper-cased, as error_rates
}


def test_speaker_counts_add_up_to_the_corpus_and_each_is_its_own_wer() -> None:
    total = count_errors(list(RECOGS.values()))
    refs, hyps = zip(*RECOGS.values(), strict=True)
    assert (total.utterances, total.words) == (4, 11)
    assert (total.substitutions, total.deletions, total.insertions) == (1, 1, 1)
    assert total.wer == pytest.approx(error_rates(list(refs), list(hyps))["wer"])

    speakers = by_speaker(RECOGS)
    assert list(speakers) == ["7", "11"]  # worst first
    for speaker, counts in speakers.items():
        mine = [pair for utt, pair in RECOGS.items() if utt.startswith(f"{speaker}-")]
        assert counts.utterances == len(mine)
        assert counts.wer == pytest.approx(error_rates([r for r, _ in mine], [h for _, h in mine])["wer"])
    assert sum(c.words for c in speakers.values()) == total.words
    assert sum(c.substitutions + c.deletions + c.insertions for c in speakers.values()) == 3


def test_words_are_split_by_whether_the_training_text_has_them() -> None:
    vocab = by_vocabulary(RECOGS, known=["the", "cat", "sat", "on", "mat", "a", "dog", "far"])
    # unknown: RAN (deleted) and AWAY (right); known: HAT for CAT is the one error among 9
    assert vocab["unknown"] == {"words": 2, "errors": 1, "error_rate": 0.5}
    assert vocab["known"] == {"words": 9, "errors": 1, "error_rate": pytest.approx(1 / 9)}
    assert vocab["unknown_share"] == pytest.approx(2 / 11)
    assert vocab["insertions"] == 1
    everything = by_vocabulary(RECOGS, known=[])
    assert everything["known"]["words"] == 0 and everything["unknown"]["errors"] == 2


def test_a_speaker_comes_from_the_pattern_or_the_id_is_named() -> None:
    assert speaker_of("103-1240-0000") == "103"
    assert speaker_of("spk3_utt9", r"^(spk\d+)_") == "spk3"
    with pytest.raises(ValueError, match="'utt9' does not name a speaker"):
        speaker_of("utt9")
    with pytest.raises(ValueError, match="at least one"):
        count_errors([])


def test_errors_command_prints_and_writes_the_breakdown(tiny_corpus: Path, tmp_path: Path) -> None:
    from conformer_prune.cli import main
    from conformer_prune.data.corpus import read_corpus

    word = read_corpus(tiny_corpus / "train")[0].text.split()[0]  # a word training has
    path = tmp_path / "recogs-test.txt"
    lines = ["# run_id x", f"5-1-0001\tref={word} QQQZ", f"5-1-0001\thyp={word}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "errors.json"
    argv = ["errors", str(path), "--train", str(tiny_corpus / "train"), "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())[str(path)]
    assert result == json.loads(json.dumps(breakdown({"5-1-0001": (f"{word} QQQZ", word)}, [word])))
    assert result["vocabulary"]["unknown"] == {"words": 1, "errors": 1, "error_rate": 1.0}
    assert result["speakers"]["5"]["wer"] == 0.5
    assert main(argv) == 2  # an existing --json is kept unless --force
    assert main(["errors", str(tmp_path / "missing.txt")]) == 2


def test_compare_command_gives_each_shared_split_both_wers_and_the_paired_interval(tmp_path: Path) -> None:
    """`conformer-prune compare A B`: per split both directories hold, each system's WER, the split's
    size and B minus A with its paired-bootstrap interval; mismatched utterances are an error."""
    from conformer_prune.cli import main

    refs = [f"THE CAT SAT ON THE MAT {i}" for i in range(40)]  # 7 words each
    worse = [r if i % 2 else r.replace("CAT", "HAT") for i, r in enumerate(refs)]  # 20 substitutions
    for split in ("dev", "test"):
        write_recogs(tmp_path / "a" / f"recogs-{split}.txt", list(zip(refs, refs, strict=True)))
        write_recogs(tmp_path / "b" / f"recogs-{split}.txt", list(zip(refs, worse, strict=True)))
    write_recogs(tmp_path / "a" / "recogs-only-a.txt", [("A", "A")])  # not in b: not compared
    out = tmp_path / "cmp.json"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json", str(out)]) == 0
    splits = json.loads(out.read_text())["splits"]
    assert sorted(splits) == ["dev", "test"]
    dev = splits["dev"]
    assert (dev["utterances"], dev["words"], dev["wer_a"]) == (40, 280, 0.0)
    assert dev["wer_b"] == pytest.approx(20 / 280)
    assert dev["b_minus_a"]["delta"] == pytest.approx(dev["wer_b"] - dev["wer_a"])
    assert 0 < dev["b_minus_a"]["low"] < dev["b_minus_a"]["delta"] < dev["b_minus_a"]["high"]
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json", str(out)]) == 2  # kept
    one = tmp_path / "a" / "recogs-dev.txt"
    assert main(["compare", str(one), str(tmp_path / "b")]) == 2  # a file against a directory
    assert main(["compare", str(tmp_path / "missing"), str(tmp_path / "b")]) == 2
    write_recogs(tmp_path / "c" / "recogs-dev.txt", list(zip(refs[:-1], refs[:-1], strict=True)))
    assert main(["compare", str(one), str(tmp_path / "c" / "recogs-dev.txt")]) == 2  # other utterances
