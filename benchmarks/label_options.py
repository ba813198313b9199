"""Value targets and advantages against the toy task's ground truth (issue 26, item 3).

For finished `recap demo` workdirs, relabel round 1 with one option changed at a time and score
the labels at the simulator's mistake frames (`recap_core.sim.truth.label_quality`, precision with
a 50-frame horizon whatever the advantage). Everything else is the demo's: 30% positive, demos
labelled by the value model, raw (non-EMA) weights, the same value run unless the target changes.

    python benchmarks/label_options.py recap-demo-0 recap-demo-1 --option mc --option hl_gauss > out.jsonl

Options: `nstep` (the demo's labels, relabelled), `mc` (`--lookahead episode`), `hl_gauss` (a value
run retrained with `--target hl_gauss`, same steps, then N-step labels). One JSON line per
(workdir, option).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from recap_core.demo import PLANS
from recap_core.sim.truth import label_quality

PLAN = PLANS["full"]


def recap(*args: object) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "recap_cli.main", *map(str, args)], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def run(work: Path, option: str, out: Path) -> dict:
    value = work / "runs" / "value"
    if option == "hl_gauss":
        value = out / "value"
        recap("value", "train", work / "data" / "round1", "--preset", "value-tiny", "--init", "random",
              "--run-dir", value, "--steps", PLAN.value_steps, "--batch-size", PLAN.batch_size,
              "--freeze-mode", "none", "--target", "hl_gauss", "--overwrite", "--no-preflight")
    lookahead = "episode" if option == "mc" else PLAN.lookahead
    recap("value", "label", work / "data" / "round1", "--checkpoint", value, "--output", out / "labeled",
          "--top-percent", PLAN.top_percent, "--lookahead", lookahead, "--demos", "value", "--no-ema",
          "--cache", out / "cache", "--overwrite", "--no-preflight")
    quality = label_quality(out / "labeled", [work / "raw" / "demos", work / "raw" / "rollouts"], PLAN.lookahead,
                            demos="value").as_dict()
    keep = ("precision", "precision_strict", "recall", "recall_by_kind", "value_spearman", "negative_share_by_operator")
    return {"workdir": str(work), "option": option, **{k: quality[k] for k in keep}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", type=Path)
    parser.add_argument("--option", action="append", choices=("nstep", "mc", "hl_gauss"), required=True)
    parser.add_argument("--scratch", type=Path, default=Path("label_options"))
    args = parser.parse_args()
    for work in args.workdirs:
        for option in args.option:
            print(json.dumps(run(work, option, args.scratch / f"{work.name}_{option}")), flush=True)


if __name__ == "__main__":
    main()
