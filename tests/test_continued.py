"""The equal-training control `continued` and the one augmentation recipe: pruning runs train under
the teacher's own SpecAugment and speed perturbation unless the config gives them."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor

from conformer_prune.cli import main
from conformer_prune.config import ConfigError, load_config
from conformer_prune.data.features import SpecAugment, SpecAugmentConfig
from conformer_prune.distill.layerwise import DistillConfig
from conformer_prune.evaluate.metrics import count_params
from conformer_prune.model import load_recognizer
from conformer_prune.prune import run as prune_run
from conformer_prune.prune.config import PruneConfig, teacher_specaug, teacher_speeds
from conformer_prune.prune.methods import METHODS

# deliberately unlike SpecAugmentConfig's defaults, so that reading the default cannot pass
TEACHER_SPECAUG = SpecAugmentConfig(freq_masks=1, freq_width=9, time_masks=3, time_width=0.04)


@pytest.fixture(scope="module")
def teacher(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny teacher, its checkpoint recording that it was trained with `TEACHER_SPECAUG`."""
    ckpt = torch.load(tiny_run / "model.pt", weights_only=True)
    ckpt["meta"]["train_config"]["specaug"] = asdict(TEACHER_SPECAUG)
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    torch.save(ckpt, path)
    return path


def _argv(corpus: Path, teacher: Path, out: Path, method: str, *settings: str) -> list[str]:
    return [
        "prune",
        *("--teacher", str(teacher), "--data", str(corpus / "train"), "--dev", str(corpus / "dev")),
        *("--target-params", "0.5", "--out", str(out), "--method", method),
        *("--set", "prune_epochs=1", "finetune_epochs=1", "max_frames=4000", "device=cpu", *settings),
    ]


def _run(argv: list[str]) -> tuple[list[SpecAugmentConfig], list[list[int]]]:
    """Run the command; returns the config of every SpecAugment the pruning engine built and the
    feature lengths of every batch it augmented in training (which batches, in which order)."""
    configs: list[SpecAugmentConfig] = []
    batches: list[list[int]] = []

    class Recording(SpecAugment):
        def __init__(self, config: SpecAugmentConfig) -> None:
            super().__init__(config)
            configs.append(config)

        def forward(self, feats: Tensor, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
            if self.training:
                batches.append(lengths.tolist())
            return super().forward(feats, lengths, generator)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prune_run, "SpecAugment", Recording)
        assert main(argv) == 0
    return configs, batches


def _epochs(out: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in records if "epoch" in r]


@pytest.fixture(scope="module")
def continued(
    tiny_corpus: Path, teacher: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[SpecAugmentConfig], list[list[int]]]:
    out = tmp_path_factory.mktemp("continued") / "run"
    return out, *_run(_argv(tiny_corpus, teacher, out, "continued"))


def test_continued_keeps_every_parameter_and_trains_with_distillation(
    continued: tuple[Path, list[SpecAugmentConfig], list[list[int]]], teacher: Path
) -> None:
    out, _, _ = continued
    teacher_model = load_recognizer(teacher).model
    model = load_recognizer(out / "model.pt").model
    assert model.config == teacher_model.config  # nothing removed
    assert count_params(model) == count_params(teacher_model)
    report = json.loads((out / "eval.json").read_text())
    assert report["pruned"]["params"] == report["teacher"]["params"] == count_params(teacher_model)
    assert report["target"] is None  # the control has no target
    state = torch.load(out / "prune_state.pt", weights_only=True)
    assert not any("log_alpha" in k or ".gate" in k for k in state["student"])  # no gates
    changed = [
        k
        for k, v in model.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, teacher_model.state_dict()[k])
    ]
    assert changed, "the control was not trained"
    epochs = _epochs(out)
    assert len(epochs) == 2 and all(r["stage"] == "finetune" for r in epochs)
    # CTC plus layerwise distillation from the frozen teacher: the student drifts from its copy
    assert all(r["ctc"] > 0 and r[DistillConfig().layer_key] > 0 for r in epochs)
    assert METHODS["continued"].distill and not METHODS["continued"].has_gates


