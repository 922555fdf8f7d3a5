"""The `conformer-prune` command line: one subcommand, one function (`cmd_NAME`), its arguments
declared beside it (`_add_NAME`). What the subcommands run lives in the library.

Usage:
    conformer-prune demo   # or: conformer-prune demo --teacher runs/teacher/model.pt --work runs/demo-mine
    conformer-prune synth corpus --hours 0.5
    conformer-prune train --data corpus/train --dev corpus/dev --out runs/teacher --config teacher
    conformer-prune evaluate runs/teacher/model.pt --data corpus/dev corpus/test --json eval.json
    conformer-prune errors runs/eval/recogs-test.txt --train corpus/train   # by speaker, seen words
    conformer-prune compare runs/eval-a runs/eval-b   # B minus A per split, paired-bootstrap 95%
    conformer-prune transcribe runs/teacher/model.pt corpus/test/*/*/*.flac
    conformer-prune export runs/pruned-50/model.pt --onnx pruned.onnx --int8 --data corpus/test
    conformer-prune transcribe --onnx pruned.onnx corpus/test/*/*/*.flac   # no PyTorch needed
    conformer-prune export runs/pruned-50/model.pt --sherpa-onnx sherpa/   # for sherpa-onnx
    conformer-prune lm --data corpus/train --out lm.arpa   # then: evaluate/transcribe --beam 50 --lm lm.arpa
    conformer-prune import-nemo stt_en_conformer_ctc_small.nemo --out runs/nemo-small/teacher.pt
    torchrun --nproc_per_node 8 -m conformer_prune.cli prune ...   # train and prune: data-parallel

Only the standard library and the config module are imported at start-up: each subcommand imports
what it needs, so that `transcribe --onnx` runs where PyTorch is not installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from conformer_prune.config import RECIPES, ConfigError, recipe_path
from conformer_prune.prune.methods import METHODS

__all__ = ["main"]

_Subparsers = argparse._SubParsersAction  # what `add_subparsers` returns: one parser per subcommand


def _corpora(sources: list[str]) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after its directory or file stem)."""
    out = {}
    for item in sources:
        name, _, path = item.rpartition("=")
        out[name or Path(path).stem] = path
    return out


def _add_decoding_args(p: argparse.ArgumentParser) -> None:
    """Beam search and n-gram LM options of `transcribe` and `evaluate`."""
    p.add_argument("--beam", type=int, help="CTC beam search with N hypotheses (default: greedy)")
    p.add_argument("--lm", help="word n-gram LM for beam search: FILE.arpa or KenLM FILE.bin")
    p.add_argument("--lm-weight", type=float, default=0.5, help="weight of the LM log-probability")
    p.add_argument("--word-score", type=float, default=0.0, help="word-insertion bonus (per word)")
    p.add_argument("--lexicon", help="words the decoder may output, one per line (default: the ARPA's)")


def _beam_decoder(args: argparse.Namespace, tokenizer: Any) -> Any:
    """A `BeamSearchDecoder` from the decoding options, or None for greedy decoding."""
    if args.beam is None and args.lm is None:
        return None
    from conformer_prune.evaluate.decode import BeamSearchConfig, BeamSearchDecoder

    config = BeamSearchConfig(
        beam=BeamSearchConfig.beam if args.beam is None else args.beam,
        lm=Path(args.lm) if args.lm else None,
        lm_weight=args.lm_weight,
        word_score=args.word_score,
        lexicon=Path(args.lexicon) if args.lexicon else None,
    )
    return BeamSearchDecoder(tokenizer, config)


