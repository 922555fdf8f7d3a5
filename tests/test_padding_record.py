"""What `benchmarks/padding.py --check` writes: the rule that lets padding join the recipe, read from
the record's own figures, and each run's seconds per step from its log."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import padding


def _record(dev_low: float) -> dict[str, Any]:
    vs = {"delta": dev_low + 0.002, "low": dev_low, "high": dev_low + 0.004, "utterances": 10, "words": 100}
    wer = {"wer_dev": 0.14, "wer_test": 0.14, "wer_test_unseen": 0.4}
    return {
        "recipe": wer,
        "padded": wer,
        "padded_vs_recipe": dict.fromkeys(padding.SPLITS, vs),
        "joins_the_recipe": dev_low <= 0,
        "seconds_per_step": {
            "recipe": {"prune": 1.3, "finetune": 1.65},
            "padded": {"prune": 1.2, "finetune": 1.0},
        },
        "multiple": 64,
        "commit": "abc",
        "command": "python benchmarks/padding.py --check",
    }


def test_padding_joins_the_recipe_only_without_harm_on_dev_beyond_noise() -> None:
    assert "Padding **joins** the recipe" in padding.check_section(_record(dev_low=-0.001))
    assert "Padding **does not join** the recipe" in padding.check_section(_record(dev_low=0.001))
    assert "| padded | 14.00% | 14.00% | 40.00% | prune 1.20, finetune 1.00 |" in padding.check_section(
        _record(dev_low=-0.001)
    )


def test_seconds_per_step_are_each_stages_mean_from_the_log(tmp_path: Path) -> None:
    log = [
        {"epoch": 1, "stage": "prune", "train_seconds": 100.0, "steps": 100},
        {"event": "masks_frozen"},
        {"epoch": 2, "stage": "finetune", "train_seconds": 150.0, "steps": 100},
        {"epoch": 3, "stage": "finetune", "train_seconds": 250.0, "steps": 100},
    ]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    assert padding.step_seconds(tmp_path) == {"prune": 1.0, "finetune": 2.0}
