"""The reference budget (epochs of pruning + fine-tuning), chosen on dev with `continued` beside it.

The reference run trains 1 pruning and 2 fine-tuning epochs (about 3,000 steps), a budget chosen
for the time a session has, not for the method: at the recipe's rate (2e-3, benchmarks/lr.py) the
pruned model's dev WER was still falling in its last epoch (21.40% -> 15.23% -> 14.09%) while
`continued`'s was flat (13.45% -> 12.97% -> 12.97%), and issue 18 asks the pruned model for at most
1.03x `continued`'s test WER (1.080x at 3 epochs). This benchmark trains both at each budget of
`EPOCHS` (one pruning epoch, the rest fine-tuning, as the recipe splits its 3: chosen on dev by
benchmarks/distill.py's schedule stage), `continued` for the same number of epochs (its steps are
the pruned model's, whatever they are: it is the equal-training control).

The rule (benchmarks/sweep.py), fixed before the runs: a longer budget replaces the recipe's 3
epochs only when the pruned model's dev WER is lowest there with its paired interval against 3
epochs below 0, since a change retrains every row of the comparison. Test and test-unseen are
reported, not chosen on.

Usage:
    nohup python benchmarks/budget.py > benchmarks/cache/budget.log 2>&1 &
    python benchmarks/budget.py --plan       # where each run stands; trains nothing
    python benchmarks/budget.py --record     # the record and docs from the runs finished so far
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import Sweep, main

EPOCHS = (3, 5)  # the recipe's when the rule was fixed (2026-12-05), then 1 + 4


def overrides(epochs: float) -> list[str]:
    return ["prune_epochs=1", f"finetune_epochs={int(epochs) - 1}"]


SWEEP = Sweep(
    name="budget",
    setting="epochs",
    values=EPOCHS,
    overrides=overrides,
    show=lambda e: f"{int(e)} epochs (1 + {int(e) - 1})",
    title="The reference budget",
    what="budget (epochs: one of pruning, the rest fine-tuning; `continued` trains as many)",
    chooses=("pruned",),
)

if __name__ == "__main__":
    main(SWEEP, __doc__)
