"""The promptmlr ablation of docs/ablation.md: each component on and off, chosen on validation.

    python -m tools.bench.ablation --out bench/ablation

One promptmlr run per row at 10 % known, seed 0, on the synthetic world and the sandbox CLIP (run
folders ``<out>/runs/<row>/``, read back when finished, as the accuracy benchmark does). Step 1
starts from a base without the enhancement (lr 0.005, logit scale 20, global branch on) and
changes one thing per row; step 2 combines what helped with one learning rate for every part;
step 3 gives the prompts and the enhancement each its own rate (today's defaults) and varies the
rest once more. Two CLSL rows put promptmlr's best beside that method's. Step 5 adds the seed
methods' heads as branches, summed or each trained on its own loss (``--rows NAME ...``: some rows);
step 6 adds a linear probe on the global embedding as a branch and chooses the branches' weights on
validation. Every promptmlr row starts from the sandbox recipe without the branches and the fusion
of steps 5 and 6 (``WITHOUT_BRANCHES``), so that each names all it adds. Writes
``<out>/ablation.md`` (val and test mAP of the epoch each run selected on validation, plus the
recovered labels' precision and recall where recovery is on) and ``<out>/ablation.json``.

The rule the defaults follow is the highest validation mAP; the test column is shown, never used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from promptmlr.config import parse_assignment, resolve_config
from promptmlr.errors import PromptMLRError
from promptmlr.files import write_json_atomic, write_text_atomic
from tools.bench.accuracy import BenchError, run_benchmark  # the same run folders, read back or resumed

# the base promptmlr that step 1 varies one component of: no enhancement, global branch on, logit
# scale 20, one learning rate (its enhancement rows guided by the prompts)
PROMPT_GUIDED = ("model.options.enhance_text=prompts",)
BASE = ("model.options.enhance=false", "model.options.global_weight=1", "model.options.logit_scale=20",
           "train.lr=0.005", "model.options.enhance_lr_scale=1", *PROMPT_GUIDED)
# step 2's choice: enhancement on, global branch off, logit scale 5, one rate (0.02) for every part
ONE_RATE = ("train.lr=0.02", "model.options.enhance_lr_scale=1", *PROMPT_GUIDED)
RECOVERY = ("train.recovery.enabled=true", "train.recovery.thresholds=calibrated")
# step 5: branches that add up instead of compete (module docstring of promptmlr.models.promptmlr, items 7-8)
ENSEMBLE = ("model.options.branch_losses=true",)
CLSL_LAYERS = ("model.options.enhance_layers=clsl",)


def decoupled_branch(decoupling_dim: int, classifier_dim: int) -> tuple[str, ...]:
    """HCP-MLR-PL's decoupled branch at these widths, named in full so a row keeps them whatever the recipe says."""
    return ("model.options.decoupled=true", f"model.options.decoupling_dim={decoupling_dim}",
            f"model.options.classifier_dim={classifier_dim}")


DECOUPLED = decoupled_branch(512, 1024)  # HCP-MLR-PL's widths
NARROW_DECOUPLED = decoupled_branch(256, 256)  # the sandbox recipe's
# promptmlr's sandbox recipe took branches of steps 5 and 6; every promptmlr row starts from the recipe
# without them, so that each row changes what it names from the configuration it was measured on
WITHOUT_BRANCHES = ("model.options.branch_losses=false", "model.options.decoupled=false", "model.options.probe=false",
                    "model.options.fusion=mean")
# step 6: the narrow decoupled ensemble of step 5, plus a probe branch and weights chosen on validation
STEP_5_RECIPE = (*NARROW_DECOUPLED, *ENSEMBLE)
PROBE = ("model.options.probe=true",)
VALIDATED = ("model.options.fusion=validated",)

