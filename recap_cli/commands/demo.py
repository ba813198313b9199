"""`recap demo`: the whole RECAP loop on the built-in toy task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from recap_cli.output import console, emit, err_console


def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where data, runs and reports go.")] = Path("recap-demo"),
    plan: Annotated[
        str,
        typer.Option("--plan", help="default: the core rows (SFT, filtered BC, Stage 3, Stage 6, Stage 6 asked for "
                     "'negative'); full: also the expert, Stage 6 on ground-truth labels and Stage 6 with --cfg-beta 2 "
                     "(continues a default workdir)."),
    ] = "default",
    lookahead: Annotated[str | None, typer.Option(
        "--lookahead", help="The advantage of the labels: 'episode' (Monte Carlo, the plan's since v2) or N frames "
        "(50: plan v1, the README's seeds 0-3).")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="A smoke run of a few minutes with every row (what CI runs).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for demos, rollouts, training and evaluation.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over in an existing workdir.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary (every row of the table) as JSON.")] = False,
) -> None:
    """Run the whole RECAP loop on the built-in toy task, on CPU, with the tiny presets.

    Demonstrations come from a mix of scripted operators (careful; sloppy: lets the cube go before the other arm holds it, then often gives up; hesitant: pauses), as real teleoperation data does. Stages: demos, convert, sft, DAgger rollouts through recap serve, convert + merge, filtered BC (sft --success-only), finetune (Stage 3), value train, value label (demos labelled by the value model too), label precision/recall at the sim's ground-truth mistake frames, finetune (Stage 6), then closed-loop eval of every row on the same scenes with Wilson 95% intervals, throughput (successes per 1,000 steps) and a plot. Rerunning continues where an interrupted run stopped.

    Example:  recap demo --workdir /tmp/recap-demo --seed 1
    """
    import os

    # The README's figures are CPU figures, and the demo's data is local: unless told otherwise, run
    # on the CPU (tiny models gain nothing from an accelerator) and never ask the Hugging Face Hub.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # lerobot's own bars (merge); the demo logs each stage
    from recap_core.demo import run_demo

    summary = run_demo(workdir, plan="fast" if fast else plan, seed=seed, overwrite=overwrite, lookahead=lookahead,
                       log=err_console.print)
    emit(summary, as_json, render_summary)


def render_summary(data: dict) -> None:
    from recap_core.demo import CONDITIONED, ROW_LABELS

    table = Table(title=f"closed-loop results on '{data['task']}' (seed {data['seed']}, same scenes for every row)")
    for name, justify in (("policy", "left"), ("success", "right"), ("95% CI", "right"),
                          ("per 1k steps", "right"), ("steps to success", "right"), ("drop / idle", "right")):
        table.add_column(name, justify=justify)
    for name, s in data["rows"].items():
        mistakes = s.get("mistake_rates") or {}
        steps = s.get("mean_steps_to_success")
        table.add_row(ROW_LABELS.get(name, name), f"{s['successes']}/{s['episodes']} ({s['success_rate']:.0%})",
                      f"{s['ci_low']:.0%}–{s['ci_high']:.0%}", f"{s['successes_per_1000_steps']:.1f}",
                      "" if steps is None else f"{steps:.0f}",
                      f"{mistakes.get('drop', 0):.0%} / {mistakes.get('idle', 0):.0%}")
    console.print(table)
    effects = {name: data["rows"].get(name, {}).get("indicator_effect") for name in CONDITIONED}
    if all(effects.values()):
        console.print(
            "indicator effect (|positive - negative| on the same noise, first actions): "
            f"Stage 6 {effects['stage6']['positive_vs_negative']:.3f}, Stage 3 (never saw 'negative') "
            f"{effects['stage3']['positive_vs_negative']:.3f}; sampling spread "
            f"{effects['stage6']['sampling_spread']:.3f}"
        )
    quality = data.get("label_quality")
    if quality:
        console.print(
            f"labels vs the sim's ground truth ({quality['frames']} frames labelled by the value model, "
            f"{quality['mistake_frames']} mistake frames): precision {_num(quality['precision'])}, recall "
            f"{_num(quality['recall'])}; value vs return-to-go Spearman {_num(quality['value_spearman'])}"
        )
    console.print(f"wall time {data.get('total_seconds', 0) / 60:.1f} min; plot: {data['plot']}")


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