def _subcommand(
    sub: _Subparsers, name: str, func: object, help_: str, example: str
) -> argparse.ArgumentParser:
    """A subcommand's parser, its help ending with a command to paste."""
    p = sub.add_parser(
        name,
        help=help_.replace("%", "%%"),  # argparse %-formats help strings, not descriptions
        description=help_,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def _add_synth(sub: _Subparsers) -> None:
    p = _subcommand(
        sub,
        "synth",
        cmd_synth,
        "Synthesise an English speech corpus in LibriSpeech layout.",
        "conformer-prune synth corpus --hours 0.5 --seed 0",
    )
    p.add_argument("out", help="output directory (train/, dev/, test/ inside)")
    p.add_argument("--hours", type=float, default=0.5, help="total hours of audio (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--snr",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="add noise at an SNR (dB) drawn in [LO, HI]",
    )
    p.add_argument(
        "--unseen-hours",
        type=float,
        default=0.0,
        help="hours of a test-unseen split: voices and text no other split has (default: none)",
    )
    p.add_argument(
        "--dev-unseen-hours",
        type=float,
        default=0.0,
        help="hours of a dev-unseen split: dev's text in voices no other split has (default: none)",
    )
    p.add_argument(
        "--voice-set",
        choices=("narrow", "wide"),  # synth.VoiceSet (not imported: the CLI starts light)
        default="narrow",
        help="the training voices: the narrow set (13 espeak-ng variants, 2 settings of each other "
        "voice) or the wide set, the reference corpus's (63 variants, 10 settings of each other voice)",
    )
    p.add_argument("--workers", type=int, default=2)


def cmd_synth(args: argparse.Namespace) -> None:
    from conformer_prune.data.synth import synthesize

    snr = tuple(args.snr) if args.snr else None
    stats = synthesize(
        args.out,
        args.hours,
        seed=args.seed,
        snr_db=snr,
        unseen_hours=args.unseen_hours,
        dev_unseen_hours=args.dev_unseen_hours,
        voice_set=args.voice_set,
        workers=args.workers,
    )
    print(json.dumps(stats, indent=2))


def _add_train(sub: _Subparsers) -> None:
    p = _subcommand(
        sub,
        "train",
        cmd_train,
        "Train a Conformer-CTC recognizer.",
        "conformer-prune train --data corpus/train --dev corpus/dev --out runs/teacher --config teacher",
    )
    p.add_argument("--data", required=True, help="training corpus: LibriSpeech-layout directory or manifest")
    p.add_argument("--dev", required=True, help="dev corpus for validation and model selection")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", help=f"YAML file or a shipped recipe: {', '.join(RECIPES)}")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. optim.lr=1e-3")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")


def cmd_train(args: argparse.Namespace) -> None:
    from conformer_prune.config import load_config
    from conformer_prune.data.corpus import read_corpus
    from conformer_prune.distributed import is_main_process
    from conformer_prune.train import TrainConfig, run_training
    from conformer_prune.utils import check_output_dir

    check_output_dir(args.out)
    config = recipe_path(args.config) if args.config else None
    if args.resume and config is None:
        config = Path(args.out) / "config.yaml"  # continue with the run's own resolved config
    cfg = load_config(TrainConfig, config, args.set)
    best = run_training(cfg, read_corpus(args.data), read_corpus(args.dev), args.out, resume=args.resume)
    if is_main_process():
        print(f"best model: {best}")