# (row name, step, method, what it changes, --set assignments on top of the method's recipe)
ROWS: tuple[tuple[str, int, str, str, tuple[str, ...]], ...] = (
    ("base", 1, "promptmlr", "the base configuration", BASE),
    ("align-off", 1, "promptmlr", "prompt alignment off", (*BASE, "model.options.align_weight=0")),
    ("global-off", 1, "promptmlr", "global branch off", (*BASE, "model.options.global_weight=0")),
    ("contrastive", 1, "promptmlr", "HCP category contrastive 0.05",
     (*BASE, "model.options.contrastive_weight=0.05")),
    ("instance-blend", 1, "promptmlr", "DSRB instance blending", (*BASE, "model.options.instance_blend=true")),
    ("prototype-blend", 1, "promptmlr", "DSRB prototype blending",
     (*BASE, "model.options.prototype_blend=true")),
    ("descriptions", 1, "promptmlr", "prompts initialised from prompts/synthetic.yaml",
     (*BASE, "model.descriptions=auto", "model.options.init=descriptions-features")),
    ("recovery", 1, "promptmlr", "label recovery, thresholds calibrated on val", (*BASE, *RECOVERY)),
    ("enhance", 1, "promptmlr", "CLSL enhancement", (*BASE, "model.options.enhance=true")),
    ("enhance-lr0.02", 1, "promptmlr", "CLSL enhancement, lr 0.02",
     (*BASE, "model.options.enhance=true", "train.lr=0.02")),
    ("enhance-noglobal", 2, "promptmlr", "enhancement, global off (scale 20, lr 0.005)",
     ("model.options.logit_scale=20", "train.lr=0.005", "model.options.enhance_lr_scale=1", *PROMPT_GUIDED)),
    ("enhance-noglobal-lr0.02", 2, "promptmlr", "the same, lr 0.02", ("model.options.logit_scale=20", *ONE_RATE)),
    ("scale1-lr0.005", 2, "promptmlr", "enhancement, global off, scale 1, lr 0.005",
     ("model.options.logit_scale=1", "train.lr=0.005", "model.options.enhance_lr_scale=1", *PROMPT_GUIDED)),
    ("scale5-lr0.005", 2, "promptmlr", "enhancement, global off, scale 5, lr 0.005",
     ("train.lr=0.005", "model.options.enhance_lr_scale=1", *PROMPT_GUIDED)),
    ("one-rate", 2, "promptmlr", "enhancement, global off, scale 5, lr 0.02 (step 2's choice)", ONE_RATE),
    ("one-rate-scale2", 2, "promptmlr", "step 2's choice, scale 2", (*ONE_RATE, "model.options.logit_scale=2")),
    ("one-rate-align-off", 2, "promptmlr", "step 2's choice, alignment off",
     (*ONE_RATE, "model.options.align_weight=0")),
    ("one-rate-global-on", 2, "promptmlr", "step 2's choice, global branch on",
     (*ONE_RATE, "model.options.global_weight=1")),
    ("one-rate-class-text", 2, "promptmlr", "step 2's choice, enhancement guided by class text",
     (*ONE_RATE, "model.options.enhance_text=class")),
    ("one-rate-recovery", 2, "promptmlr", "step 2's choice, calibrated recovery", (*ONE_RATE, *RECOVERY)),
    ("own-rates", 3, "promptmlr", "each part at its own rate: prompts 0.005, enhancement 4x", PROMPT_GUIDED),
    ("own-rates-align-off", 3, "promptmlr", "the same, alignment off",
     (*PROMPT_GUIDED, "model.options.align_weight=0")),
    ("own-rates-recovery", 3, "promptmlr", "the same, calibrated recovery", (*PROMPT_GUIDED, *RECOVERY)),
    ("defaults", 3, "promptmlr", "the same, enhancement guided by class text (today's defaults)", ()),
    ("defaults-align-off", 3, "promptmlr", "the defaults, alignment off", ("model.options.align_weight=0",)),
    ("defaults-recovery", 3, "promptmlr", "the defaults, calibrated recovery", RECOVERY),
    ("ensemble", 5, "promptmlr", "the defaults, each branch on its own loss, logits averaged", ENSEMBLE),
    ("clsl-layers", 5, "promptmlr", "the defaults with CLSL's enhancement layers", CLSL_LAYERS),
    ("clsl-layers-ensemble", 5, "promptmlr", "CLSL's layers, each branch on its own loss",
     (*CLSL_LAYERS, *ENSEMBLE)),
    ("decoupled", 5, "promptmlr", "the defaults plus HCP's decoupled branch", DECOUPLED),
    ("decoupled-ensemble", 5, "promptmlr", "the same, each branch on its own loss", (*DECOUPLED, *ENSEMBLE)),
    ("decoupled-narrow", 5, "promptmlr", "the decoupled branch 256 wide, one loss on the sum", NARROW_DECOUPLED),
    ("decoupled-narrow-ensemble", 5, "promptmlr", "the same, each branch on its own loss (step 5's recipe)",
     STEP_5_RECIPE),
    ("three-branches", 5, "promptmlr", "CLSL's layers and the decoupled branch, each on its own loss",
     (*CLSL_LAYERS, *DECOUPLED, *ENSEMBLE)),
    ("validated", 6, "promptmlr", "step 5's recipe, the branches' weights chosen on validation",
     (*STEP_5_RECIPE, *VALIDATED)),
    ("probe", 6, "promptmlr", "step 5's recipe plus the probe branch, logits averaged", (*STEP_5_RECIPE, *PROBE)),
    ("probe-validated", 6, "promptmlr", "step 5's recipe plus the probe branch, weights chosen on validation",
     (*STEP_5_RECIPE, *PROBE, *VALIDATED)),
    ("clsl", 4, "clsl", "CLSL, its recipe", ()),
    ("clsl-no-recovery", 4, "clsl", "CLSL without its recovery head", ("model.options.recovery_weight=0",)),
)
STEPS = {1: "Step 1: one component on or off, from the base configuration",
         2: "Step 2: combining what helped, one learning rate for every part",
         3: "Step 3: each part at its own learning rate (today's defaults)",
         4: "For reference: CLSL, the best other method",
         5: "Step 5: the seed methods' heads as branches, summed or each on its own loss",
         6: "Step 6: a probe on the global embedding as a branch; the branches' weights chosen on validation"}


