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
        "ablation": [
            {
                "choice": "kl",
                "run": "chosen-without-kl",
                "base": "chosen",
                "precision": "bf16",
                "wer_dev": 0.152,
                "wer_test": 0.142,
                "wer_dev_base": 0.15,
                "wer_test_base": 0.14,
                "test_vs_base": versus,
            }
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
    assert "| kl | bf16 | 15.20% | +0.20 | 14.20% |" in text  # switched off: its worth on dev
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
    unablated["ablation"] = []
    assert "Ablation" not in distill.section(unablated)


def test_each_ablation_run_is_measured_against_the_base_of_its_own_precision(monkeypatch: Any) -> None:
    def report(dev: float, test: float) -> dict[str, Any]:
        return {"pruned": {"wer_dev": dev, "wer_test": test}}

    interval = {"delta": 0.01, "low": 0.005, "high": 0.015}
    monkeypatch.setattr(
        distill, "versus", lambda a, b, split: {"a": a.name, "b": b.name, "split": split, **interval}
    )
    fp32 = distill.FP32
    reports = {
        "chosen": report(0.15, 0.14),
        fp32: report(0.16, 0.15),
        "chosen-without-kl": report(0.152, 0.142),  # bf16, preferred where both finished
        f"{fp32}-without-kl": report(0.17, 0.16),
        f"{fp32}-without-frontend": report(0.165, 0.155),  # fp32 alone: against chosen-fp32
        "chosen-without-dynamic": report(0.151, 0.141),  # an old record's (WER alone): left out
    }
    targets = {name: Path(name) for name in reports}
    bf16_kl = {"a": "chosen", "b": "chosen-without-kl", "split": "test", **interval}  # its row's
    rows = distill.ablation_rows(
        ["kl", "frontend", "dynamic", "l1-cosine"],
        reports,
        targets,
        old={"chosen-without-dynamic"},
        vs_reference={"chosen-without-kl": bf16_kl},
    )
    assert [(r["choice"], r["base"], r["precision"]) for r in rows] == [
        ("kl", "chosen", "bf16"),
        ("frontend", fp32, "fp32"),
    ]
    assert rows[0]["test_vs_base"] == bf16_kl  # read from its row, not bootstrapped again
    assert rows[1]["test_vs_base"] == {
        "a": fp32,
        "b": f"{fp32}-without-frontend",
        "split": "test",
        **interval,
    }
    assert (rows[1]["wer_dev_base"], rows[1]["wer_test"]) == (0.16, 0.155)
    record = _record(prune1_dev=0.148) | {"ablation": rows}
    record["precision"] = {
        "run": fp32,
        "wer_test": 0.15,
        "chosen_bf16_seeds": {"mean": 0.1434, "spread": 0.0007},
        "vs_chosen": interval,
    }
    text = distill.section(record)
    assert f"| nothing ({fp32}) | fp32 | 16.00% | - | 15.00% | - |" in text
    assert "| frontend | fp32 | 16.50% | +0.50 | 15.50% |" in text
    assert f"Precision: `chosen` trained in fp32 ({fp32}) 15.00% test WER, against 14.34%" in text


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


def test_the_choice_takes_every_candidate_that_beat_base() -> None:
    """`chosen`: every candidate better than `base` on dev, of the layer distances the better one."""
    dev = {"base": 0.15, **dict.fromkeys(distill.CHOICES, 0.16)}
    dev |= {"l1-cosine": 0.140, "normalized-mse": 0.141, "dynamic": 0.142, "kl": 0.149}
    assert sorted(distill.chosen_choices(dev)) == ["dynamic", "kl", "l1-cosine"]


def test_forward_selection_adds_in_dev_order_what_lowers_dev_and_waits_for_each_run() -> None:
    """From the best candidate, each next one that beat `base` in dev order (never a second layer
    distance), kept only when the combination is below the best so far; it stops at the first
    combination not trained yet."""
    dev = {"base": 0.15, **dict.fromkeys(distill.CHOICES, 0.16)}
    dev |= {"l1-cosine": 0.140, "normalized-mse": 0.141, "dynamic": 0.142, "kl": 0.149}
    trained: dict[str, float] = {}
    tried_names: list[str] = []

    def combined(choices: list[str]) -> float | None:
        tried_names.append(distill.forward_name(choices))
        return trained.get(distill.forward_name(choices))

    assert distill.forward_selection(dev, combined) == (
        ["l1-cosine"],
        [(["l1-cosine", "dynamic"], None, False)],
    )
    trained["l1-cosine+dynamic"] = 0.1401  # not below l1-cosine's 0.140: dropped, kl tried on l1-cosine
    selected, tried = distill.forward_selection(dev, combined)
    assert selected == ["l1-cosine"]
    assert tried == [(["l1-cosine", "dynamic"], 0.1401, False), (["l1-cosine", "kl"], None, False)]
    trained["l1-cosine+kl"] = 0.135  # kept; nothing is left to add: the selection has ended
    selected, tried = distill.forward_selection(dev, combined)
    assert selected == ["l1-cosine", "kl"] and tried[-1] == (["l1-cosine", "kl"], 0.135, True)
    assert "l1-cosine+normalized-mse" not in tried_names  # never two layer distances
    assert all(distill.is_forward_name(n) for n in tried_names) and not distill.is_forward_name("chosen")
    dev = {"base": 0.10, **dict.fromkeys(distill.CHOICES, 0.16)}  # nothing beat base
    assert distill.forward_selection(dev, combined) == ([], [])


def _recognitions(run: Path, errors: int) -> Path:
    """A run directory whose dev and test recognitions get `errors` of 20 one-word utterances wrong."""
    run.mkdir()
    for split in ("dev", "test"):
        lines = [f"u{i}\tref=CAT\nu{i}\thyp={'DOG' if i < errors else 'CAT'}" for i in range(20)]
        (run / f"recogs-{split}.txt").write_text("\n".join(lines) + "\n")
    return run


def test_forward_selection_is_recorded_step_by_step(tmp_path: Path) -> None:
    """Each step: its dev WER, kept or dropped, and its difference from the selection it was added
    to, bootstrapped on that selection's recognitions."""
    dev = {
        "base": 0.15,
        **dict.fromkeys(distill.CHOICES, 0.16),
        "dynamic": 0.141,
        "kl": 0.145,
        "frontend": 0.146,
    }
    runs = {"dynamic": (0.141, 0.14, 4), "dynamic+kl": (0.143, 0.13, 6), "dynamic+frontend": (0.139, 0.12, 2)}
    reports = {n: {"pruned": {"wer_dev": d, "wer_test": t}} for n, (d, t, _) in runs.items()}
    targets = {n: _recognitions(tmp_path / n, errors) for n, (_, _, errors) in runs.items()}
    forward = {
        "selected": ["dynamic", "frontend"],
        "tried": [(["dynamic", "kl"], 0.143, False), (["dynamic", "frontend"], 0.139, True)],
        "ended": True,
    }
    record = distill.forward_record(forward, dev, reports, targets)
    assert record["start"] == {"choice": "dynamic", "wer_dev": 0.141, "wer_test": 0.14}
    assert [(s["run"], s["kept"], s["wer_test"]) for s in record["steps"]] == [
        ("dynamic+kl", False, 0.13),
        ("dynamic+frontend", True, 0.12),
    ]
    vs = [round(s["dev_vs_selected"]["delta"], 6) for s in record["steps"]]
    assert vs == [0.1, -0.1]  # 6 and 2 errors against dynamic's 4, of 20 words
    assert record["steps"][1]["test_vs_selected"]["words"] == 20
    assert "prune1" not in record  # the selection at 1 + 2 has not run
    text = distill.forward_text(record)
    assert "+ kl: 14.30% (dropped; dev +10.00 [" in text and "against dynamic)" in text
    assert "+ frontend: 13.90% (kept" in text and "**dynamic, frontend**" in text


def test_the_selection_at_the_recipes_split_is_compared_on_dev_and_test(tmp_path: Path) -> None:
    """`selected-prune1` against `chosen-prune1`: the lower dev WER takes the recipe, and both
    differences carry their paired-bootstrap interval."""
    dev = {"base": 0.15, **dict.fromkeys(distill.CHOICES, 0.16), "dynamic": 0.141}
    runs = {
        "dynamic": (0.141, 0.14, 4),
        distill.PRUNE1: (0.144, 0.13, 5),
        distill.SELECTED_PRUNE1: (0.142, 0.12, 3),
    }
    reports = {n: {"pruned": {"wer_dev": d, "wer_test": t}} for n, (d, t, _) in runs.items()}
    targets = {n: _recognitions(tmp_path / n, errors) for n, (_, _, errors) in runs.items()}
    forward = {"selected": ["dynamic"], "tried": [], "ended": True}
    record = distill.forward_record(forward, dev, reports, targets)
    p1 = record["prune1"]
    assert p1["selected_on_dev"]
    assert [round(p1[f"{s}_vs_chosen_prune1"]["delta"], 6) for s in ("dev", "test")] == [-0.1, -0.1]
    text = distill.forward_text(record)
    assert (
        f"takes **{distill.SELECTED_PRUNE1}** ({distill.SELECTED_PRUNE1} minus {distill.PRUNE1}: dev -10.00 ["
        in text
    )
    reports[distill.SELECTED_PRUNE1]["pruned"]["wer_dev"] = 0.144  # a tie keeps the recipe's
    assert not distill.forward_record(forward, dev, reports, targets)["prune1"]["selected_on_dev"]
