"""Which distillation choices count (issue 16): choose them on dev, ablate them, and test the
method against `l0` (the same gates without distillation) over seeds.

Usage:
    nohup python benchmarks/distill.py > benchmarks/cache/distill.log 2>&1 &
    # or two runs at a time, one thread each (1.3-1.4x the steps of one 2-thread run, measured by
    # benchmarks/throughput.py); each takes the next run no other holds, the last out writes
    for k in 0 1; do
        nohup python benchmarks/distill.py --jobs 2 > benchmarks/cache/distill-$k.log 2>&1 &
    done
    python benchmarks/distill.py --stage candidates     # stop after a stage
    python benchmarks/distill.py --quick                # same code path on the quick teacher
    python benchmarks/distill.py --only l0 chosen       # train just these runs (reading the others)
    python benchmarks/distill.py --plan --jobs 2        # where every run stands; trains nothing
    python benchmarks/distill.py --precision fp32       # the ablation in fp32, where bf16 is not native
    # (each 1-thread fp32 run holds about 11.5 GB resident, so two fill most of 24 GiB: run nothing
    # heavy beside them, not even stopped; the test suite beside two was ended by the OOM killer)
    python benchmarks/distill.py --record --stage at-30  # the record of the runs finished so far
                                                        # (trains nothing, while others train)
    # (give the --jobs of the processes training: a run not started is named for that thread count)

Every run is the reference pruning recipe (`recipes/prune.yaml`: 50% of the parameters, its data
order, learning rates and the teacher's SpecAugment) at 2 pruning + 1 fine-tuning epochs (pinned:
the split every choice here was made at, whatever the recipe says later), one cached, resumable
run directory of the pruning engine named under benchmarks/cache/distill[-quick]/ (a link into
benchmarks/cache/runs/, shared with the other benchmarks' identical runs), skipped once its
eval.json exists.
Only the distillation settings (and, in the last stages, the seed, the target or the split of the
epochs) differ. Stages:

1. candidates: `base`, the distillation the method had before issue 16 (layer MSE on every block,
   paired by index, CTC weight 1, no KL, no front end, fixed weights), and `base` with one choice
   switched on: `normalized-mse` (per-layer normalisation by the teacher's variance), `l1-cosine`
   (DPHuBERT's distance), `kl` (KL on the CTC posteriors, temperature 2, weight 1), `frontend`
   (the front end's output, weight 1), `dynamic` (CoFi's minimum-distance map of every third
   teacher block onto the student's remaining blocks), `grad-norm` (distillation rescaled to CTC's
   gradient norm), `hard-switch` (kept units jump from E[z] to 1 when the masks are fixed, instead
   of `base`'s fold of E[z] into the weights); and `l0`, no distillation at all (with a second
   seed, `l0-seed1`: how far one seed moves a candidate).
2. chosen: `base` plus every choice whose candidate's dev WER is below `base`'s (of the two layer
   distances, the better one); nothing from test. These are the package's defaults
   (`DistillConfig`, `PruneConfig.mask_switch`). Beside it `chosen-without-distillation`: `l0`
   with every choice of `chosen` that is not distillation (the mask switch), so that distillation
   is all that differs; and `continued`, the equal-training control (the teacher, unpruned,
   trained as long with the same distillation), which every claim at 50% and 30% is measured
   against, and which is compare.py's (it learns no masks, so the split of its epochs does not
   name it).
3. seeds: both again with seeds 1 and 2 (seed 0 is stage 2), for the seed spread.
4. at 30%: `chosen` at 30% of the parameters (against `continued`), and `chosen` at 30% with
   whole-layer gates too (`chosen-30-layers`): whether they belong in the defaults at 30% is
   decided on dev.
5. schedule: `chosen-prune1`, `chosen` with the same three epochs split 1 pruning + 2 fine-tuning
   instead of 2 + 1 (in `chosen`, the pruned model's dev WER still fell 1.15 points in its one
   fine-tuning epoch while `continued`'s flattened); the split with the lower dev WER at 50% is the
   recipe's (1 + 2 since 2026-12-03), and the one compared with `continued` at 50% and, through
   `chosen-30-prune1` (the same split at 30%), at 30%; these two are compare.py's `l0-distill` at
   50% and 30%.
6. ablation: `chosen` with each of its choices switched off in turn (dev and test WER reported).
   Every run so far trained in bf16, and a bf16 run refuses to train on a CPU without native
   bf16. There, `--precision fp32` trains the ablation runs not yet finished in bf16 in fp32
   instead (`chosen-fp32-without-...`), each measured against `chosen-fp32`, `chosen` itself in
   fp32, never against a bf16 run; `chosen-fp32` against `chosen`'s bf16 seeds also measures what
   the precision moves. A choice's bf16 run, where it has finished, is the one reported; where
   its fp32 run has finished, its bf16 run is read, never trained.
7. forward: forward selection on dev, since `chosen` (every candidate that beat `base` on dev, all
   together) scored worse on dev than two of its parts alone. It starts from the candidate best
   on dev and tries adding each next one in the candidates' dev order (those that beat `base`;
   never a second layer distance), one run each (named by its choices, `dynamic+hard-switch`),
   keeping a choice when the combination's dev WER is below the best so far. The rule was fixed
   before its runs. When it ends, its selection is trained at the recipe's 1 + 2 split
   (`selected-prune1`) and compared on dev with `chosen-prune1`: the lower is the recipe's.

Writes benchmarks/results/distill.json and the distill section of docs/benchmark.md: every run's
dev and test WER with split sizes, the paired-bootstrap interval of its test WER against
`chosen`'s, and the last epoch's gradient norms of CTC and of the layer distance (their balance).
The runs take the reference budget each (about 2 hours on 2 CPU cores, measured): plan many sessions,
or a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    TEACHER,
    Jobs,
    command_line,
    git_commit,
    markdown_table,
    old_eval,
    plan_state,
    quick_inputs,
    reference_corpus,
    run_dir,
    save_result,
    timing_model,
    update_doc_section,
)
from prune import SPLITS, evaluated_splits, run_stage, split_sizes, teacher_eval, versus, versus_runs

from conformer_prune.config import load_config, recipe_path
from conformer_prune.prune.config import PruneConfig

BASE = [
    "method=l0-distill",
    "distill.ctc_weight=1.0",
    "distill.layer_weight=1.0",
    "distill.layer_loss=mse",
    "distill.layer_map=same-index",
    "distill.kl_weight=0.0",
    "distill.kl_temperature=1.0",  # the default; pinned so that a chosen default leaves BASE as it is
    "distill.frontend_weight=0.0",
    "distill.balance=fixed",
    "mask_switch=fold",
    "pad_frames_to=1",  # unpadded batches, as every run here trained, whatever the recipe says later
]
# each choice: the overrides that switch it on over BASE
CHOICES: dict[str, list[str]] = {
    "normalized-mse": ["distill.layer_loss=normalized-mse"],
    "l1-cosine": ["distill.layer_loss=l1-cosine"],
    "kl": ["distill.kl_weight=1.0", "distill.kl_temperature=2.0"],
    "frontend": ["distill.frontend_weight=1.0"],
    "dynamic": ["distill.layer_map=dynamic"],
    "grad-norm": ["distill.balance=grad-norm", "distill.probe_every=20"],  # its scale's period, as run
    "hard-switch": ["mask_switch=hard"],
}
CANDIDATES = ("base", *CHOICES)  # what the choice reads
LAYERS = "structures=[heads,ffn,conv,modules,frontend,layers]"
LAYER_LOSSES = ("normalized-mse", "l1-cosine")  # exclusive: at most one is chosen
STAGES = ("candidates", "chosen", "seeds", "at-30", "schedule", "ablation", "forward")
SEEDS = (1, 2)
# record key -> (the pruned run compared with `continued`, the issues' ceiling on their test WER ratio)
AGAINST_CONTINUED = {"at_50": ("chosen", 1.03), "at_30": ("chosen-30", 1.10)}
PRUNE1 = "chosen-prune1"  # `chosen` with 1 pruning + 2 fine-tuning epochs (the schedule stage)
PRUNE1_30 = "chosen-30-prune1"  # the same split at 30% of the parameters
SCHEDULE = ["prune_epochs=1", "finetune_epochs=2"]
UNDISTILLED = "chosen-without-distillation"  # `l0` with `chosen`'s other choices
FP32 = "chosen-fp32"  # `chosen` in fp32: the base of the ablation runs trained where bf16 is not native
SELECTED_PRUNE1 = "selected-prune1"  # forward selection's result at the recipe's 1 + 2 split
RUN_NAMES = (  # every run's name, in the stages' order
    "base",
    "l0",
    *CHOICES,
    "l0-seed1",
    "chosen",
    UNDISTILLED,
    "continued",
    *(f"{m}-seed{seed}" for seed in SEEDS for m in ("chosen", UNDISTILLED)),
    "chosen-30",
    "chosen-30-layers",
    PRUNE1,
    PRUNE1_30,
    *(f"chosen-without-{choice}" for choice in CHOICES),
    FP32,
    *(f"{FP32}-without-{choice}" for choice in CHOICES),
    SELECTED_PRUNE1,
)  # and forward selection's steps, named by their choices (`forward_name`)


def chosen_choices(dev_wer: dict[str, float]) -> list[str]:
    """The choices whose candidate beat `base` on dev; of the layer distances, the better one."""
    better = [c for c in CHOICES if dev_wer[c] < dev_wer["base"]]
    losses = sorted((dev_wer[c], c) for c in better if c in LAYER_LOSSES)
    return [c for c in better if c not in LAYER_LOSSES] + [c for _, c in losses[:1]]


def forward_selection(
    dev_wer: dict[str, float], combined: Callable[[list[str]], float | None]
) -> tuple[list[str], list[tuple[list[str], float | None, bool]]]:
    """Forward selection on dev in the candidates' dev order: start from the best candidate, try
    adding each next one that beat `base` (never a second layer distance), and keep it when the
    combination's dev WER (`combined`; None: not trained yet) is below the best so far. Returns the
    selection and each combination tried with its dev WER and whether it was kept; the selection has
    ended unless the last one tried has None."""
    ranked = sorted((c for c in CHOICES if dev_wer[c] < dev_wer["base"]), key=lambda c: dev_wer[c])
    if not ranked:
        return [], []
    selected, best = ranked[:1], dev_wer[ranked[0]]
    tried: list[tuple[list[str], float | None, bool]] = []
    for choice in ranked[1:]:
        if choice in LAYER_LOSSES and set(selected) & set(LAYER_LOSSES):
            continue
        trial = [*selected, choice]
        wer = combined(trial)
        tried.append((trial, wer, kept := wer is not None and wer < best))
        if wer is None:
            break
        if kept:
            selected, best = trial, wer
    return selected, tried


def forward_name(choices: list[str]) -> str:
    return "+".join(choices)


def is_forward_name(name: str) -> bool:
    parts = name.split("+")
    return len(parts) > 1 and set(parts) <= CHOICES.keys()


def overrides(choices: list[str], *extra: str) -> list[str]:
    return [*BASE, *(o for c in choices for o in CHOICES[c]), *extra]


def grad_norms(run: Path) -> dict[str, float]:
    """The last epoch's gradient norms of CTC and the layer distance (`grad_norm_*` in log.jsonl)."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    last = [r for r in records if "epoch" in r][-1]
    return {k.removeprefix("grad_norm_"): v for k, v in last.items() if k.startswith("grad_norm_")}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="quick teacher and corpus, 1 + 1 epochs")
    parser.add_argument("--stage", choices=STAGES, default=STAGES[-1], help="the last stage to run")
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes sharing the runs (start this many), 1 thread each"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="RUN",
        help="train just these runs (`l0-seed1`, `chosen`, ...), read the finished others, and stop "
        "without writing the record; a later stage's run needs every candidate finished",
    )
    parser.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default="bf16",
        help="the ablation's runs not yet finished in bf16: fp32 trains them in fp32 against `chosen-fp32` "
        "(`chosen` in fp32), on a CPU without native bf16, where bf16 runs refuse to train",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="list every run with where it stands (finished, restored from its record, WER alone from "
        "an old record, training elsewhere, started, to train) and train nothing",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="write the record and the docs section from the runs finished so far, up to --stage, "
        "and train nothing (while other processes still train the rest)",
    )
    args = parser.parse_args()
    if args.only and (unknown := {n for n in args.only if n not in RUN_NAMES and not is_forward_name(n)}):
        parser.error(
            f"--only takes runs named {', '.join(RUN_NAMES)} or forward selection's steps "
            f"(choices joined by '+', `dynamic+hard-switch`); not {sorted(unknown)}"
        )
    commit = git_commit()
    if args.quick:
        corpus, teacher = quick_inputs()
        budget = ["prune_epochs=1", "finetune_epochs=1"]
    else:
        # a plan only names runs, by the corpus's record
        corpus, teacher = reference_corpus(make=not args.plan), TEACHER
        budget = ["prune_epochs=2", "finetune_epochs=1"]  # PRUNE1's SCHEDULE overrides it
    work = CACHE / ("distill-quick" if args.quick else "distill")
    evaluated = evaluated_splits(corpus)
    jobs = Jobs(args.jobs, work)
    with jobs.preparing():
        teacher_result = {} if args.plan else teacher_eval(teacher, evaluated, work / "teacher")
    last = STAGES.index(args.stage)
    reports: dict[str, dict[str, Any]] = {}
    order: list[str] = []  # the runs' names, in the order asked for
    targets: dict[str, Path] = {}  # each name's run directory
    old: set[str] = set()  # runs read from a record older than its recognitions: WERs alone

    def config(extra: list[str]) -> PruneConfig:
        return jobs.config(load_config(PruneConfig, recipe_path("prune"), [*budget, *extra]), teacher, corpus)

    def finished(extra: list[str]) -> bool:
        return (run_dir(config(extra), teacher, corpus) / "eval.json").exists()

    def run(name: str, extra: list[str], compared: bool = False, read: bool = False) -> None:
        """`compared`: a run the claims compare by paired bootstrap (its recognitions needed).
        `read`: read the run if it has finished, never train it."""
        cfg = config(extra)
        target = run_dir(cfg, teacher, corpus)
        kept = None if compared or (args.only and name in args.only) else old_eval(cfg, teacher, corpus)
        finished = (target / "eval.json").exists()
        if read and not finished:
            return
        if args.plan:
            state, shown = (
                ("WER alone, from an old record", target)
                if kept is not None
                else plan_state(cfg, teacher, corpus)
            )
            print(f"{name:<30} {state}  ({shown.name})", flush=True)
            if kept is not None or finished:  # the later stages' choice reads the candidates
                reports[name] = kept if kept is not None else json.loads((target / "eval.json").read_text())
            return
        if (args.record or (args.only and name not in args.only)) and kept is None and not finished:
            return  # neither asked for nor finished
        targets[name] = target
        order.append(name)
        if kept is not None:
            print(f"[{name}] read from its record in results/runs/ (WER alone: no recognitions kept)")
            reports[name] = kept
            old.add(name)
            return

        def train() -> None:
            if not (target / "eval.json").exists():
                print(f"[{name}] {work / name}", flush=True)
            reports[name] = run_stage(
                cfg, teacher, corpus, evaluated, work / name, teacher_result, latency=not jobs.shared
            )

        jobs.run(name, target, train)

    run("base", overrides([]))
    run("l0", [*overrides([]), "method=l0"], compared=True)
    for choice in CHOICES:
        run(choice, overrides([choice]))
    run("l0-seed1", [*overrides([]), "method=l0", "seed=1"])
    jobs.settle(CANDIDATES)  # the choice needs every candidate (another process's too)
    if (args.only or args.plan) and not set(CANDIDATES) <= reports.keys():
        if args.plan:
            print("the later stages wait for the choice: every candidate finished")
        return  # the later stages need the choice
    dev = {name: r["pruned"]["wer_dev"] for name, r in reports.items()}
    chosen = chosen_choices(dev)
    # the later stages' runs depend on the choice only, not on each other
    if last >= 1:
        run("chosen", overrides(chosen), compared=True)
        run(UNDISTILLED, overrides(chosen, "method=l0"), compared=True)
        run("continued", [*overrides(chosen), "method=continued"])
    if last >= 2:
        for seed in SEEDS:
            run(f"chosen-seed{seed}", overrides(chosen, f"seed={seed}"))
            run(f"{UNDISTILLED}-seed{seed}", overrides(chosen, "method=l0", f"seed={seed}"))
    if last >= 3:
        run("chosen-30", overrides(chosen, "target_params=0.3"))
        run("chosen-30-layers", overrides(chosen, "target_params=0.3", LAYERS))
    if last >= 4 and not args.quick:  # the quick budget is 1 + 1 epochs
        run(PRUNE1, overrides(chosen, *SCHEDULE))
        run(PRUNE1_30, overrides(chosen, "target_params=0.3", *SCHEDULE))
    if last >= 5:  # each choice's bf16 run; in fp32 (against chosen-fp32) where that has not finished
        rest = {choice: [c for c in chosen if c != choice] for choice in chosen}
        fp32 = [c for c in chosen if not finished(overrides(rest[c]))]
        for choice in chosen:
            if choice not in fp32 or args.precision == "bf16":  # read only where its fp32 run finished
                read = finished(overrides(rest[choice], "precision=fp32"))
                run(f"chosen-without-{choice}", overrides(rest[choice]), read=read)
        # trained only when asked (--precision fp32); read wherever they finished (their records)
        read = args.precision == "bf16"
        run(FP32, overrides(chosen, "precision=fp32"), compared=True, read=read)
        for choice in fp32:
            run(
                f"{FP32}-without-{choice}",
                overrides(rest[choice], "precision=fp32"),
                compared=True,
                read=read,
            )
    forward: dict[str, Any] = {}
    if last >= 6:

        def combined(choices: list[str]) -> float | None:
            run(forward_name(choices), overrides(choices), compared=True)
            report = reports.get(forward_name(choices))
            return None if report is None else report["pruned"]["wer_dev"]

        selected, tried = forward_selection(dev, combined)
        forward = {"selected": selected, "tried": tried, "ended": not tried or tried[-1][1] is not None}
        if forward["ended"]:
            run(SELECTED_PRUNE1, overrides(selected, *SCHEDULE), compared=True)
    jobs.settle()
    if args.only or args.plan or not (args.record or jobs.last()):  # the last out of a full run writes
        return

    for name in [n for n in old if (targets[n] / "eval.json").exists()]:  # trained since, as another name
        reports[name] = json.loads((targets[name] / "eval.json").read_text())
        old.remove(name)
    reference = "chosen" if "chosen" in reports else "base"
    rows = []
    for name in order:  # the same order whichever job ran what
        report = reports[name]
        row = {
            "run": name,
            **{f"wer_{s}": report["pruned"][f"wer_{s}"] for s in SPLITS},
            "params": report["pruned"]["params"],
            "grad_norms": {} if name in old else grad_norms(targets[name]),
            "recognitions_kept": name not in old,
        }
        if name != reference and name not in old and reference not in old:
            row["wer_test_vs_reference"] = versus(targets[reference], targets[name], "test")
        rows.append(row)
    record: dict[str, Any] = {
        "reference": reference,
        "chosen": chosen,
        "choices": CHOICES,
        "base": BASE,
        "splits": {s: split_sizes(work / "teacher", s, teacher_result[f"hours_{s}"]) for s in SPLITS},
        "teacher": {f"wer_{s}": teacher_result[f"wer_{s}"] for s in SPLITS},
        "runs": rows,
        "commit": commit,
        "command": command_line(),
    }
    vs_reference = {r["run"]: r["wer_test_vs_reference"] for r in rows if "wer_test_vs_reference" in r}
    record["ablation"] = ablation_rows(chosen, reports, targets, old, vs_reference)
    seeds: dict[str, list[float]] = {}
    for m in ("chosen", UNDISTILLED):
        names = (m, *(f"{m}-seed{seed}" for seed in SEEDS))
        seeds[m] = [reports[n]["pruned"]["wer_test"] for n in names if n in reports]
    if all(len(v) == 1 + len(SEEDS) for v in seeds.values()):
        record["seeds"] = {
            m: {"wer_test": v, "mean": statistics.mean(v), "spread": max(v) - min(v)}
            for m, v in seeds.items()
        }
        record["seeds"]["difference_of_means"] = (
            record["seeds"]["chosen"]["mean"] - record["seeds"][UNDISTILLED]["mean"]
        )
        pairs = {0: ("chosen", UNDISTILLED)}
        pairs |= {n: (f"chosen-seed{n}", f"{UNDISTILLED}-seed{n}") for n in SEEDS}
        record["seeds"]["chosen_vs_undistilled"] = {  # each seed's own pair, paired bootstrap on test
            str(seed): versus(targets[b], targets[a], "test") for seed, (a, b) in pairs.items()
        }
        record["seeds"]["chosen_vs_undistilled_mean"] = versus_runs(  # the seeds' mean WERs
            [targets[b] for _, b in pairs.values()], [targets[a] for a, _ in pairs.values()], "test"
        )
        mean = record["seeds"]["chosen_vs_undistilled_mean"]
        record["seeds"]["claim_holds"] = (  # issue 16: interval below 0 and the spreads under the gap
            mean["high"] < 0
            and max(record["seeds"][m]["spread"] for m in ("chosen", UNDISTILLED)) < -mean["delta"]
        )
        record["seeds"]["below_0_at_every_seed"] = all(
            v["high"] < 0 for v in record["seeds"]["chosen_vs_undistilled"].values()
        )
    if "seeds" in record and {"chosen", FP32} <= reports.keys() and not {"chosen", FP32} & old:
        record["precision"] = {  # what training in fp32 instead of bf16 moves, beside the seed spread
            "run": FP32,
            "wer_test": reports[FP32]["pruned"]["wer_test"],
            "chosen_bf16_seeds": record["seeds"]["chosen"],
            "vs_chosen": vs_reference[FP32],  # its row's: `chosen` is the reference
        }
    if {"chosen", PRUNE1} <= set(reports):  # the split of the three epochs, chosen on dev at 50%
        dev_wer = {n: reports[n]["pruned"]["wer_dev"] for n in ("chosen", PRUNE1)}
        record["schedule"] = {
            "wer_dev": dev_wer,
            "prune1_chosen_on_dev": dev_wer[PRUNE1] < dev_wer["chosen"],
            "test_vs_chosen": versus(targets["chosen"], targets[PRUNE1], "test"),
        }
        if {"chosen-30", PRUNE1_30} <= set(reports):  # the same two splits at 30%, shown beside
            record["schedule"]["wer_dev_30"] = {
                n: reports[n]["pruned"]["wer_dev"] for n in ("chosen-30", PRUNE1_30)
            }
            record["schedule"]["test_vs_chosen_30"] = versus(targets["chosen-30"], targets[PRUNE1_30], "test")
    if forward:
        record["forward"] = forward_record(forward, dev, reports, targets)
    for key, pruned in compared_runs(record, set(reports)).items():  # the equal-training control's claims
        if {pruned, "continued"} <= set(reports):
            record[key] = {
                "run": pruned,
                "wer_test_chosen": reports[pruned]["pruned"]["wer_test"],
                "wer_test_continued": reports["continued"]["pruned"]["wer_test"],
                "ratio": reports[pruned]["pruned"]["wer_test"] / reports["continued"]["pruned"]["wer_test"],
                "vs_continued": versus(targets["continued"], targets[pruned], "test"),
            }
    if {"chosen-30", "chosen-30-layers"} <= set(reports):
        dev_wer = {n: reports[n]["pruned"]["wer_dev"] for n in ("chosen-30", "chosen-30-layers")}
        record["layers_at_30"] = {
            "wer_dev": dev_wer,
            "layer_gates_chosen_on_dev": dev_wer["chosen-30-layers"] < dev_wer["chosen-30"],
            "test_vs_without": versus(targets["chosen-30"], targets["chosen-30-layers"], "test"),
            "emptied_blocks": {n: emptied_blocks(targets[n]) for n in ("chosen-30", "chosen-30-layers")},
        }
    name = "distill-quick" if args.quick else "distill"
    save_result(name, record)
    print(json.dumps(record, indent=2))
    if not args.quick:
        update_doc_section("distill", section(record))


