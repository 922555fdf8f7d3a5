"""Imported NeMo models compute what NeMo computes (marker `nemo`, run by ``make test-nemo``).

`make_nemo_models.py` runs in NeMo's own virtual environment (NEMO_PYTHON, by default
.venv-nemo/bin/python): it writes random-weight models as .nemo files (Conformer-CTC, one per
combination of untie_biases and xscaling; FastConformer-CTC with dw_striding by 8 and 16; a hybrid
RNNT-CTC FastConformer, of which the CTC head is imported) and NeMo 3.0.0's outputs for one padded
batch of three waveforms. Each model is imported with ``conformer-prune import-nemo`` and compared
on real frames: features, encoder output and CTC log-probabilities within 1e-4, greedy transcripts
identical.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conformer_prune.cli import main
from conformer_prune.evaluate.metrics import count_params
from conformer_prune.export import export_onnx, verify_onnx
from conformer_prune.model import Recognizer, load_recognizer
from conformer_prune.prune.gates import STRUCTURES, ConformerGates
from conformer_prune.prune.magnitude import magnitude_masks
from conformer_prune.prune.physical import physically_prune

pytestmark = pytest.mark.nemo

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = Path(__file__).with_name("make_nemo_models.py")
VARIANTS = (
    "untied-xscale",
    "untied-noxscale",
    "tied-xscale",
    "tied-noxscale",
    "fast-dw8",
    "fast-dw16",
    "hybrid-dw8",
)
TOL = 1e-4


@pytest.fixture(scope="module")
def nemo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generator's output directory (.nemo, .npz and .json per variant)."""
    python = Path(os.environ.get("NEMO_PYTHON", ROOT / ".venv-nemo" / "bin" / "python"))
    if not python.exists():
        reason = f"NeMo's python {python} is missing; `make test-nemo` creates .venv-nemo"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("nemo-models")
    run = subprocess.run(
        [str(python), str(GENERATOR), "--out", str(out)], capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, f"{GENERATOR.name} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return out


def _imported(nemo_models: Path, variant: str, tmp_path: Path) -> Recognizer:
    """`conformer-prune import-nemo`, then the checkpoint loaded back (strict)."""
    out = tmp_path / f"{variant}.pt"
    assert main(["import-nemo", str(nemo_models / f"{variant}.nemo"), "--out", str(out)]) == 0
    return load_recognizer(out)


def _max_diff(ours: np.ndarray, ref: np.ndarray, lengths: np.ndarray) -> float:
    """Largest absolute difference over each item's first `lengths[i]` frames; (B, T, ...)."""
    return max(float(np.abs(ours[i, :n] - ref[i, :n]).max()) for i, n in enumerate(lengths))


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_imported_model_computes_what_nemo_computes(nemo_models: Path, variant: str, tmp_path: Path) -> None:
    rec = _imported(nemo_models, variant, tmp_path)
    ref = np.load(nemo_models / f"{variant}.npz")
    info = json.loads((nemo_models / f"{variant}.json").read_text())
    assert rec.meta["source"]["format"] == "nemo"
    assert rec.meta["source"]["file"] == f"{variant}.nemo"
    assert rec.meta["source"]["nemo_version"] == info["nemo_version"]

    feats, feat_lengths = rec.features(
        torch.from_numpy(ref["waveforms"]), torch.from_numpy(ref["waveform_lengths"])
    )
    np.testing.assert_array_equal(feat_lengths.numpy(), ref["feature_lengths"])
    assert feats.shape[1] == ref["features"].shape[2]  # NeMo's pad_to, too
    encoded, enc_lengths = rec.model.encoder(feats, feat_lengths)
    np.testing.assert_array_equal(enc_lengths.numpy(), ref["encoded_lengths"])
    log_probs, _ = rec.model(feats, feat_lengths)
    diffs = {
        "features": _max_diff(feats.numpy(), ref["features"].transpose(0, 2, 1), ref["feature_lengths"]),
        "encoder": _max_diff(encoded.numpy(), ref["encoded"].transpose(0, 2, 1), ref["encoded_lengths"]),
        "log_probs": _max_diff(log_probs.numpy(), ref["log_probs"], ref["encoded_lengths"]),
    }
    print(f"{variant}: max abs diff {diffs}")
    assert max(diffs.values()) <= TOL, diffs

    waves = [w[:n] for w, n in zip(ref["waveforms"], ref["waveform_lengths"], strict=True)]
    assert rec.transcribe(waves) == info["transcripts"]
    assert [rec.transcribe([w])[0] for w in waves] == info["transcripts"]  # one by one as well


@pytest.mark.parametrize("variant", ["tied-xscale", "fast-dw8"])
@torch.no_grad()
def test_imported_model_prunes_and_exports(nemo_models: Path, variant: str, tmp_path: Path) -> None:
    """Half the parameters sliced away by magnitude; the pruned model equals the gated one and
    its ONNX export (NeMo's front end inside) agrees with PyTorch."""
    rec = _imported(nemo_models, variant, tmp_path)
    teacher_params = count_params(rec.model)
    gates = ConformerGates.attach(rec.model, list(STRUCTURES))
    gates.freeze(magnitude_masks(gates, 0.5 * teacher_params))
    pruned = physically_prune(rec.model, gates.current_masks())
    assert count_params(pruned) <= 0.5 * teacher_params
    ref = np.load(nemo_models / f"{variant}.npz")
    feats, lengths = rec.features(
        torch.from_numpy(ref["waveforms"]), torch.from_numpy(ref["waveform_lengths"])
    )
    gated_out, gated_lengths = rec.model.eval()(feats, lengths)
    pruned_out, pruned_lengths = pruned.eval()(feats, lengths)
    assert torch.equal(gated_lengths, pruned_lengths)
    for i, n in enumerate(gated_lengths.tolist()):
        assert (gated_out[i, :n] - pruned_out[i, :n]).abs().max() <= TOL

    small = Recognizer(pruned, rec.features, rec.tokenizer, rec.meta)
    path = export_onnx(small, tmp_path / "pruned.onnx", teacher_params=teacher_params)
    waves = [w[:n] for w, n in zip(ref["waveforms"], ref["waveform_lengths"], strict=True)]
    check = verify_onnx(small, path, waves)
    assert check.passed(TOL), check