def _add_evaluate(sub: _Subparsers) -> None:
    p = _subcommand(
        sub,
        "evaluate",
        cmd_evaluate,
        "WER/CER, parameters, MACs and CPU latency of a model.",
        "conformer-prune evaluate runs/teacher/model.pt --data corpus/dev corpus/test --json eval.json",
    )
    p.add_argument("model", help="checkpoint (.pt)")
    p.add_argument("--data", nargs="+", required=True, help="corpora, as PATH or NAME=PATH")
    p.add_argument("--json", help="write the results here (and recogs-NAME.txt beside it)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json and recogs files")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the latency figure")
    p.add_argument("--device", default="auto")
    _add_decoding_args(p)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from conformer_prune.evaluate import evaluate_recognizer
    from conformer_prune.evaluate.report import decoding_name, format_results
    from conformer_prune.evaluate.run import recogs_path
    from conformer_prune.model import load_recognizer
    from conformer_prune.utils import check_output_file, resolve_device, write_json

    json_path = Path(args.json) if args.json else None
    if json_path:  # before any work: a run that cannot write its results is refused at once
        for path in [json_path, *(recogs_path(json_path.parent, name) for name in _corpora(args.data))]:
            check_output_file(path, force=args.force)
    rec = load_recognizer(args.model)
    decoder = _beam_decoder(args, rec.tokenizer)
    results = evaluate_recognizer(
        rec,
        _corpora(args.data),
        device=resolve_device(args.device),
        threads=args.threads,
        recogs_dir=json_path.parent if json_path else None,
        decoder=decoder,
    )
    results["model"] = str(args.model)
    results["decoding"] = decoding_name(decoder)
    if json_path:
        write_json(json_path, results)
    print(format_results(results))


def _add_errors(sub: _Subparsers) -> None:
    p = _subcommand(
        sub,
        "errors",
        cmd_errors,
        "Where the errors of an evaluation are: WER per speaker (worst first) and the error rate of "
        "reference words the training text has and lacks, from the recogs-NAME.txt files that "
        "`evaluate --json` writes.",
        "conformer-prune errors runs/eval/recogs-test.txt --train corpus/train --json errors.json",
    )
    p.add_argument("recogs", nargs="+", help="recogs-NAME.txt files written by `evaluate --json`")
    p.add_argument("--train", nargs="+", help="training corpora: their transcripts' words are the known ones")
    p.add_argument(
        "--speaker-pattern",
        default=None,
        help="regular expression whose first group is an utterance id's speaker "
        "(default: LibriSpeech's, the id up to its first '-')",
    )
    p.add_argument("--json", help="write the breakdowns here, one per recogs file")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json")


def cmd_errors(args: argparse.Namespace) -> None:
    from conformer_prune.data.corpus import read_corpus
    from conformer_prune.evaluate.breakdown import LIBRISPEECH_SPEAKER, breakdown
    from conformer_prune.evaluate.report import format_breakdown
    from conformer_prune.evaluate.run import read_recogs
    from conformer_prune.utils import check_output_file, write_json

    if args.json:
        check_output_file(args.json, force=args.force)
    known = (
        {w for source in args.train for u in read_corpus(source) for w in u.text.split()}
        if args.train
        else None
    )
    pattern = args.speaker_pattern or LIBRISPEECH_SPEAKER
    results = {path: breakdown(read_recogs(Path(path)), known, pattern) for path in args.recogs}
    print("\n\n".join(format_breakdown(path, result) for path, result in results.items()))
    if args.json:
        write_json(Path(args.json), results)


def _add_compare(sub: _Subparsers) -> None:
    p = _subcommand(
        sub,
        "compare",
        cmd_compare,
        "Two systems' WER on the same utterances, and B's minus A's with its paired-bootstrap 95% "
        "interval, from the recogs-NAME.txt files that `evaluate --json` writes: two files, or two "
        "directories (every split whose recogs both hold).",
        "conformer-prune compare runs/eval-a runs/eval-b --json a-vs-b.json",
    )
    p.add_argument("a", help="system A: a recogs-NAME.txt file, or a directory of them")
    p.add_argument("b", help="system B: the same for the same utterances")
    p.add_argument("--json", help="write the comparison here, one entry per split")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json")


