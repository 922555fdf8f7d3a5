"""Quality and cost measurements: WER/CER, parameters, MACs per second of audio, CPU latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import jiwer
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conformer_prune.model.conformer import ConformerConfig, ConformerCTC, feature_frames

__all__ = [
    "count_params",
    "cpu_latency_ms",
    "dummy_features",
    "error_rates",
    "interleaved_medians_ms",
    "interleaved_times_ms",
    "macs_per_second",
    "paired_bootstrap_wer",
    "paired_bootstrap_wer_runs",
]

K = TypeVar("K")


def error_rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus-level WER and CER (fractions) with `jiwer`, case-insensitive (a lower-case model such
    as NeMo's English ones against LibriSpeech's upper-case transcripts); an empty hypothesis
    counts as deletions."""
    if len(refs) != len(hyps) or not refs:
        raise ValueError(
            f"expected as many hypotheses as references (at least one), found {len(hyps)} and {len(refs)}"
        )
    refs, hyps = [r.upper() for r in refs], [h.upper() for h in hyps]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


def paired_bootstrap_wer(
    refs: list[str], hyps_a: list[str], hyps_b: list[str], resamples: int = 10000, seed: int = 0
) -> dict[str, float]:
    """WER(b) - WER(a) on the same utterances, with a 95% interval from the paired bootstrap
    (Bisani and Ney, 2004): utterances are resampled with replacement and both systems scored on
    each resample, so an interval that excludes 0 says the difference is not the test set's luck.
    """
    return paired_bootstrap_wer_runs(refs, [hyps_a], [hyps_b], resamples, seed)


def paired_bootstrap_wer_runs(
    refs: list[str],
    runs_a: list[list[str]],
    runs_b: list[list[str]],
    resamples: int = 10000,
    seed: int = 0,
) -> dict[str, float]:
    """`paired_bootstrap_wer` of two systems each trained several times (seeds): each utterance's
    errors are the mean over the system's runs, so ``delta`` is the difference of the runs' mean
    WERs and the interval covers the test set's luck in that difference (the runs' own spread is
    not in it; report it beside)."""
    if not refs or not runs_a or not runs_b:
        raise ValueError("expected references and at least one run of each system")
    for hyps in (*runs_a, *runs_b):
        if len(hyps) != len(refs):
            raise ValueError(
                f"expected one hypothesis per reference from each system, found {len(refs)} references "
                f"and {len(hyps)} hypotheses"
            )

    def errors(hyps: list[str]) -> torch.Tensor:
        out = [jiwer.process_words(r.upper(), h.upper()) for r, h in zip(refs, hyps, strict=True)]
        return torch.tensor([o.substitutions + o.deletions + o.insertions for o in out], dtype=torch.float64)

    words = torch.tensor([len(r.split()) for r in refs], dtype=torch.float64)
    if not bool((words > 0).all()):
        raise ValueError("every reference needs at least one word")
    mean_errors = [torch.stack([errors(h) for h in runs]).mean(0) for runs in (runs_a, runs_b)]
    diff = mean_errors[1] - mean_errors[0]
    idx = torch.randint(len(refs), (resamples, len(refs)), generator=torch.Generator().manual_seed(seed))
    deltas = diff[idx].sum(1) / words[idx].sum(1)
    low, high = torch.quantile(deltas, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"delta": float(diff.sum() / words.sum()), "low": low, "high": high}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dummy_features(cfg: ConformerConfig, seconds: float, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` utterances of `seconds` of seeded random features and their lengths: the input
    every MAC count and latency measurement feeds a model."""
    frames = feature_frames(seconds, cfg.feature_rate)
    feats = torch.randn(batch, frames, cfg.n_mels, generator=torch.Generator().manual_seed(0))
    return feats, torch.full((batch,), frames, dtype=torch.long)


@torch.no_grad()
def macs_per_second(model: ConformerCTC, seconds: float = 10.0) -> float:
    """Multiply-accumulates per second of audio for one utterance of `seconds` (the attention
    scores grow with length, so the reference length matters: 10 s by default).

    Counted by `torch.utils.flop_counter` (matmuls and convolutions; FLOPs / 2).
    """
    model.eval()
    feats, lengths = dummy_features(model.config, seconds)
    with FlopCounterMode(display=False) as counter:
        model(feats.to(_device(model)), lengths.to(_device(model)))
    return counter.get_total_flops() / 2 / seconds


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def cpu_latency_ms(
    model: ConformerCTC,
    seconds: float = 10.0,
    threads: int = 2,
    runs: int = 10,
    warmup: int = 2,
    batch: int = 1,
) -> float:
    """Median wall time (ms) of one forward pass on the CPU over a `seconds`-long utterance, with
    `threads` intra-op threads (restored afterwards)."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.eval().cpu()
        feats, lengths = dummy_features(model.config, seconds, batch)
        for _ in range(warmup):
            model(feats, lengths)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(feats, lengths)
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)
    finally:
        torch.set_num_threads(old_threads)


def interleaved_times_ms(runs: Mapping[K, Callable[[], object]], rounds: int) -> dict[K, list[float]]:
    """Every wall time (ms) of each zero-argument call, after one warm-up call each, measured in
    alternation (A, B, A, B, ...) so that a noisy, shared machine slows all of them alike."""
    for run in runs.values():
        run()
    times: dict[K, list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            times[key].append((time.perf_counter() - start) * 1000)
    return times


def interleaved_medians_ms(runs: Mapping[K, Callable[[], object]], rounds: int) -> dict[K, float]:
    """Median wall time (ms) of each call of `interleaved_times_ms`."""
    return {key: statistics.median(t) for key, t in interleaved_times_ms(runs, rounds).items()}
