"""Evaluate a recognizer: WER/CER per corpus plus its costs, as one JSON-ready dict.

Usage:
    conformer-prune evaluate runs/teacher/model.pt --data corpus/dev corpus/test --json eval.json
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from conformer_prune.data.corpus import read_corpus
from conformer_prune.data.dataset import BucketBatchSampler, SpeechDataset, collate
from conformer_prune.evaluate.decode import BeamSearchDecoder
from conformer_prune.evaluate.metrics import (
    count_params,
    cpu_latency_ms,
    error_rates,
    macs_per_second,
)
from conformer_prune.model.checkpoint import Recognizer, greedy_decode

__all__ = ["Recognition", "cost_report", "evaluate_recognizer", "recognize_dataset"]


@dataclass
class Recognition:
    utt_id: str
    ref: str
    hyp: str


@torch.no_grad()
def recognize_dataset(
    rec: Recognizer,
    dataset: SpeechDataset,
    device: torch.device | str = "cpu",
    max_frames: int = 40000,
    progress: bool = True,
    desc: str = "decode",
    decoder: BeamSearchDecoder | None = None,
) -> list[Recognition]:
    """Transcripts of every utterance in `dataset`, in dataset order: greedy, or by `decoder`."""
    model = rec.model.eval().to(device)
    sampler = BucketBatchSampler(dataset.frames, max(max_frames, max(dataset.frames)), shuffle=False)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    hyps: dict[int, str] = {}
    for batch in tqdm(loader, desc=desc, disable=not progress, dynamic_ncols=True, leave=False):
        batch = batch.to(device)
        log_probs, lengths = model(batch.feats, batch.feat_lengths)
        if decoder is not None:
            texts = decoder.decode(log_probs.float().cpu().numpy(), lengths.cpu().numpy())
        else:
            texts = [rec.tokenizer.decode(ids) for ids in greedy_decode(log_probs, lengths, model.blank)]
        for index, text in zip(batch.indices.tolist(), texts, strict=True):
            hyps[index] = text
    return [Recognition(u.utt_id, u.text, hyps[i]) for i, u in enumerate(dataset.utts)]


def cost_report(rec: Recognizer, threads: int = 2, latency_runs: int = 10) -> dict[str, Any]:
    """Parameters, MACs per second of audio and CPU latency of a 10 s utterance (batch 1)."""
    model = rec.model.cpu().eval()
    latency = cpu_latency_ms(model, seconds=10.0, threads=threads, runs=latency_runs)
    return {
        "params": count_params(model),
        "macs_per_second": macs_per_second(model),
        "latency_ms_10s": latency,
        "rtf": latency / 1000.0 / 10.0,
        "threads": threads,
    }


def read_recogs(path: Path) -> dict[str, tuple[str, str]]:
    """Utterance id -> (reference, hypothesis) from a ``recogs-<name>.txt`` that
    `evaluate_recognizer` wrote."""
    refs: dict[str, str] = {}
    hyps: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        utt, sep, text = line.partition("\t")
        kind, _, words = text.partition("=")
        if not sep or kind not in ("ref", "hyp"):
            raise ValueError(f"{path}:{number}: expected '<utterance id>\\tref=...' or '...\\thyp=...'")
        (refs if kind == "ref" else hyps)[utt] = words
    if refs.keys() != hyps.keys():
        missing = sorted(refs.keys() ^ hyps.keys())
        raise ValueError(f"{path}: utterances without both ref= and hyp=: {missing}")
    return {utt: (refs[utt], hyps[utt]) for utt in refs}


def evaluate_recognizer(
    rec: Recognizer,
    corpora: Mapping[str, str | Path],
    device: torch.device | str = "cpu",
    threads: int = 2,
    recogs_dir: Path | None = None,
    progress: bool = True,
    decoder: BeamSearchDecoder | None = None,
) -> dict[str, Any]:
    """WER/CER on each named corpus (keys ``wer_<name>``, ``cer_<name>``) and the cost report,
    decoding greedily or with `decoder` (beam search, optionally with an LM).

    When `recogs_dir` is given, writes ``recogs-<name>.txt`` with reference and hypothesis per
    utterance there.
    """
    results: dict[str, Any] = {}
    for name, source in corpora.items():
        dataset = SpeechDataset(
            read_corpus(source), rec.tokenizer, rec.features, cache=False, skip_too_short=False
        )
        recs = recognize_dataset(
            rec, dataset, device=device, progress=progress, desc=f"decode {name}", decoder=decoder
        )
        rates = error_rates([r.ref for r in recs], [r.hyp for r in recs])
        results[f"wer_{name}"] = rates["wer"]
        results[f"cer_{name}"] = rates["cer"]
        results[f"utterances_{name}"] = len(recs)
        results[f"hours_{name}"] = sum(u.duration for u in dataset.utts) / 3600
        if recogs_dir is not None:
            recogs_dir.mkdir(parents=True, exist_ok=True)
            lines = [f"{r.utt_id}\tref={r.ref}\n{r.utt_id}\thyp={r.hyp}" for r in recs]
            (recogs_dir / f"recogs-{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    results.update(cost_report(rec, threads=threads))
    return results