def _recogs_pairs(a: Path, b: Path) -> dict[str, tuple[Path, Path]]:
    """Split name -> (A's, B's) recogs file: the two files, or the splits two directories share."""
    for path in (a, b):
        if not path.exists():
            raise FileNotFoundError(f"{path}: expected a recogs-NAME.txt file or a directory of them")
    if a.is_dir() != b.is_dir():
        raise ValueError(f"expected two recogs files or two directories, found {a} and {b}")
    if not a.is_dir():
        return {a.name.removeprefix("recogs-").removesuffix(".txt"): (a, b)}
    names = {path.name for path in a.glob("recogs-*.txt")} & {path.name for path in b.glob("recogs-*.txt")}
    if not names:
        raise ValueError(f"expected recogs-NAME.txt files of the same split in {a} and {b}; found none")
    return {n.removeprefix("recogs-").removesuffix(".txt"): (a / n, b / n) for n in sorted(names)}


def cmd_compare(args: argparse.Namespace) -> None:
    from conformer_prune.evaluate.metrics import error_rates
    from conformer_prune.evaluate.report import format_interval
    from conformer_prune.evaluate.run import compare_recognitions, read_recogs
    from conformer_prune.utils import check_output_file, write_json

    if args.json:
        check_output_file(args.json, force=args.force)
    results = {}
    for split, (path_a, path_b) in _recogs_pairs(Path(args.a), Path(args.b)).items():
        rec_a, rec_b = read_recogs(path_a), read_recogs(path_b)
        versus = compare_recognitions(rec_a, rec_b, f"{path_a} and {path_b}")  # checks they match
        wers = {
            f"wer_{name}": error_rates([r for r, _ in rec.values()], [h for _, h in rec.values()])["wer"]
            for name, rec in (("a", rec_a), ("b", rec_b))
        }
        results[split] = {"utterances": versus.pop("utterances"), "words": versus.pop("words"), **wers}
        results[split]["b_minus_a"] = versus
    for split, r in results.items():
        print(
            f"{split}: {r['utterances']:,} utterances, {r['words']:,} words; WER A {100 * r['wer_a']:.2f}%, "
            f"B {100 * r['wer_b']:.2f}%; B minus A {format_interval(r['b_minus_a'])} points "
            "(paired bootstrap, 95%)"
        )
    if args.json:
        write_json(Path(args.json), {"a": args.a, "b": args.b, "splits": results})


def _add_transcribe(sub: _Subparsers) -> None:
    p = _subcommand(
        sub,
        "transcribe",
        cmd_transcribe,
        "Print greedy transcripts of audio files.",
        "conformer-prune transcribe runs/teacher/model.pt a.flac b.wav   # or: --onnx model.onnx a.flac",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="MODEL FILE", help="checkpoint (.pt) then audio files (any rate)"
    )
    p.add_argument("--onnx", help="an exported .onnx file: transcribe with ONNX Runtime, no checkpoint")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    _add_decoding_args(p)


def cmd_transcribe(args: argparse.Namespace) -> None:
    from conformer_prune.data.audio import load_audio

    if args.onnx:  # ONNX Runtime alone: PyTorch is not imported on this path
        from conformer_prune.export.runtime import OnnxRecognizer

        files = args.inputs
        onnx_rec = OnnxRecognizer(args.onnx, threads=args.threads)
        onnx_decoder = _beam_decoder(args, onnx_rec.tokenizer)
        for path in files:
            waves = [load_audio(path, onnx_rec.sample_rate)]
            if onnx_decoder:
                text = onnx_decoder.decode(*onnx_rec.log_probs(waves))
            else:
                text = onnx_rec.transcribe(waves)
            print(f"{path}\t{text[0]}")
        return
    from conformer_prune.model import load_recognizer
    from conformer_prune.utils import resolve_device

    if len(args.inputs) < 2:
        raise ValueError("expected a checkpoint and at least one audio file (or --onnx FILE.onnx)")
    model, *files = args.inputs
    rec = load_recognizer(model)
    device = resolve_device(args.device)
    decoder = _beam_decoder(args, rec.tokenizer)
    for path in files:
        audio = load_audio(path, rec.features.config.sample_rate)
        text = rec.transcribe([audio], device=device, decode=decoder.decode if decoder else None)[0]
        print(f"{path}\t{text}")


