"""Write small random-weight NeMo Conformer-CTC models and NeMo's own outputs for them.

Usage:
    .venv-nemo/bin/python tests/nemo/make_nemo_models.py --out /tmp/nemo-models

Runs inside NeMo's virtual environment (``make test-nemo`` creates it), never in the project's: it
imports nemo_toolkit, which conformer-prune does not depend on. For every combination of
`untie_biases` and `xscaling`, for two FastConformer shapes (dw_striding by 8 and 16) and for a
hybrid RNNT-CTC FastConformer, it builds an `EncDecCTCModelBPE` (or `EncDecHybridRNNTCTCBPEModel`)
on the CPU (striding or dw_striding subsampling,
relative-position attention, BatchNorm in the convolution module, a SentencePiece tokenizer trained
here), randomises every parameter, the BatchNorm running statistics and the position biases, and
writes

    OUT/<variant>.nemo   the model, saved with NeMo's `save_to`
    OUT/<variant>.npz    waveforms and NeMo's outputs for them, in eval mode with dither 0:
                         features and their lengths (preprocessor), encoder output and lengths,
                         CTC log-probabilities
    OUT/<variant>.json   greedy transcripts, NeMo's version and the variant's settings

`tests/nemo/test_nemo_import.py` imports each .nemo file with conformer-prune and compares.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import nemo
import numpy as np
import sentencepiece as spm
import torch
from conformer_ctc_bpe import hybrid_rnnt_ctc, small_conformer_ctc  # beside this script
from nemo.collections.asr.models import EncDecCTCModelBPE, EncDecHybridRNNTCTCBPEModel
from nemo.utils import logging as nemo_logging
from omegaconf import OmegaConf

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a small model of speech recognition",
    "pruning keeps the heads that matter",
    "she sells sea shells by the sea shore",
    "every layer has its own width after pruning",
    "convolution attention and feed forward modules",
]

# The four combinations of untie_biases and xscaling; the sizes and a few other settings vary
# too (NeMo's recipes use pad_to 0 and 16; use_bias false has no bias in the layers).
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "untied-xscale": {
        "encoder": {"untie_biases": True, "xscaling": True, "d_model": 96, "n_heads": 4},
        "preprocessor": {"pad_to": 0},
    },
    "untied-noxscale": {
        "encoder": {"untie_biases": True, "xscaling": False, "d_model": 64, "n_heads": 2},
        "preprocessor": {"pad_to": 16, "log_zero_guard_type": "clamp"},
    },
    "tied-xscale": {
        "encoder": {"untie_biases": False, "xscaling": True, "d_model": 64, "n_heads": 4},
        "preprocessor": {"pad_to": 16},
    },
    "tied-noxscale": {
        "encoder": {
            "untie_biases": False,
            "xscaling": False,
            "d_model": 96,
            "n_heads": 2,
            "conv_kernel_size": 31,
            "subsampling_conv_channels": -1,
            "use_bias": False,
        },
        "preprocessor": {"pad_to": 0},
    },
    # FastConformers (dw_striding) at two shapes, and a hybrid RNNT-CTC FastConformer whose CTC
    # head (aux_ctc) is what conformer-prune imports
    "fast-dw8": {
        "encoder": {
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": 32,
            "d_model": 64,
            "n_heads": 4,
            "conv_kernel_size": 9,
            "untie_biases": True,
            "xscaling": True,
        },
        "preprocessor": {"pad_to": 0},
    },
    "fast-dw16": {
        "encoder": {
            "subsampling": "dw_striding",
            "subsampling_factor": 16,
            "subsampling_conv_channels": -1,
            "d_model": 96,
            "n_heads": 2,
            "n_layers": 2,
            "conv_kernel_size": 9,
            "untie_biases": False,
            "xscaling": False,
            "use_bias": False,
        },
        "preprocessor": {"pad_to": 16},
    },
    "hybrid-dw8": {
        "encoder": {
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": 48,
            "d_model": 64,
            "n_heads": 4,
            "conv_kernel_size": 9,
        },
        "preprocessor": {"pad_to": 0},
    },
}
HYBRID = ("hybrid-dw8",)

SAMPLE_RATE = 16000
WAVE_SAMPLES = (27_713, 16_000, 9_120)  # unequal lengths, so the batch carries padding


def train_tokenizer(directory: Path) -> None:
    """A 40-piece BPE SentencePiece model in `directory`, laid out as NeMo's
    scripts/tokenizers/process_asr_text_tokenizer.py leaves it (tokenizer.model, tokenizer.vocab,
    vocab.txt)."""
    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 4),
        model_prefix=str(directory / "tokenizer"),
        vocab_size=40,
        model_type="bpe",
        character_coverage=1.0,
        bos_id=-1,
        eos_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    (directory / "vocab.txt").write_text("".join(f"{p}\n" for p in pieces))


def model_config(tokenizer_dir: Path, variant: dict[str, dict[str, Any]], hybrid: bool) -> dict[str, Any]:
    """An EncDecCTCModelBPE config as NeMo's conformer_ctc_bpe.yaml lays it out, small (or the
    hybrid RNNT-CTC model built around it)."""
    cfg = small_conformer_ctc(tokenizer={"dir": str(tokenizer_dir)}, **variant)
    return hybrid_rnnt_ctc(cfg) if hybrid else cfg


def ctc_head(model: torch.nn.Module) -> Any:
    """The CTC decoder: a hybrid model's auxiliary one, or the CTC model's."""
    return model.ctc_decoder if isinstance(model, EncDecHybridRNNTCTCBPEModel) else model.decoder


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights of a realistic scale, non-trivial BatchNorm statistics and position biases,
    and a blank that does not win every frame, so that transcripts are not empty."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied bias is listed once, under layer 0
            if name.endswith(("pos_bias_u", "pos_bias_v")):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
        head = ctc_head(model).decoder_layers[0].bias
        head[-1] -= 1.0  # the blank
        head[0] -= 3.0  # <unk>


def waveforms(seed: int) -> list[np.ndarray]:
    """Speech-like test signals: harmonic tones with a moving pitch, amplitude bursts and noise."""
    rng = np.random.default_rng(seed)
    out = []
    for n in WAVE_SAMPLES:
        t = np.arange(n) / SAMPLE_RATE
        pitch = 120 + 60 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
        phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
        voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t + rng.uniform(0, 6)) ** 2
        x = 0.1 * envelope * voiced + 0.01 * rng.standard_normal(n)
        out.append(x.astype(np.float32))
    return out


@torch.no_grad()
def reference(model: torch.nn.Module, waves: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """NeMo's outputs for one padded batch of `waves` in eval mode with dither 0."""
    model.eval()
    model.preprocessor.featurizer.dither = 0.0
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    feats, feat_lengths = model.preprocessor(input_signal=batch, length=lengths)
    encoded, enc_lengths = model.encoder(audio_signal=feats, length=feat_lengths)
    log_probs = ctc_head(model)(encoder_output=encoded)
    decoding = model.ctc_decoding if isinstance(model, EncDecHybridRNNTCTCBPEModel) else model.decoding
    hyps = decoding.ctc_decoder_predictions_tensor(log_probs, decoder_lengths=enc_lengths)
    texts = [h.text for h in hyps]
    arrays = {
        "waveforms": batch.numpy(),
        "waveform_lengths": lengths.numpy(),
        "features": feats.numpy(),  # (B, n_mels, T)
        "feature_lengths": feat_lengths.numpy(),
        "encoded": encoded.numpy(),  # (B, d_model, T')
        "encoded_lengths": enc_lengths.numpy(),
        "log_probs": log_probs.numpy(),  # (B, T', vocab + 1)
    }
    return arrays, texts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args()
    nemo_logging.setLevel(logging.ERROR)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    waves = waveforms(seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = Path(tmp) / "tokenizer"
        train_tokenizer(tokenizer_dir)
        for seed, (name, variant) in enumerate(VARIANTS.items()):
            hybrid = name in HYBRID
            cfg = OmegaConf.create(model_config(tokenizer_dir, variant, hybrid))
            model_class = EncDecHybridRNNTCTCBPEModel if hybrid else EncDecCTCModelBPE
            model = model_class(cfg=cfg).cpu()
            randomise(model, seed)
            model.save_to(str(out / f"{name}.nemo"))
            arrays, texts = reference(model, waves)
            np.savez(out / f"{name}.npz", **arrays)
            meta = {"nemo_version": nemo.__version__, "settings": variant, "transcripts": texts}
            (out / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
            print(f"{name}: {texts}")


if __name__ == "__main__":
    main()
