"""`recap data`: inspect, merge and summarise LeRobot datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from recap_cli.output import console, emit, err_console

data_app = typer.Typer(help="Inspect, merge and summarise datasets.", no_args_is_help=True)


@data_app.command("stats")
def stats(
    dataset: Annotated[Path, typer.Argument(help="LeRobot dataset directory (v3.0 or v2.1).")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write norm_stats.json here (a directory gets <dir>/norm_stats.json)."),
    ] = None,
    state_column: Annotated[str, typer.Option("--state-column", help="Column normalised as `state`.")] = "observation.state",
    action_column: Annotated[str, typer.Option("--action-column", help="Column normalised as `actions`.")] = "action",
    delta_actions: Annotated[bool, typer.Option(
        "--delta-actions", help="The stats a --delta-actions run uses: action chunks as joint deltas from the current "
        "state, grippers absolute (default: absolute actions).")] = False,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="With --delta-actions: the run's preset, whose action_horizon sets the chunk length (default pi05).")] = None,
    action_horizon: Annotated[int | None, typer.Option(
        "--action-horizon", min=1, help="With --delta-actions: the chunk length, for a run with --set model.action_horizon=N "
        "(default: the preset's).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output file.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"norm_stats": {"state": ..., "actions": ...}, "convention": {"actions": '
                           '"absolute" | "delta", "delta_mask", "action_horizon"}}; --output gets the openpi document alone.')
    ] = False,
) -> None:
    """Normalisation stats of state and actions, in openpi's norm_stats.json layout.

    Mean, std, q01 and q99 per dimension, computed from the parquet columns (no video decoding;
    exact quantiles). openpi reads the file we write and we read theirs. With --delta-actions they
    are exactly what `recap sft/finetune --delta-actions` computes into its run's assets/.

    Example:  recap data stats ./towels --output ./towels_assets/norm_stats.json

    Example:  recap data stats ./towels --delta-actions --preset pi05-lora
    """
    from recap_core.data.stats import norm_stats_to_json, run_norm_stats, save_norm_stats
    from recap_core.errors import ConfigError
    from recap_core.fsutil import check_output
    from recap_core.presets import policy_action_horizon

    if not delta_actions and (preset is not None or action_horizon is not None):
        raise ConfigError("--preset and --action-horizon set the chunk length of delta actions; absolute stats do not use one",
                          fix="add --delta-actions, or drop --preset/--action-horizon")
    horizon = (action_horizon or policy_action_horizon(preset or "pi05")) if delta_actions else 1
    target = None
    if output is not None:
        target = output / "norm_stats.json" if output.is_dir() or not output.suffix else output
        check_output(target, overwrite, inputs=(dataset,))
    with err_console.status(f"reading {dataset}"):
        result, convention = run_norm_stats(dataset, {"state": state_column, "actions": action_column},
                                            delta_actions=delta_actions, horizon=horizon)
    if target is not None:
        save_norm_stats(target, result)

    def render(doc: dict) -> None:
        for key, entry in doc["norm_stats"].items():
            table = Table(title=f"{key} ({len(entry['mean'])} dims)")
            for name in ("dim", "mean", "std", "q01", "q99"):
                table.add_column(name, justify="right")
            for d in range(len(entry["mean"])):
                table.add_row(str(d), *(f"{entry[n][d]:.4g}" for n in ("mean", "std", "q01", "q99")))
            console.print(table)
        console.print(_convention_text(doc["convention"]))
        if target is not None:
            console.print(f"[green]wrote[/green] {escape(str(target))}")

    emit({**norm_stats_to_json(result), "convention": convention}, as_json, render)


def _convention_text(convention: dict) -> str:
    if convention["actions"] == "absolute":
        return "actions: absolute (per frame), as a run without --delta-actions normalises them"
    mask = convention["delta_mask"]
    kept = [str(d) for d, delta in enumerate(mask) if not delta]
    return (f"actions: deltas from the current state over chunks of {convention['action_horizon']}, as a --delta-actions "
            f"run normalises them (absolute dims: {', '.join(kept) or 'none'})")


@data_app.command("inspect")
def inspect(
    dataset: Annotated[Path, typer.Argument(help="LeRobot dataset directory (v3.0 or v2.1).")],
    ready_for: Annotated[
        str | None,
        typer.Option(
            "--ready-for", help="Exit 1 unless the dataset is ready for this stage: sft, finetune, value-train, value-label."
        ),
    ] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="Also say whether the data fits this preset's model (action width, cameras); with "
        "--ready-for, a mismatch exits 1.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report (schema: recap_core.data.inspect).")] = False,
) -> None:
    """What a dataset holds and which stages it is ready for (and why not).

    Episodes, frames, fps, features, cameras, tasks, success rate, intervention fraction,
    adv_ind counts, value_label range and validation problems (bad column values by episode and
    frame, unreadable video files by path; a dataset with problems is not ready for training). Of
    the videos it decodes only each file's first frame.

    Example:  recap data inspect ./towels --json
    """
    from recap_core.errors import RecapError
    from recap_core.stages import DATA_STAGES, get_stage, inspect_dataset

    stage = None
    if ready_for is not None:
        try:
            stage = get_stage(ready_for).name  # older spellings (value_train) are accepted
        except RecapError:
            stage = None
        if stage not in DATA_STAGES:
            raise RecapError(f"--ready-for {ready_for!r} is not a stage that reads a dataset",
                             fix=f"use one of: {', '.join(DATA_STAGES)}")
    report = inspect_dataset(dataset)
    if preset is not None:
        from recap_core.stages import preset_fit

        report["preset_fit"] = preset_fit(report, preset)
    emit(report, as_json, _render_report)
    misfit = preset is not None and not report["preset_fit"]["fits"]
    if stage is not None and (not report["ready"][stage]["ready"] or misfit):
        raise typer.Exit(1)


def _source_text(source: dict) -> str:
    """meta/recap_source.json in one line: converter, success rule, outcome counts, renamed cameras."""
    rule = source.get("success_rule", "?")
    if "success_from" in source:
        rule += f" {source['success_from']}"
    if "success_reward" in source:
        rule += f" (max /reward >= {source['success_reward']:g})"
    text = f"recap convert {source.get('converter', '?')}, --success {rule}"
    if "successful_episodes" in source:
        text += f": {source['successful_episodes']} succeeded, {source.get('failed_episodes', '?')} failed"
    if source.get("cameras"):
        text += "; cameras " + ", ".join(f"{k} -> {v}" for k, v in source["cameras"].items())
    return text


def _render_report(r: dict) -> None:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    summary = Table(title=f"{r['root']} (LeRobot {r['version']})", show_header=False)
    length = r["episode_length"]
    rows = [
        ("episodes", str(r["episodes"])),
        ("frames", f"{r['frames']}  (episode length {length['min']}..{length['max']}, mean {length['mean']:.1f})"),
        ("fps", str(r["fps"])),
        ("cameras", ", ".join(r["cameras"]) or "none"),
        ("state / action dims", f"{r['state_dim']} / {r['action_dim']}"),
        ("success rate", f"{pct(r['success_rate'])}" + (f"  ({r['successful_episodes']} episodes)" if r["success_rate"] is not None else "")),
        ("intervention frames", pct(r["intervention_fraction"])),
        ("adv_ind", "-" if r["adv_ind_counts"] is None else ", ".join(f"{k} {v}" for k, v in r["adv_ind_counts"].items())),
        ("value_label range", "-" if r["value_label_range"] is None else "[{:.3f}, {:.3f}]".format(*r["value_label_range"])),
        ("RECAP columns", ", ".join(c for c, ok in r["recap_columns"].items() if ok) or "none"),
    ]
    if r.get("source"):
        rows.append(("converted with", escape(_source_text(r["source"]))))
    for row in rows:
        summary.add_row(*row)
    console.print(summary)

    tasks = Table(title="tasks")
    for name in ("index", "task", "episodes", "frames"):
        tasks.add_column(name)
    for t in r["tasks"]:
        tasks.add_row(str(t["task_index"]), t["task"], str(t["episodes"]), str(t["frames"]))
    console.print(tasks)

    ready = Table(title="ready for")
    for name in ("stage", "ready", "why not / fix"):
        ready.add_column(name)
    for stage, entry in r["ready"].items():
        mark = "[green]yes[/green]" if entry["ready"] else "[red]no[/red]"
        ready.add_row(stage, mark, "" if entry["ready"] else f"{entry['why']}\n[dim]{entry['fix']}[/dim]")
    console.print(ready)
    fit = r.get("preset_fit")
    if fit is not None:
        verdict = "[green]fits[/green]" if fit["fits"] else "[red]does not fit[/red]"
        console.print(f"preset {escape(fit['preset'])}: {verdict}")
        for p in fit["problems"]:
            console.print(f"  [red]{escape(p['problem'])}[/red]\n  [dim]fix: {escape(p['fix'])}[/dim]")
        for note in fit["notes"]:
            console.print(f"  [dim]{escape(note)}[/dim]")
    for problem in r["problems"]:
        err_console.print(f"[yellow]problem:[/yellow] {problem}")


@data_app.command("merge")
def merge(
    sources: Annotated[list[Path], typer.Argument(help="Two or more LeRobot v3.0 datasets with the same features.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New merged dataset directory.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --output if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON document.")] = False,
) -> None:
    """Merge datasets (e.g. rounds of collection) into a new one: episodes, frames and tasks are
    re-indexed, every feature is kept, videos are concatenated without re-encoding, stats recomputed.

    Example:  recap data merge data/round1 data/round2 --output data/all
    """
    import os

    from recap_core.data.merge import merge_datasets

    os.environ.setdefault("TQDM_DISABLE", "1")  # lerobot's own bars; we show one status line
    with err_console.status(f"merging {len(sources)} datasets"):
        result = merge_datasets(sources, output, overwrite=overwrite)

    def render(r: dict) -> None:
        console.print(
            f"[green]wrote[/green] {r['output']}: {r['episodes']} episodes, {r['frames']} frames, "
            f"{len(r['tasks'])} tasks, {r['features']} features"
        )

    emit(result, as_json, render)


@data_app.command("view")
def view(
    dataset: Annotated[Path, typer.Argument(help="LeRobot v3.0 dataset with the RECAP columns (labelled or not).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The HTML file to write (default: <DATASET>.view.html beside it).")
    ] = None,
    stride: Annotated[int, typer.Option("--stride", help="Frames between the images shown (the last frame is always shown).")] = 5,
    jpeg_quality: Annotated[int, typer.Option("--jpeg-quality", help="JPEG quality of the images, 1..95.")] = 70,
    max_episodes: Annotated[int, typer.Option(
        "--max-episodes", help="Episodes in the page at most, spread evenly over the dataset (the summary counts all).")] = 50,
    image_width: Annotated[int, typer.Option("--image-width", help="Images are scaled down to at most this many pixels wide.")] = 160,
    cameras: Annotated[
        list[str] | None, typer.Option("--cameras", help="Cameras to show (repeat; default: all of them).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print path, bytes, episodes shown / total, frames, stride.")] = False,
) -> None:
    """Write one self-contained HTML page to browse the episodes (no server, nothing fetched: copy it
    off the cluster and open it anywhere).

    Per episode: camera frames at a stride with a scrubber, and time-aligned tracks of value_label,
    adv_ind, intervention and reward; on a dataset written by `recap value label` also value_pred,
    advantage and the threshold it recorded. Filter by task, outcome and intervention share. On top:
    label shares per task and, with predictions, Spearman(value_pred, value_label) and calibration.
    The dataset is only read. Defaults keep a page small: --stride 5, --jpeg-quality 70,
    --image-width 160, --max-episodes 50.

    Example:  recap data view data/towels_labeled -o towels.html --stride 10
    """
    from recap_core.label.view import ViewOptions, write_view

    options = ViewOptions(stride=stride, jpeg_quality=jpeg_quality, max_episodes=max_episodes,
                          image_width=image_width, cameras=tuple(cameras) if cameras else None)
    with err_console.status("reading the dataset") as status:
        result = write_view(dataset, output, options, overwrite=overwrite,
                            on_episode=lambda done, total: status.update(f"drawing episode {done} of {total}"))

    def render(r: dict) -> None:
        left = f"; {r['episodes_left_out']} left out (raise --max-episodes)" if r["episodes_left_out"] else ""
        console.print(
            f"[green]wrote[/green] {escape(r['path'])} ({r['bytes'] / 1e6:.1f} MB): {r['episodes_shown']} of "
            f"{r['episodes_total']} episodes{left}, {r['frames']} frames, {r['images']} images every {r['stride']} frames"
        )

    emit(result, as_json, render)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