def _add_export(sub: _Subparsers) -> None:
    p = _subcommand(
        sub,
        "export",
        cmd_export,
        "Export a model to ONNX (waveforms to CTC log-probabilities) and verify it against PyTorch.",
        "conformer-prune export runs/pruned-50/model.pt --onnx pruned.onnx --int8 --data corpus/test",
    )
    p.add_argument("model", help="checkpoint (.pt)")
    p.add_argument("--onnx", help="output file; --int8 also writes NAME.int8.onnx")
    p.add_argument(
        "--sherpa-onnx",
        metavar="DIR",
        help="also (or instead) write model.onnx, model.int8.onnx and tokens.txt for sherpa-onnx here",
    )
    p.add_argument(
        "--int8",
        nargs="?",
        const="dynamic",
        choices=["dynamic", "static", "hybrid"],  # export.onnx.INT8_MODES (imported lazily)
        help="also write an int8 model NAME.int8.onnx: dynamic (when no value is given), static "
        "(activation ranges calibrated on --calibration, QDQ) or hybrid (the convolutions static, "
        "the Linear layers dynamic; fastest at 1 thread)",
    )
    p.add_argument(
        "--int8-ops",
        nargs="+",
        metavar="OP",
        help="operators to quantize, of MatMul Gemm Conv (MatMul and Gemm are the Linear layers, "
        "Conv the convolutions; default: MatMul Gemm for dynamic, all three for static and hybrid)",
    )
    p.add_argument(
        "--int8-modules",
        nargs="+",
        metavar="MODULE",
        help="parts of the model to quantize, of subsampling feed_forward attention convolution "
        "head (default: all; the log-mel front end is never quantized)",
    )
    p.add_argument(
        "--calibration", help="a corpus (e.g. corpus/train) for --int8 static or hybrid; not the test set"
    )
    p.add_argument(
        "--calibration-utterances", type=int, default=32, help="utterances of --calibration to use"
    )
    p.add_argument(
        "--no-frontend", action="store_true", help="export features-to-log-probs, without the log-mel"
    )
    p.add_argument(
        "--stft-frontend",
        action="store_true",
        help="write the front end's spectrum as an ONNX STFT instead of matrix products (5x slower "
        "in ONNX Runtime; for runtimes without MatMul fusions, or to compare)",
    )
    p.add_argument("--data", help="a corpus: verify on its audio and report the WER of each export")
    p.add_argument("--teacher", help="the unpruned teacher, to record the sparsity in the metadata")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for the checks")
    p.add_argument("--force", action="store_true", help="overwrite existing --onnx and --sherpa-onnx files")


def cmd_export(args: argparse.Namespace) -> None:
    from conformer_prune.export import export_with_report
    from conformer_prune.export.onnx import CALIBRATED_MODES, INT8_DEFAULTS, check_int8_choices
    from conformer_prune.export.run import int8_path
    from conformer_prune.export.sherpa import SHERPA_FILES
    from conformer_prune.utils import check_output_file

    if not args.onnx and not args.sherpa_onnx:
        raise ValueError("expected --onnx FILE.onnx and/or --sherpa-onnx DIR")
    if args.int8 in CALIBRATED_MODES and not args.calibration:
        raise ValueError(f"--int8 {args.int8} needs --calibration CORPUS (utterances to calibrate on)")
    if args.calibration and args.int8 not in CALIBRATED_MODES:
        raise ValueError(f"--calibration is for --int8 static or hybrid, found --int8 {args.int8}")
    if args.calibration_utterances < 1:
        raise ValueError(f"--calibration-utterances must be at least 1, found {args.calibration_utterances}")
    if args.int8:
        ops, modules = INT8_DEFAULTS[args.int8]
        check_int8_choices(args.int8_ops or ops, args.int8_modules or modules)
    elif args.int8_ops or args.int8_modules:
        raise ValueError("--int8-ops and --int8-modules choose what --int8 quantizes; add --int8")
    outputs = [Path(args.onnx), *([int8_path(Path(args.onnx))] if args.int8 else [])] if args.onnx else []
    if args.sherpa_onnx:
        outputs += [Path(args.sherpa_onnx) / name for name in SHERPA_FILES]
    for path in outputs:  # before any work
        check_output_file(path, force=args.force)
    if args.sherpa_onnx:
        from conformer_prune.export.sherpa import export_sherpa_with_report

        report = export_sherpa_with_report(
            Path(args.model),
            Path(args.sherpa_onnx),
            data=Path(args.data) if args.data else None,
            threads=args.threads,
        )
        print(json.dumps(report, indent=2))
        if not args.onnx:
            return
    report = export_with_report(
        Path(args.model),
        Path(args.onnx),
        frontend=not args.no_frontend,
        matmul_frontend=not args.stft_frontend,
        int8=args.int8,
        int8_ops=args.int8_ops,
        int8_modules=args.int8_modules,
        calibration=Path(args.calibration) if args.calibration else None,
        calibration_utterances=args.calibration_utterances,
        data=Path(args.data) if args.data else None,
        threads=args.threads,
        teacher=Path(args.teacher) if args.teacher else None,
    )
    print(json.dumps(report, indent=2))


