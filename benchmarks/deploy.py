"""Deployment figures: greedy against beam search with a word 3-gram LM for the reference teacher
and pruned model, and the pruned model through sherpa-onnx beside our runtime.

Usage:
    python benchmarks/deploy.py          # after benchmarks/teacher.py has built the corpus
    python benchmarks/deploy.py --docs   # rewrite the docs section from benchmarks/results/deploy.json

The LM is estimated by KenLM's lmplz (`make lmplz`) on the training transcripts only. The LM
weight and word-insertion score are chosen per model on dev (grid below, beam 50), then test is
decoded once with the chosen values. Every WER comes with its utterance and word counts;
differences come with paired-bootstrap 95% intervals (Bisani and Ney, 2004). Writes
benchmarks/results/deploy.json and the `deploy` section of docs/benchmark.md. Each model's
decoding is a cached stage (benchmarks/cache/deploy/<model>.json, redone when the model file
changes), so an interrupted run resumes; on the reference corpus a model takes about 8 minutes on
2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch

from conformer_prune.ctc import best_path
from conformer_prune.data.audio import load_audio
from conformer_prune.data.corpus import Utterance, read_corpus
from conformer_prune.evaluate.decode import BeamSearchConfig, BeamSearchDecoder, arpa_unigrams
from conformer_prune.evaluate.lm import build_arpa
from conformer_prune.evaluate.metrics import error_rates, paired_bootstrap_wer
from conformer_prune.evaluate.report import format_interval as _interval
from conformer_prune.export.sherpa import (
    export_sherpa,
    sherpa_features,
    sherpa_recognizer,
    sherpa_transcribe,
)
from conformer_prune.model.checkpoint import Recognizer, load_recognizer
from conformer_prune.utils import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    PRUNED,
    REFERENCE_CORPUS_DIR,
    TEACHER,
    command_line,
    file_digest,
    git_commit,
    load_result,
    save_result,
    update_doc_section,
)

DEPLOYED = {"teacher": TEACHER, "pruned-50": PRUNED}
BEAM = 50
LM_WEIGHTS = (0.5, 1.0, 1.5, 2.0, 3.0)
WORD_SCORES = (-3.0, -2.0, -1.0, 0.0)
BATCH = 8


def log_probs(rec: Recognizer, waves: list[np.ndarray], frontend: str = "ours") -> list[np.ndarray]:
    """Per-utterance log-probabilities (T', V) from PyTorch, on our front end or on the features
    sherpa-onnx computes (then cut to ``T // 4`` frames, as sherpa-onnx decodes)."""
    model = rec.model.eval()
    out: list[np.ndarray] = []
    for i in range(0, len(waves), BATCH):
        chunk = waves[i : i + BATCH]
        with torch.no_grad():
            if frontend == "ours":
                tensors = [torch.as_tensor(w) for w in chunk]
                lengths = torch.tensor([t.numel() for t in tensors])
                batch = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True)
                feats, feat_lengths = rec.features.eval()(batch, lengths)
                lp, n = model(feats, feat_lengths)
            else:
                frames = [torch.from_numpy(sherpa_features(w)) for w in chunk]
                feat_lengths = torch.tensor([f.shape[0] for f in frames])
                lp, n = model(torch.nn.utils.rnn.pad_sequence(frames, batch_first=True), feat_lengths)
                n = torch.minimum(n, feat_lengths // 4)
        out += [row[: int(k)].numpy() for row, k in zip(lp, n, strict=True)]
    return out


def greedy(rec: Recognizer, lps: list[np.ndarray]) -> list[str]:
    return [rec.tokenizer.decode(best_path(lp.argmax(-1), len(lp), rec.model.blank)) for lp in lps]


def wer_entry(refs: list[str], hyps: list[str]) -> dict[str, Any]:
    return {
        "wer": error_rates(refs, hyps)["wer"],
        "utterances": len(refs),
        "words": sum(len(r.split()) for r in refs),
    }


def contrast_bootstrap(
    refs: list[str], systems: dict[str, list[str]], weights: dict[str, float], resamples: int = 10000
) -> dict[str, float]:
    """sum_k weights[k] * WER(systems[k]) with a paired-bootstrap 95% interval: utterances are
    resampled with replacement and every system is scored on the same resample."""
    words = torch.tensor([len(r.split()) for r in refs], dtype=torch.float64)
    errors = torch.zeros(len(refs), dtype=torch.float64)
    for name, weight in weights.items():
        out = [jiwer.process_words(r.upper(), h.upper()) for r, h in zip(refs, systems[name], strict=True)]
        errors += weight * torch.tensor(
            [o.substitutions + o.deletions + o.insertions for o in out], dtype=torch.float64
        )
    idx = torch.randint(len(refs), (resamples, len(refs)), generator=torch.Generator().manual_seed(0))
    deltas = errors[idx].sum(1) / words[idx].sum(1)
    low, high = torch.quantile(deltas, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"delta": float(errors.sum() / words.sum()), "low": low, "high": high}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", action="store_true", help="only rewrite the docs from the saved JSON")
    args = parser.parse_args()
    if args.docs:
        write_docs(load_result("deploy"))
        return
    commit = git_commit()
    torch.set_num_threads(2)
    corpus = REFERENCE_CORPUS_DIR
    work = CACHE / "deploy"
    utts: dict[str, list[Utterance]] = {s: read_corpus(corpus / s) for s in ("train", "dev", "test")}
    train_texts = [u.text for u in utts["train"]]
    arpa = build_arpa(train_texts, work / "train-3gram.arpa", order=3)
    vocab = set(arpa_unigrams(arpa))
    refs = {s: [u.text for u in utts[s]] for s in ("dev", "test")}
    waves = {s: [load_audio(u.audio_path, 16000) for u in utts[s]] for s in ("dev", "test")}
    oov = {
        s: sum(w not in vocab for r in refs[s] for w in r.split()) / sum(len(r.split()) for r in refs[s])
        for s in refs
    }
    print(f"LM: {len(vocab)} words from {len(train_texts)} training transcripts; OOV {oov}", flush=True)

    record: dict[str, Any] = {
        "commit": commit,
        "command": command_line(),
        "lm": {"order": 3, "tool": "KenLM lmplz", "words": len(vocab), "train_utterances": len(train_texts)},
        "oov_rate": oov,
        "beam": BEAM,
        "grid": {"lm_weight": list(LM_WEIGHTS), "word_score": list(WORD_SCORES)},
        "models": {},
    }
    hyps: dict[str, dict[str, list[str]]] = {}
    for name, path in DEPLOYED.items():
        # a finished model's stage, so an interrupted run resumes (redone when the model changes)
        stage, digest = work / f"{name}.json", file_digest(path)
        cached = json.loads(stage.read_text(encoding="utf-8")) if stage.exists() else {}
        if cached.get("model_sha256") == digest:
            record["models"][name], hyps[name] = cached["entry"], cached["hyps"]
            print(f"{name}: cached in {stage}", flush=True)
            continue
        rec = load_recognizer(path)
        start = time.perf_counter()
        lps = {s: log_probs(rec, waves[s]) for s in ("dev", "test")}
        entry: dict[str, Any] = {s: {"greedy": wer_entry(refs[s], greedy(rec, lps[s]))} for s in lps}
        dev_grid = []
        for weight, score in itertools.product(LM_WEIGHTS, WORD_SCORES):
            cfg = BeamSearchConfig(beam=BEAM, lm=arpa, lm_weight=weight, word_score=score)
            decoder = BeamSearchDecoder(rec.tokenizer, cfg)
            wer = error_rates(refs["dev"], [decoder.decode_one(lp) for lp in lps["dev"]])["wer"]
            dev_grid.append({"lm_weight": weight, "word_score": score, "wer": wer})
        best = min(dev_grid, key=lambda g: g["wer"])
        decoder = BeamSearchDecoder(
            rec.tokenizer,
            BeamSearchConfig(beam=BEAM, lm=arpa, lm_weight=best["lm_weight"], word_score=best["word_score"]),
        )
        lm_hyps = {s: [decoder.decode_one(lp) for lp in lps[s]] for s in lps}
        for s in lps:
            entry[s]["beam_lm"] = wer_entry(refs[s], lm_hyps[s])
        entry["chosen_on_dev"] = {"lm_weight": best["lm_weight"], "word_score": best["word_score"]}
        entry["dev_grid"] = dev_grid
        greedy_test = greedy(rec, lps["test"])
        entry["test_lm_minus_greedy"] = paired_bootstrap_wer(refs["test"], greedy_test, lm_hyps["test"])
        hyps[name] = {"greedy": greedy_test, "beam_lm": lm_hyps["test"]}
        print(f"{name}: {entry['test']} chosen {best} ({time.perf_counter() - start:.0f} s)", flush=True)
        record["models"][name] = entry
        write_json(stage, {"model_sha256": digest, "entry": entry, "hyps": hyps[name]})

    test_refs = refs["test"]
    record["pruning_loss_test"] = {
        "greedy": paired_bootstrap_wer(test_refs, hyps["teacher"]["greedy"], hyps["pruned-50"]["greedy"]),
        "beam_lm": paired_bootstrap_wer(test_refs, hyps["teacher"]["beam_lm"], hyps["pruned-50"]["beam_lm"]),
        # (pruned - teacher) under LM decoding minus the same under greedy decoding
        "change_under_lm": contrast_bootstrap(
            test_refs,
            {f"{m}/{d}": hyps[m][d] for m in hyps for d in ("greedy", "beam_lm")},
            {"pruned-50/beam_lm": 1, "teacher/beam_lm": -1, "pruned-50/greedy": -1, "teacher/greedy": 1},
        ),
    }

    # sherpa-onnx: the pruned model through its own runtime and front end
    rec = load_recognizer(PRUNED)
    files = export_sherpa(rec, work / "sherpa-pruned-50")
    ours = hyps["pruned-50"]["greedy"]
    on_knf = greedy(rec, log_probs(rec, waves["test"], frontend="sherpa"))
    sherpa_fp32 = sherpa_transcribe(sherpa_recognizer(work / "sherpa-pruned-50", threads=2), waves["test"])
    sherpa_int8 = sherpa_transcribe(
        sherpa_recognizer(work / "sherpa-pruned-50", int8=True, threads=2), waves["test"]
    )
    ours_wer = error_rates(test_refs, ours)["wer"]
    record["sherpa_onnx"] = {
        "max_abs_diff_vs_torch": files.max_abs_diff,
        "ours_torch_greedy": wer_entry(test_refs, ours),
        "ours_on_sherpa_features": wer_entry(test_refs, on_knf),
        "sherpa_onnx_fp32": wer_entry(test_refs, sherpa_fp32),
        "sherpa_onnx_int8": wer_entry(test_refs, sherpa_int8),
        "frontend_cost": paired_bootstrap_wer(test_refs, ours, on_knf),
        "sherpa_fp32_minus_ours": paired_bootstrap_wer(test_refs, ours, sherpa_fp32),
        "sherpa_fp32_relative_to_ours": (error_rates(test_refs, sherpa_fp32)["wer"] - ours_wer) / ours_wer,
        "identical_transcripts_sherpa_vs_ours_on_sherpa_features": sum(
            " ".join(a.split()) == b for a, b in zip(on_knf, sherpa_fp32, strict=True)
        ),
        "identical_transcripts_sherpa_vs_ours": sum(
            " ".join(a.split()) == b for a, b in zip(ours, sherpa_fp32, strict=True)
        ),
    }
    print(record["sherpa_onnx"], flush=True)
    save_result("deploy", record)
    write_docs(record)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def write_docs(record: dict[str, Any]) -> None:
    models = record["models"]
    n = models["teacher"]["test"]["greedy"]
    lines = [
        "## Deployment: beam search with an n-gram LM, and sherpa-onnx",
        "",
        f"Generated by `benchmarks/deploy.py` (commit {record['commit']}). Test set of the reference "
        f"corpus: {n['utterances']} utterances, {n['words']} words (every WER below is on these). LM: "
        f"word 3-gram, KenLM `lmplz` on the {record['lm']['train_utterances']} training transcripts only "
        f"({record['lm']['words']} words; OOV rate dev {_pct(record['oov_rate']['dev'])}%, test "
        f"{_pct(record['oov_rate']['test'])}%, and an OOV word cannot be recognised by lexicon decoding). "
        f"Beam {record['beam']} (flashlight-text); LM weight and word score chosen per model on dev "
        f"({record['models']['teacher']['dev']['greedy']['utterances']} utterances) from "
        f"{record['grid']['lm_weight']} x {record['grid']['word_score']}.",
        "",
        "| model | test WER greedy (%) | test WER beam + LM (%) | LM - greedy, 95% CI (points) "
        "| chosen LM weight, word score |",
        "|---|---:|---:|---:|---|",
    ]
    for name, m in models.items():
        c = m["chosen_on_dev"]
        lines.append(
            f"| {name} | {_pct(m['test']['greedy']['wer'])} | {_pct(m['test']['beam_lm']['wer'])} | "
            f"{_interval(m['test_lm_minus_greedy'])} | {c['lm_weight']}, {c['word_score']} |"
        )
    loss = record["pruning_loss_test"]
    change = loss["change_under_lm"]
    verdict = (
        "rises (the pruned model loses ground)"
        if change["low"] > 0
        else "falls (the pruned model gains ground)"
        if change["high"] < 0
        else "does not change measurably"
    )
    lines += [
        "",
        f"Pruning's WER loss (pruned-50 minus teacher, test, paired bootstrap; negative: the pruned "
        f"model is better): greedy {_interval(loss['greedy'])} points, beam + LM "
        f"{_interval(loss['beam_lm'])} points; the change under LM decoding is {_interval(change)} "
        f"points, so the difference {verdict} under LM decoding.",
        "",
    ]
    s = record["sherpa_onnx"]
    lines += [
        "The reference pruned model through sherpa-onnx (`export --sherpa-onnx`, greedy search, its "
        "kaldi-native-fbank front end) beside our runtime (PyTorch, our front end), same test set:",
        "",
        "| runtime | front end | test WER (%) |",
        "|---|---|---:|",
        f"| ours (PyTorch) | ours (centred STFT, NeMo-style) | {_pct(s['ours_torch_greedy']['wer'])} |",
        f"| ours (PyTorch) | sherpa-onnx's, recomputed with kaldi-native-fbank | "
        f"{_pct(s['ours_on_sherpa_features']['wer'])} |",
        f"| sherpa-onnx fp32 | sherpa-onnx's | {_pct(s['sherpa_onnx_fp32']['wer'])} |",
        f"| sherpa-onnx int8 | sherpa-onnx's | {_pct(s['sherpa_onnx_int8']['wer'])} |",
        "",
        f"sherpa-onnx fp32 minus ours: {_interval(s['sherpa_fp32_minus_ours'])} points "
        f"({100 * s['sherpa_fp32_relative_to_ours']:+.1f}% relative); the front-end difference alone "
        f"(our model on the two front ends): {_interval(s['frontend_cost'])} points. Identical transcripts: "
        f"sherpa-onnx and ours on its features {s['identical_transcripts_sherpa_vs_ours_on_sherpa_features']}"
        f" of {n['utterances']}, sherpa-onnx and ours on our front end "
        f"{s['identical_transcripts_sherpa_vs_ours']} of {n['utterances']}.",
    ]
    update_doc_section("deploy", "\n".join(lines))


if __name__ == "__main__":
    main()