def ablation_rows(
    chosen: list[str],
    reports: dict[str, dict[str, Any]],
    targets: dict[str, Path],
    old: set[str],
    vs_reference: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Each choice of `chosen` switched off, against the base of its precision: its bf16 run against
    `chosen`, else its fp32 run against `chosen-fp32` (trained where bf16 is not native).
    `vs_reference`: the intervals against `chosen` the record's rows already hold, not bootstrapped
    again."""
    rows = []
    for choice in chosen:
        for base, name in (("chosen", f"chosen-without-{choice}"), (FP32, f"{FP32}-without-{choice}")):
            if {base, name} <= reports.keys() and not {base, name} & old:
                wer = {n: reports[n]["pruned"] for n in (base, name)}
                rows.append(
                    {
                        "choice": choice,
                        "run": name,
                        "base": base,
                        "precision": "fp32" if base == FP32 else "bf16",
                        **{f"wer_{s}": wer[name][f"wer_{s}"] for s in ("dev", "test")},
                        **{f"wer_{s}_base": wer[base][f"wer_{s}"] for s in ("dev", "test")},
                        "test_vs_base": vs_reference[name]
                        if base == "chosen"
                        else versus(targets[base], targets[name], "test"),
                    }
                )
                break
    return rows


def forward_record(
    forward: dict[str, Any],
    dev: dict[str, float],
    reports: dict[str, dict[str, Any]],
    targets: dict[str, Path],
) -> dict[str, Any]:
    """Forward selection's steps (each combination tried, its dev WER, whether it was kept, its test
    WER, and its dev and test WER minus those of the selection it was added to, with the paired
    bootstrap's interval), its selection, and the selection at 1 + 2 against `chosen-prune1` (dev and
    test WER, and their differences with the paired bootstrap's interval)."""
    record: dict[str, Any] = {
        "rule": "start from the candidate best on dev; add each next candidate that beat base, in dev order "
        "(never a second layer distance), when the combination's dev WER is below the best so far",
        "selected": forward["selected"],
        "ended": forward["ended"],
        "steps": [],
    }
    if not forward["selected"]:
        return record
    start = forward["selected"][0]
    record["start"] = {
        "choice": start,
        "wer_dev": dev[start],
        "wer_test": reports[start]["pruned"]["wer_test"],
    }
    for choices, wer, kept in forward["tried"]:
        name = forward_name(choices)
        step = {"choices": choices, "run": name, "wer_dev": wer, "kept": kept}
        if wer is not None:  # against the selection it was added to
            step["wer_test"] = reports[name]["pruned"]["wer_test"]
            added_to = targets[forward_name(choices[:-1])]
            step |= {f"{s}_vs_selected": versus(added_to, targets[name], s) for s in ("dev", "test")}
        record["steps"].append(step)
    if {SELECTED_PRUNE1, PRUNE1} <= reports.keys():
        dev_wer = {n: reports[n]["pruned"]["wer_dev"] for n in (PRUNE1, SELECTED_PRUNE1)}
        record["prune1"] = {
            "wer_dev": dev_wer,
            "wer_test": {n: reports[n]["pruned"]["wer_test"] for n in (PRUNE1, SELECTED_PRUNE1)},
            "selected_on_dev": dev_wer[SELECTED_PRUNE1] < dev_wer[PRUNE1],
        } | {
            f"{s}_vs_chosen_prune1": versus(targets[PRUNE1], targets[SELECTED_PRUNE1], s)
            for s in ("dev", "test")
        }
    return record


def compared_runs(record: dict[str, Any], finished: set[str]) -> dict[str, str]:
    """The pruned run each claim against `continued` takes: the split of the epochs chosen on dev at
    50% (the recipe's), at both targets; at 30% the 2 + 1 run until the 1 + 2 one has finished."""
    compared = {key: pruned for key, (pruned, _) in AGAINST_CONTINUED.items()}
    if record.get("schedule", {}).get("prune1_chosen_on_dev"):
        compared["at_50"] = PRUNE1
        if PRUNE1_30 in finished:
            compared["at_30"] = PRUNE1_30
    return compared


def emptied_blocks(run: Path) -> list[int]:
    """The blocks of a finished run's compact model with nothing left (no head, neither feed-forward,
    no convolution channel), whichever gates removed them."""
    c = timing_model(run).config  # its model.pt's, or its record's shape
    parts = zip(c.heads, c.ffn1, c.ffn2, c.conv_channels, strict=True)
    return [i for i, widths in enumerate(parts) if not any(widths)]


def _interval(v: dict[str, float] | None) -> str:
    return "-" if v is None else f"{100 * v['delta']:+.2f} [{100 * v['low']:+.2f}, {100 * v['high']:+.2f}]"


def forward_text(fwd: dict[str, Any]) -> str:
    if not fwd["selected"]:
        return "\nForward selection: no candidate beat `base` on dev, so it selects nothing.\n"
    start = fwd["start"]
    steps = "; ".join(
        f"+ {s['choices'][-1]}: "
        + (
            "not trained yet"
            if s["wer_dev"] is None
            else f"{100 * s['wer_dev']:.2f}% ({'kept' if s['kept'] else 'dropped'}; dev "
            f"{_interval(s.get('dev_vs_selected'))}, test {_interval(s.get('test_vs_selected'))} against "
            f"{forward_name(s['choices'][:-1])})"
        )
        for s in fwd["steps"]
    )
    text = (
        f"\nForward selection on dev (its rule: {fwd['rule']}): from `{start['choice']}` "
        f"({100 * start['wer_dev']:.2f}% dev WER); {steps or 'nothing left to add'}. Selection "
        f"{'' if fwd['ended'] else 'so far '}**{', '.join(fwd['selected'])}**"
        f"{'' if fwd['ended'] else ' (not ended)'}.\n"
    )
    if p1 := fwd.get("prune1"):
        text += (
            f"At the recipe's 1 + 2 split: {SELECTED_PRUNE1} "
            f"{100 * p1['wer_dev'][SELECTED_PRUNE1]:.2f}% dev WER against {PRUNE1}'s "
            f"{100 * p1['wer_dev'][PRUNE1]:.2f}%, so the recipe takes "
            f"**{SELECTED_PRUNE1 if p1['selected_on_dev'] else PRUNE1 + ' (chosen)'}** ({SELECTED_PRUNE1} "
            f"minus {PRUNE1}: dev {_interval(p1['dev_vs_chosen_prune1'])}, test "
            f"{_interval(p1['test_vs_chosen_prune1'])}).\n"
        )
    return text


def section(record: dict[str, Any]) -> str:
    sizes = "; ".join(
        f"{s.replace('_', '-')} {n['utterances']:,} utterances, {n['words']:,} words"
        for s, n in record["splits"].items()
    )
    rows = [
        [
            r["run"],
            *[f"{100 * r[f'wer_{s}']:.2f}%" for s in SPLITS],
            _interval(r.get("wer_test_vs_reference")),
            *[f"{r['grad_norms'][k]:.3g}" if k in r["grad_norms"] else "-" for k in ("ctc", "layer")],
        ]
        for r in record["runs"]
    ]
    table = markdown_table(
        [
            "run",
            "dev WER",
            "test WER",
            "test-unseen WER",
            f"test vs {record['reference']} (95% CI)",
            "grad norm CTC",
            "grad norm layer",
        ],
        rows,
    )
    text = (
        "## Distillation choices (`benchmarks/distill.py`)\n\n"
        f"Each run prunes the reference teacher to 50% of the parameters (the `-30` runs: 30%) with the "
        f"reference recipe at 2 + 1 epochs (the `-prune1` runs: 1 + 2, the recipe's split since); "
        f"besides the seed, target or split so named, only the distillation differs. Chosen on dev: "
        f"**{', '.join(record['chosen']) or 'nothing beyond base'}**. "
        f"Intervals: the paired bootstrap's 95% for the test WER minus `{record['reference']}`'s. Gradient "
        f"norms: the last epoch's. Splits: {sizes}. Commit `{record['commit']}`.\n\n{table}\n"
    )
    if old := [r["run"] for r in record["runs"] if not r.get("recognitions_kept", True)]:
        text += (
            f"\n{', '.join(old)}: trained before runs kept their recognitions and logs in git "
            "(benchmarks/results/runs/), on a machine whose cache is gone, so WER alone: no interval, "
            "no gradient norms.\n"
        )
    if ablation := record.get("ablation"):
        bases: dict[str, dict[str, Any]] = {}  # each base's row, in the order first used
        for r in ablation:
            bases.setdefault(r["base"], r)
        table = markdown_table(
            [
                "switched off",
                "precision",
                "dev WER",
                "dev minus its base",
                "test WER",
                "test minus its base (95% CI)",
            ],
            [
                [
                    f"nothing ({b})",
                    r["precision"],
                    f"{100 * r['wer_dev_base']:.2f}%",
                    "-",
                    f"{100 * r['wer_test_base']:.2f}%",
                    "-",
                ]
                for b, r in bases.items()
            ]
            + [
                [
                    r["choice"],
                    r["precision"],
                    f"{100 * r['wer_dev']:.2f}%",
                    f"{100 * (r['wer_dev'] - r['wer_dev_base']):+.2f}",
                    f"{100 * r['wer_test']:.2f}%",
                    _interval(r["test_vs_base"]),
                ]
                for r in ablation
            ],
        )
        done, total = len(ablation), len(record["chosen"])
        runs = f"all {total} run" if done == total else f"{done} of {total} run so far"
        text += (
            f"\nAblation: `chosen` with each of its choices switched off in turn ({runs}), seed 0, "
            "against the base of its precision: a bf16 run "
            f"against `chosen`, an fp32 run (trained where bf16 is not native) against `{FP32}`, `chosen` "
            f"itself trained in fp32; a positive difference is what the choice is worth.\n\n{table}\n"
        )
    if fwd := record.get("forward"):
        text += forward_text(fwd)
    if "precision" in record:
        p = record["precision"]
        s = p["chosen_bf16_seeds"]
        text += (
            f"\nPrecision: `chosen` trained in fp32 ({p['run']}) {100 * p['wer_test']:.2f}% test WER, "
            f"against {100 * s['mean']:.2f}% for its bf16 seeds 0-{len(SEEDS)} "
            f"(spread {100 * s['spread']:.2f} points);"
            f" {p['run']} minus chosen: {_interval(p['vs_chosen'])}.\n"
        )
    if "seeds" in record:
        s = record["seeds"]
        text += (
            f"\nSeeds 0-{len(SEEDS)}: chosen test WER mean {100 * s['chosen']['mean']:.2f}% (spread "
            f"{100 * s['chosen']['spread']:.2f} points), {UNDISTILLED} {100 * s[UNDISTILLED]['mean']:.2f}% "
            f"(spread {100 * s[UNDISTILLED]['spread']:.2f}); difference of the means "
            f"{100 * s['difference_of_means']:+.2f} points. Chosen minus {UNDISTILLED}, seed by seed: "
            + "; ".join(f"seed {k} {_interval(v)}" for k, v in s["chosen_vs_undistilled"].items())
            + f"; the seeds' means, {_interval(s['chosen_vs_undistilled_mean'])}. Distillation lower with "
            f"the interval of the means below 0 and both spreads under the difference: "
            f"**{'holds' if s['claim_holds'] else 'does not hold'}**; the interval below 0 at every seed: "
            f"{'yes' if s['below_0_at_every_seed'] else 'no'}.\n"
        )
    if "schedule" in record:
        sch = record["schedule"]
        text += (
            f"\nSchedule: the three epochs split 1 pruning + 2 fine-tuning ({PRUNE1}) give "
            f"{100 * sch['wer_dev'][PRUNE1]:.2f}% dev WER against chosen's 2 + 1 "
            f"{100 * sch['wer_dev']['chosen']:.2f}%, so the comparison at 50% takes "
            f"**{PRUNE1 if sch['prune1_chosen_on_dev'] else 'chosen (2 + 1)'}** (test, {PRUNE1} minus "
            f"chosen: {_interval(sch['test_vs_chosen'])})."
        )
        if "wer_dev_30" in sch:
            text += (
                f" At 30%: {PRUNE1_30} {100 * sch['wer_dev_30'][PRUNE1_30]:.2f}% dev WER against "
                f"chosen-30's {100 * sch['wer_dev_30']['chosen-30']:.2f}% (test, {PRUNE1_30} minus "
                f"chosen-30: {_interval(sch['test_vs_chosen_30'])}); the comparison at 30% takes the "
                f"split chosen at 50%{'' if sch['prune1_chosen_on_dev'] else ' (2 + 1)'}."
            )
        text += "\n"
    for key, (pruned, ceiling) in AGAINST_CONTINUED.items():
        if key in record:
            a = record[key]
            text += (
                f"\nAt {key[3:]}% of the parameters: {a.get('run', pruned)} "
                f"{100 * a['wer_test_chosen']:.2f}% test WER "
                f"against continued's {100 * a['wer_test_continued']:.2f}% ({a['ratio']:.3f}x; target at "
                f"most {ceiling:.2f}x), difference {_interval(a['vs_continued'])}.\n"
            )
    if "layers_at_30" in record:
        lay = record["layers_at_30"]
        verdict = "belong" if lay["layer_gates_chosen_on_dev"] else "do not belong"
        text += (
            f"\nWhole-layer gates at 30%: dev WER {100 * lay['wer_dev']['chosen-30-layers']:.2f}% with them, "
            f"{100 * lay['wer_dev']['chosen-30']:.2f}% without, so they {verdict} in the defaults at 30% "
            f"(test, with minus without: {_interval(lay['test_vs_without'])})."
        )
        if "emptied_blocks" in lay:
            empty = lay["emptied_blocks"]
            text += (
                f" Blocks left empty, counted from 0: chosen-30 (module gates alone) "
                f"{', '.join(map(str, empty['chosen-30'])) or 'none'}; chosen-30-layers "
                f"{', '.join(map(str, empty['chosen-30-layers'])) or 'none'}."
            )
        text += "\n"
    return text + f"\nReproduce: `{record['command']}`."


if __name__ == "__main__":
    main()