def _add_lm(sub: _Subparsers) -> None:
    p = _subcommand(
        sub,
        "lm",
        cmd_lm,
        "Estimate a word n-gram LM (ARPA) of corpus transcripts with KenLM's lmplz, for --lm.",
        "conformer-prune lm --data corpus/train --out runs/lm/3gram.arpa --order 3",
    )
    p.add_argument("--data", nargs="+", required=True, help="corpora (LibriSpeech dir or manifest)")
    p.add_argument("--out", required=True, help="the ARPA file to write")
    p.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    p.add_argument("--lmplz", help="path of KenLM's lmplz (default: beside Python, then PATH)")


def cmd_lm(args: argparse.Namespace) -> None:
    from conformer_prune.data.corpus import read_corpus
    from conformer_prune.evaluate.lm import build_arpa

    texts = [u.text for source in args.data for u in read_corpus(source)]
    path = build_arpa(texts, args.out, order=args.order, lmplz=args.lmplz)
    print(f"{args.order}-gram LM of {len(texts)} transcripts: {path}")


def _add_import_nemo(sub: _Subparsers) -> None:
    p = _subcommand(
        sub,
        "import-nemo",
        cmd_import_nemo,
        "Convert a NeMo Conformer-CTC or FastConformer model (.nemo: EncDecCTCModelBPE, or the CTC head "
        "of EncDecHybridRNNTCTCBPEModel) into a checkpoint.",
        "conformer-prune import-nemo stt_en_conformer_ctc_small.nemo --out runs/nemo-small/teacher.pt",
    )
    p.add_argument("nemo", help="the .nemo file")
    p.add_argument("--out", required=True, help="the checkpoint to write (.pt)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")


def cmd_import_nemo(args: argparse.Namespace) -> None:
    from conformer_prune.evaluate.metrics import count_params
    from conformer_prune.model.nemo import import_nemo
    from conformer_prune.utils import check_output_file

    check_output_file(args.out, force=args.force)
    rec = import_nemo(Path(args.nemo), Path(args.out))
    cfg = rec.model.config
    print(
        f"{args.out}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.heads[0]} heads, "
        f"vocabulary {cfg.vocab_size} + blank, {count_params(rec.model):,} parameters "
        f"(from {args.nemo}, NeMo {rec.meta['source']['nemo_version'] or 'version unknown'})"
    )
    if "dropped" in rec.meta["source"]:
        print(f"left out: {rec.meta['source']['dropped']}")