def plan(args: argparse.Namespace):
    """(row name, resolved config) for every row, ``--data-root`` applied first."""
    shared = [{"data": {"root": str(args.data_root)}}] if args.data_root is not None else []
    runs = []
    for name, _, method, _, assignments in ROWS:
        if args.rows and name not in args.rows:
            continue
        own = {"data": {"known": 0.1, "mask_seed": 0}, "train": {"seed": 0}, "model": {"method": method}}
        start = WITHOUT_BRANCHES if method == "promptmlr" else ()
        runs.append((name, resolve_config("synthetic", None,
                                          [*shared, own, *map(parse_assignment, (*start, *assignments))])))
    return runs


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def score(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def table(rows: list[dict]) -> str:
    by_name = {row["name"]: row for row in rows}
    lines = []
    for step, title in STEPS.items():
        lines += ["", f"## {title}", "",
                  "| row | change | val mAP | test mAP | epoch | pseudo-positive precision / recall |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, row_step, _, change, assignments in ROWS:
            if row_step != step or name not in by_name:
                continue
            run = by_name[name]
            recovery = (f"{percent(run['recovery_precision_positive'])} / {percent(run['recovery_recall_positive'])}"
                        if run["recovery_precision_positive"] is not None else "–")
            sets = ", ".join(f"`{a}`" for a in assignments) or "—"
            lines.append(f"| {name} | {change} ({sets}) | {score(run['val_mAP'])} | {score(run['test_mAP'])} "
                         f"| {run['best_epoch']} | {recovery} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, metavar="DIR",
                        help="another synthetic world (default: the one generated on first use)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="ablation folder (runs/ and the table)")
    parser.add_argument("--rows", nargs="+", choices=[row[0] for row in ROWS], metavar="ROW",
                        help="only these rows (default: every row)")
    args = parser.parse_args(argv)
    try:
        rows, failed = run_benchmark(plan(args), args.out)
    except (BenchError, PromptMLRError) as error:  # a config clash, a missing dataset: one line
        print(f"ablation.py: error: {error}", file=sys.stderr)
        return 1
    text = ("# promptmlr ablation: synthetic world, sandbox CLIP, 10 % known, seed 0, selected on val\n"
            + table(rows) + "\n")
    write_json_atomic(args.out / "ablation.json", {"runs": rows, "failed": failed})
    write_text_atomic(args.out / "ablation.md", text)
    print("\n" + text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