def test_continued_runs_the_same_steps_on_the_same_batches_as_l0_distill(
    continued: tuple[Path, list[SpecAugmentConfig], list[list[int]]],
    tiny_corpus: Path,
    teacher: Path,
    tmp_path: Path,
) -> None:
    out, _, control_batches = continued
    l0_configs, l0_batches = _run(_argv(tiny_corpus, teacher, tmp_path / "l0", "l0-distill"))
    control = torch.load(out / "prune_state.pt", weights_only=True)
    method = torch.load(tmp_path / "l0" / "prune_state.pt", weights_only=True)
    steps = control["scheduler"]["last_epoch"]  # LambdaLR counts every optimizer step
    assert steps == method["scheduler"]["last_epoch"] == len(l0_batches) > 2
    assert sum(r["steps"] for r in _epochs(out)) == sum(r["steps"] for r in _epochs(tmp_path / "l0")) == steps
    assert control_batches == l0_batches  # the same batches in the same order
    # and the same learning-rate schedule over them
    for key in ("base_lrs", "_last_lr"):  # the weights' two groups
        assert control["scheduler"][key][:2] == method["scheduler"][key][:2]
    assert l0_configs == [TEACHER_SPECAUG]


def test_pruning_trains_under_the_teachers_specaugment(
    continued: tuple[Path, list[SpecAugmentConfig], list[list[int]]],
) -> None:
    out, configs, _ = continued
    assert configs == [TEACHER_SPECAUG]  # the one the engine built and trained with
    written = yaml.safe_load((out / "prune_config.yaml").read_text())
    assert written["specaug"] == asdict(TEACHER_SPECAUG)  # the run says which one it used
    meta = load_recognizer(out / "model.pt").meta
    assert meta["prune_config"]["specaug"] == asdict(TEACHER_SPECAUG)


def test_an_explicit_specaugment_replaces_the_teachers(
    tiny_corpus: Path, teacher: Path, tmp_path: Path
) -> None:
    out = tmp_path / "explicit"
    argv = _argv(tiny_corpus, teacher, out, "continued", "specaug.time_masks=0", "finetune_epochs=0")
    configs, _ = _run(argv)
    expected = SpecAugmentConfig(time_masks=0)  # replaced whole: the other fields are the defaults
    assert configs == [expected]
    assert yaml.safe_load((out / "prune_config.yaml").read_text())["specaug"] == asdict(expected)


def test_prune_config_takes_the_teachers_specaugment_unless_given_one() -> None:
    assert load_config(PruneConfig).specaug is None  # None: the teacher's
    given = load_config(PruneConfig, None, ["specaug.time_masks=4"]).specaug
    assert given == SpecAugmentConfig(time_masks=4)
    with pytest.raises(ConfigError, match=r"unknown config key .specaug\.time_mask."):
        load_config(PruneConfig, None, ["specaug.time_mask=4"])
    trained = {"train_config": {"specaug": asdict(TEACHER_SPECAUG)}}
    assert teacher_specaug(trained) == (TEACHER_SPECAUG, "the teacher's train_config")
    pruned = {"prune_config": {"specaug": asdict(TEACHER_SPECAUG)}}  # a pruned model as the teacher
    assert teacher_specaug(pruned)[0] == TEACHER_SPECAUG
    default, source = teacher_specaug({"source": "an imported NeMo model"})
    assert default == SpecAugmentConfig() and "records none" in source
    with pytest.raises(ConfigError, match=r"teacher train_config\.specaug\.time_masks"):
        teacher_specaug({"train_config": {"specaug": {"time_masks": "four"}}})


def test_pruning_trains_under_the_teachers_speed_perturbation(
    continued: tuple[Path, list[SpecAugmentConfig], list[list[int]]],
    tiny_corpus: Path,
    teacher: Path,
    tmp_path: Path,
) -> None:
    ckpt = torch.load(teacher, weights_only=True)
    ckpt["meta"]["train_config"]["speeds"] = [0.9, 1.1]
    perturbed_teacher = tmp_path / "teacher.pt"
    torch.save(ckpt, perturbed_teacher)
    out = tmp_path / "run"
    _run(_argv(tiny_corpus, perturbed_teacher, out, "continued", "prune_epochs=0"))
    assert yaml.safe_load((out / "prune_config.yaml").read_text())["speeds"] == [0.9, 1.1]
    plain, perturbed = _epochs(continued[0])[0], _epochs(out)[0]  # the same data, each utterance twice
    ratio = perturbed["audio_seconds"] / plain["audio_seconds"]
    assert ratio == pytest.approx(1 / 0.9 + 1 / 1.1, rel=0.002)

    assert teacher_speeds({"train_config": {"speeds": [0.9, 1.0, 1.1]}})[0] == (0.9, 1.0, 1.1)
    assert teacher_speeds({"source": "an imported NeMo model"}) == ((1.0,), "none (the teacher records none)")
    assert load_config(PruneConfig).speeds is None  # None: the teacher's
    assert load_config(PruneConfig, None, ["speeds=[1.0]"]).speeds == (1.0,)  # or given
    with pytest.raises(ValueError, match="speeds"):
        teacher_speeds({"train_config": {"speeds": [0.0]}})