def _add_prune(sub: _Subparsers) -> None:
    p = _subcommand(
        sub,
        "prune",
        cmd_prune,
        "Prune a teacher with L0 gates and layerwise distillation, then slice it.",
        "conformer-prune prune --teacher runs/teacher/model.pt --data corpus/train --dev corpus/dev "
        "--test corpus/test --target-params 0.5 --out runs/pruned-50",
    )
    p.add_argument("--teacher", required=True, help="the trained model to compress (.pt)")
    p.add_argument("--data", required=True, help="training corpus")
    p.add_argument("--dev", required=True, help="dev corpus (validation)")
    p.add_argument("--test", help="test corpus, evaluated at the end")
    p.add_argument("--out", required=True, help="run directory")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-params", type=float, help="kept fraction of parameters (default 0.5)")
    target.add_argument("--target-macs", type=float, help="kept fraction of MACs per second of audio")
    target.add_argument(
        "--target-latency",
        type=float,
        help="kept fraction of the teacher's latency on --latency-runtime (predicted by a latency "
        "table; the sliced model's measured latency is reported beside it)",
    )
    for metric, what in (("params", "parameters"), ("macs", "MACs"), ("latency", "latency")):
        p.add_argument(
            f"--max-{metric}",
            type=float,
            help=f"ceiling: at most this fraction of the teacher's {what}, met together with the target "
            "(l0 and l0-distill)",
        )
    p.add_argument(
        "--latency-table",
        help="the table of --target-latency or --max-latency (conformer-prune profile); default: "
        "profile the teacher at the start of the run",
    )
    p.add_argument(
        "--latency-runtime",
        choices=["torch", "ort", "ort-int8"],
        help="runtime of the profile the run makes without --latency-table (default ort)",
    )
    p.add_argument(
        "--method",
        choices=list(METHODS),
        help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()) + " (default l0-distill)",
    )
    p.add_argument("--config", help="YAML file with PruneConfig fields")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. prune_epochs=20"
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the latency figures")


def cmd_prune(args: argparse.Namespace) -> None:
    from conformer_prune.config import load_config
    from conformer_prune.prune.config import PruneConfig
    from conformer_prune.prune.report import prune_and_report
    from conformer_prune.utils import check_output_dir

    check_output_dir(args.out)
    overrides = list(args.set)
    if args.target_macs is not None:
        overrides += ["target_params=null", f"target_macs={args.target_macs}"]
    elif args.target_latency is not None:
        overrides += ["target_params=null", f"target_latency={args.target_latency}"]
    elif args.target_params is not None:
        overrides += [f"target_params={args.target_params}"]
    for metric in ("params", "macs", "latency"):
        ceiling = getattr(args, f"max_{metric}")
        if ceiling is not None:
            overrides.append(f"max_{metric}={ceiling}")
    if args.method:
        overrides.append(f"method={args.method}")
    if args.latency_table:
        overrides.append(f"latency_table={args.latency_table}")
    if args.latency_runtime:
        overrides.append(f"latency_runtime={args.latency_runtime}")
    config = Path(args.config) if args.config else None
    if args.resume and config is None:
        config = Path(args.out) / "prune_config.yaml"
    cfg = load_config(PruneConfig, config, overrides)
    evaluated = {"dev": Path(args.dev)} | ({"test": Path(args.test)} if args.test else {})
    prune_and_report(
        cfg,
        Path(args.teacher),
        Path(args.data),
        Path(args.dev),
        evaluated,
        Path(args.out),
        args.resume,
        args.threads,
    )


def _add_profile(sub: _Subparsers) -> None:
    p = _subcommand(
        sub,
        "profile",
        cmd_profile,
        "Measure the latency of a model's prunable parts on a runtime: the table of --target-latency.",
        "conformer-prune profile runs/teacher/model.pt --runtime ort --threads 2 --out latency-ort.json",
    )
    p.add_argument("model", help="the model whose shape is profiled (.pt; its weights do not matter)")
    p.add_argument("--out", required=True, help="the latency table (.json)")
    p.add_argument("--runtime", choices=["torch", "ort", "ort-int8"], default="ort", help="default ort")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument("--batch", type=int, default=1, help="utterances per forward pass (default 1)")
    p.add_argument("--seconds", type=float, default=10.0, help="utterance length (default 10 s)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds; each graph keeps its median")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")


