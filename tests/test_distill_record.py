"""What `benchmarks/distill.py` writes: its decisions (the schedule, the whole-layer gates) and the
ablation table read from the record's figures, never typed in."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import distill

from conformer_prune.data.features import FeatureConfig, LogMelFeatures
from conformer_prune.data.tokenizer import Tokenizer, TokenizerConfig
from conformer_prune.model import Recognizer, build_model, save_recognizer
from tests.conftest import hetero_config


def _row(run: str, dev: float, test: float) -> dict[str, Any]:
    interval = {"delta": test - 0.14, "low": test - 0.145, "high": test - 0.135}
    return {
        "run": run,
        "wer_dev": dev,
        "wer_test": test,
        "wer_test_unseen": 0.4,
        "params": 1,
        "grad_norms": {},
        "wer_test_vs_reference": interval,
    }


def _record(prune1_dev: float) -> dict[str, Any]:
    versus = {"delta": 0.01, "low": 0.005, "high": 0.015, "utterances": 10, "words": 100}
    return {
        "reference": "chosen",
        "chosen": ["kl", "frontend"],
        "splits": {"test": {"utterances": 10, "words": 100}},
        "runs": [
            _row("chosen", 0.15, 0.14),
            _row("chosen-without-kl", 0.152, 0.142),
            _row(distill.PRUNE1, prune1_dev, 0.138),
        ],
        "schedule": {
            "wer_dev": {"chosen": 0.15, distill.PRUNE1: prune1_dev},
            "prune1_chosen_on_dev": prune1_dev < 0.15,
            "test_vs_chosen": versus,
        },
        "at_50": {
            "run": distill.PRUNE1 if prune1_dev < 0.15 else "chosen",
            "wer_test_chosen": 0.138,
            "wer_test_continued": 0.13,
            "ratio": 0.138 / 0.13,
            "vs_continued": versus,
        },
        "commit": "abc",
        "command": "python benchmarks/distill.py --record",
    }


def test_the_schedule_taken_at_50_is_the_one_lower_on_dev_and_the_ablation_shows_each_choice() -> None:
    text = distill.section(_record(prune1_dev=0.148))
    assert (
        f"takes **{distill.PRUNE1}**" in text and f"At 50% of the parameters: {distill.PRUNE1} 13.80%" in text
    )
    assert "| kl | 15.20% | +0.20 | 14.20% |" in text  # switched off: what the choice was worth on dev
    assert "(1 of 2 run so far)" in text  # frontend's ablation is not in the record yet
    other = distill.section(_record(prune1_dev=0.151))
    assert "takes **chosen (2 + 1)**" in other and "At 50% of the parameters: chosen 13.80%" in other
    at_30 = copy.deepcopy(_record(0.148))
    at_30["schedule"] |= {
        "wer_dev_30": {"chosen-30": 0.19, distill.PRUNE1_30: 0.18},
        "test_vs_chosen_30": {"delta": -0.01, "low": -0.015, "high": -0.005},
    }
    assert f"At 30%: {distill.PRUNE1_30} 18.00% dev WER against chosen-30's 19.00%" in distill.section(at_30)
    unablated = copy.deepcopy(_record(0.148))
    unablated["runs"] = [r for r in unablated["runs"] if not r["run"].startswith("chosen-without-")]
    assert "Ablation" not in distill.section(unablated)


def test_the_claims_against_continued_take_the_split_chosen_at_50_at_both_targets() -> None:
    both = {"chosen", "chosen-30", distill.PRUNE1, distill.PRUNE1_30}
    assert distill.compared_runs(_record(prune1_dev=0.148), both) == {
        "at_50": distill.PRUNE1,
        "at_30": distill.PRUNE1_30,
    }
    assert distill.compared_runs(_record(prune1_dev=0.148), both - {distill.PRUNE1_30}) == {
        "at_50": distill.PRUNE1,
        "at_30": "chosen-30",  # until the 30% run of that split has finished
    }
    assert distill.compared_runs(_record(prune1_dev=0.151), both) == {"at_50": "chosen", "at_30": "chosen-30"}


def test_a_block_with_nothing_left_is_counted_empty_whichever_gates_emptied_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(["HELLO WORLD", "A CAT SAT"], TokenizerConfig(vocab_size=20))
    shape = dict(heads=[4, 0, 0], ffn1=[64, 0, 16], ffn2=[0, 0, 8], conv_channels=[32, 0, 0])
    model = build_model(hetero_config(vocab_size=tokenizer.vocab_size, **shape)).eval()
    save_recognizer(
        tmp_path / "model.pt", Recognizer(model, LogMelFeatures(FeatureConfig()).eval(), tokenizer)
    )
    assert distill.emptied_blocks(tmp_path) == [1]  # block 2 keeps two feed-forward modules
