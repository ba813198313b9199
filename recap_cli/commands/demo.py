"""`recap demo`: the whole RECAP loop on the built-in toy task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from recap_cli.output import console, emit, err_console


def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where data, runs and reports go.")] = Path("recap-demo"),
    fast: Annotated[bool, typer.Option("--fast", help="A smoke run of a few minutes (what CI runs).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for demos, rollouts, training and evaluation.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over in an existing workdir.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary (success rates per stage) as JSON.")] = False,
) -> None:
    """Run the whole RECAP loop on the built-in toy task, on CPU, with the tiny presets.

    Stages: scripted demos, convert, sft, DAgger rollouts through recap serve, convert + merge, finetune (Stage 3), value train, value label, a label audit (do the labels point at the actions closer to the expert's?), finetune (Stage 6), then closed-loop eval of SFT, Stage 3 and Stage 6 with 95% confidence intervals and a plot. Stage 6 is also evaluated asked for 'negative': a policy that learned the advantage indicator does worse then. Rerunning continues where an interrupted run stopped.

    Example:  recap demo --workdir /tmp/recap-demo --seed 1
    """
    from recap_core.demo import CONDITIONED, run_demo

    summary = run_demo(workdir, fast=fast, seed=seed, overwrite=overwrite, log=err_console.print)

    def render(data: dict) -> None:
        table = Table(title=f"closed-loop success on '{data['task']}' (seed {data['seed']})")
        table.add_column("policy")
        table.add_column("success rate", justify="right")
        table.add_column("95% CI", justify="right")
        table.add_column("episodes", justify="right")
        table.add_column("grasped / handed over", justify="right")
        labels = {"sft": "SFT (pi0.5)", "stage3": "Stage 3 (pi0.6, converter labels)",
                  "stage6": "Stage 6 (full RECAP)"}
        rows = dict(data["success"])
        if "stage6_negative" in data:
            rows["stage6_negative"] = data["stage6_negative"]
            labels["stage6_negative"] = "Stage 6 asked for 'negative' (indicator check)"
        for name, s in rows.items():
            reached = s.get("milestone_rates") or {}
            phases = (f"{reached['source_grasp']:.0%} / {reached['dest_holds']:.0%}"
                      if {"source_grasp", "dest_holds"} <= set(reached) else "")
            table.add_row(labels.get(name, name), f"{s['success_rate']:.0%}",
                          f"{s['ci_low']:.0%}–{s['ci_high']:.0%}", str(s["episodes"]), phases)
        console.print(table)
        effects = {name: data["success"][name].get("indicator_effect") for name in CONDITIONED}
        if all(effects.values()):
            console.print(
                "indicator effect (|positive - negative| on the same noise, first actions): "
                f"Stage 6 {effects['stage6']['positive_vs_negative']:.3f}, Stage 3 (never saw 'negative') "
                f"{effects['stage3']['positive_vs_negative']:.3f}; sampling spread "
                f"{effects['stage6']['sampling_spread']:.3f}"
            )
        audit = data.get("label_audit")
        if audit:
            dev = audit["joint_deviation"]
            rho = "n/a" if audit["spearman"] is None else f"{audit['spearman']:+.2f}"
            console.print(
                f"label audit ({audit['frames']} autonomous frames replayed): advantage vs deviation from the "
                f"expert, Spearman {rho} (good labels: clearly negative); mean joint deviation "
                f"positive {_num(dev['positive'])} / negative {_num(dev['negative'])} rad"
            )
        console.print(f"plot: {data['plot']}")

    emit(summary, as_json, render)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
