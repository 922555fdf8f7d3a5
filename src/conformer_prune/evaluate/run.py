"""Evaluate a recognizer: WER/CER per corpus plus its costs, as one JSON-ready dict.

Usage:
    conformer-prune evaluate runs/teacher/model.pt --data corpus/dev corpus/test --json eval.json
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from conformer_prune.data.corpus import read_corpus
from conformer_prune.data.dataset import BucketBatchSampler, SpeechDataset, collate
from conformer_prune.evaluate.decode import BeamSearchDecoder
from conformer_prune.evaluate.metrics import (
    count_params,
    cpu_latency_ms,
    error_rates,
    macs_per_second,
    paired_bootstrap_wer_runs,
)
from conformer_prune.model.checkpoint import Recognizer, greedy_decode
from conformer_prune.utils import atomic_write_text

__all__ = [
    "Recognition",
    "compare_recognition_runs",
    "compare_recognitions",
    "compare_recogs",
    "cost_report",
    "evaluate_recognizer",
    "read_recogs",
    "recognize_dataset",
    "recogs_path",
]

log = logging.getLogger(__name__)


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
    indices: Sequence[int] | None = None,
) -> list[Recognition]:
    """Transcripts of every utterance in `dataset` (or of those at `indices`), in that order:
    greedy, or by `decoder`."""
    model = rec.model.eval().to(device)
    chosen = list(range(len(dataset)) if indices is None else indices)
    if not chosen:
        return []
    frames = [dataset.frames[i] for i in chosen]
    sampler = BucketBatchSampler(frames, max(max_frames, max(frames)), shuffle=False)
    loader = DataLoader(Subset(dataset, chosen), batch_sampler=sampler, collate_fn=collate)
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
    return [Recognition(dataset.utts[i].utt_id, dataset.utts[i].text, hyps[i]) for i in chosen]


def cost_report(
    rec: Recognizer, threads: int = 2, latency_runs: int = 10, latency: bool = True
) -> dict[str, Any]:
    """Parameters, MACs per second of audio and CPU latency of a 10 s utterance (batch 1); without
    `latency` (other work shares the cores, so a time would mean nothing), no latency keys."""
    model = rec.model.cpu().eval()
    report: dict[str, Any] = {"params": count_params(model), "macs_per_second": macs_per_second(model)}
    if latency:
        ms = cpu_latency_ms(model, seconds=10.0, threads=threads, runs=latency_runs)
        report |= {"latency_ms_10s": ms, "rtf": ms / 1000.0 / 10.0}
    return report | {"threads": threads}


def read_recogs(path: Path) -> dict[str, tuple[str, str]]:
    """Utterance id -> (reference, hypothesis) from a ``recogs-<name>.txt`` that
    `evaluate_recognizer` wrote (its ``# run_id`` line is skipped)."""
    refs: dict[str, str] = {}
    hyps: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("#"):
            continue
        utt, sep, text = line.partition("\t")
        kind, _, words = text.partition("=")
        if not sep or kind not in ("ref", "hyp"):
            raise ValueError(f"{path}:{number}: expected '<utterance id>\\tref=...' or '...\\thyp=...'")
        (refs if kind == "ref" else hyps)[utt] = words
    if refs.keys() != hyps.keys():
        missing = sorted(refs.keys() ^ hyps.keys())
        raise ValueError(f"{path}: utterances without both ref= and hyp=: {missing}")
    return {utt: (refs[utt], hyps[utt]) for utt in refs}


def compare_recogs(a: Path, b: Path) -> dict[str, Any]:
    """WER of system `b` minus system `a` from their ``recogs-<name>.txt`` files of the same
    utterances (`compare_recognitions`)."""
    return compare_recognitions(read_recogs(a), read_recogs(b), f"{a} and {b}")


def compare_recognitions(
    rec_a: dict[str, tuple[str, str]], rec_b: dict[str, tuple[str, str]], what: str = "the two systems"
) -> dict[str, Any]:
    """WER of system `b` minus system `a` from their (reference, hypothesis) per utterance id,
    with the paired bootstrap's 95% interval (`paired_bootstrap_wer`) and the size of the split
    (``utterances``, ``words``); `what` names the two in errors."""
    return compare_recognition_runs([rec_a], [rec_b], what)


def compare_recognition_runs(
    runs_a: list[dict[str, tuple[str, str]]],
    runs_b: list[dict[str, tuple[str, str]]],
    what: str = "the two systems",
) -> dict[str, Any]:
    """`compare_recognitions` of two systems trained several times each (seeds): the difference of
    their runs' mean WERs, with `paired_bootstrap_wer_runs`'s interval."""
    first = runs_a[0]
    for rec in (*runs_a, *runs_b):
        if rec.keys() != first.keys():
            raise ValueError(
                f"expected recognitions of the same utterances in {what}; "
                f"found {len(rec.keys() ^ first.keys())} that only one of them holds"
            )
    utts = sorted(first)
    refs = [first[u][0] for u in utts]
    if any(refs != [rec[u][0] for u in utts] for rec in (*runs_a, *runs_b)):
        raise ValueError(f"{what} hold different references for the same utterances")
    result: dict[str, Any] = {"utterances": len(utts), "words": sum(len(r.split()) for r in refs)}
    hyps_a, hyps_b = ([[rec[u][1] for u in utts] for rec in runs] for runs in (runs_a, runs_b))
    return result | paired_bootstrap_wer_runs(refs, hyps_a, hyps_b)


def recogs_path(recogs_dir: Path, name: str) -> Path:
    """Where `evaluate_recognizer` writes the recognitions of corpus `name`."""
    return recogs_dir / f"recogs-{name}.txt"


def _unspellable_words(rec: Recognizer, refs: list[str]) -> tuple[int, list[str]]:
    """How many reference words hold a character the tokenizer cannot produce, and which
    characters."""
    words = [w for ref in refs for w in ref.split() if rec.tokenizer.unspellable(w)]
    return len(words), rec.tokenizer.unspellable(" ".join(words))


def evaluate_recognizer(
    rec: Recognizer,
    corpora: Mapping[str, str | Path],
    device: torch.device | str = "cpu",
    threads: int = 2,
    recogs_dir: Path | None = None,
    progress: bool = True,
    decoder: BeamSearchDecoder | None = None,
    latency: bool = True,
) -> dict[str, Any]:
    """WER/CER on each named corpus (keys ``wer_<name>``, ``cer_<name>``, with its size in
    ``utterances_<name>``, ``words_<name>`` and ``hours_<name>``) and the cost report (timed
    only with `latency`), decoding greedily or with `decoder` (beam search, optionally with an LM).

    Every utterance is decoded and scored: references are compared as text, so a word with a
    character the tokenizer cannot produce counts as an error (with a warning giving how many
    words hold one), and an utterance too short for its transcript is scored like any other.

    When `recogs_dir` is given, writes ``recogs-<name>.txt`` with reference and hypothesis per
    utterance there, all at the end, each starting with a ``# run_id`` line whose id is also the
    result's ``run_id``: files of two runs into the same place can be told apart.
    """
    results: dict[str, Any] = {}
    recogs: dict[str, list[Recognition]] = {}
    for name, source in corpora.items():
        dataset = SpeechDataset(read_corpus(source), rec.tokenizer, rec.features, cache=False, training=False)
        recs = recognize_dataset(
            rec, dataset, device=device, progress=progress, desc=f"decode {name}", decoder=decoder
        )
        refs = [r.ref for r in recs]
        n_words, chars = _unspellable_words(rec, refs)
        if n_words:
            log.warning(
                "%s: %d of %d reference words hold characters the model cannot produce (%s); "
                "they count as errors",
                name,
                n_words,
                sum(len(r.split()) for r in refs),
                " ".join(chars),
            )
        rates = error_rates(refs, [r.hyp for r in recs])
        results[f"wer_{name}"] = rates["wer"]
        results[f"cer_{name}"] = rates["cer"]
        results[f"utterances_{name}"] = len(recs)
        results[f"words_{name}"] = sum(len(ref.split()) for ref in refs)
        results[f"hours_{name}"] = sum(u.duration for u in dataset.utts) / 3600
        recogs[name] = recs
    results.update(cost_report(rec, threads=threads, latency=latency))
    if recogs_dir is not None:
        run_id = uuid.uuid4().hex
        results["run_id"] = run_id
        for name, recs in recogs.items():
            lines = [f"# run_id {run_id}"]
            lines += [f"{r.utt_id}\tref={r.ref}\n{r.utt_id}\thyp={r.hyp}" for r in recs]
            atomic_write_text(recogs_path(recogs_dir, name), "\n".join(lines) + "\n")
    return results