def cmd_profile(args: argparse.Namespace) -> None:
    from conformer_prune.evaluate.profile import profile_latency, write_table
    from conformer_prune.model.checkpoint import load_recognizer
    from conformer_prune.utils import check_output_file

    check_output_file(args.out, force=args.force)
    for name in ("threads", "batch", "rounds"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name}: expected at least 1, found {getattr(args, name)}")
    if args.seconds <= 0:
        raise ValueError(f"--seconds: expected a positive length, found {args.seconds}")
    cfg = load_recognizer(args.model).model.config
    table = profile_latency(cfg, args.runtime, args.threads, args.batch, args.seconds, args.rounds)
    write_table(table, Path(args.out))
    parts = table["parts"]
    print(
        f"{args.out}: {args.runtime}, {args.threads} threads, batch {args.batch}, {args.seconds:g} s; "
        f"whole model {table['model_ms'][-1]:.2f} ms; per module at full width: feed-forward "
        f"{parts['ffn']['ms'][-1][-1]:.3f} ms, attention {parts['heads']['ms'][-1][-1]:.3f} ms, "
        f"convolution {parts['conv']['ms'][-1][-1]:.3f} ms; "
        f"front end {parts['frontend']['ms'][-1][-1]:.2f} ms "
        f"(profiled in {table['profile_seconds']:.0f} s)"
    )


def _add_demo(sub: _Subparsers) -> None:
    p = _subcommand(
        sub,
        "demo",
        cmd_demo,
        "The main job on the committed reference teacher: a small subset of the reference corpus, "
        "50% pruning with layerwise distillation, teacher and pruned model side by side, ONNX export.",
        "conformer-prune demo --work runs/demo",
    )
    p.add_argument("--work", default="runs/demo", help="working directory (stages are cached here)")
    p.add_argument(
        "--teacher",
        help="the trained model to prune (.pt; default: the repository's benchmarks/models/teacher.pt)",
    )
    p.add_argument("--hours", type=float, help="hours of the reference corpus's train/dev/test (default 1)")
    p.add_argument("--unseen-hours", type=float, help="hours of its test-unseen split (default 0.1)")
    p.add_argument("--workers", type=int, default=2, help="synthesis processes and evaluation threads")
    p.add_argument("--prune-set", nargs="*", default=[], metavar="KEY=VALUE", help="pruning overrides")


def cmd_demo(args: argparse.Namespace) -> None:
    from conformer_prune.demo import DEFAULT_TEACHER, DEMO_HOURS, DEMO_UNSEEN_HOURS, run_demo

    run_demo(
        Path(args.work),
        teacher=Path(args.teacher) if args.teacher else DEFAULT_TEACHER,
        hours=DEMO_HOURS if args.hours is None else args.hours,
        unseen_hours=DEMO_UNSEEN_HOURS if args.unseen_hours is None else args.unseen_hours,
        workers=args.workers,
        prune_overrides=args.prune_set,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conformer-prune",
        description="Make Conformer-CTC speech recognizers smaller and faster.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `conformer-prune demo` for the whole job on embedded defaults.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_synth(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_errors(sub)
    _add_compare(sub)
    _add_transcribe(sub)
    _add_export(sub)
    _add_lm(sub)
    _add_import_nemo(sub)
    _add_prune(sub)
    _add_profile(sub)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    # OSError covers unreadable and unwritable files; FloatingPointError a diverged loss
    except (OSError, ConfigError, ValueError, FloatingPointError) as err:
        message = " ".join(str(err).split())  # one line, whatever the library wrote
        print(f"conformer-prune {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
