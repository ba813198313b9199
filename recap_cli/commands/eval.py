"""`recap eval`: closed-loop success rate of a policy on the built-in toy task."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from recap_cli.output import console, emit, err_console
from recap_core.sim.task import TASKS

_TASK_HELP = (
    "Toy task to run: " + "; ".join(f"{name} ({spec.description})" for name, spec in TASKS.items()) + "."
)


class AdvInd(StrEnum):
    positive = "positive"
    negative = "negative"
    none = "none"


def _render(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{result['policy']} on {result['task']} (seed {result['seed']})")
    for column in ("variant", "episodes", "success rate", "95% CI", "mean length"):
        table.add_column(column)
    table.add_row(
        "all",
        str(result["episodes"]),
        f"{result['success_rate']:.0%} ({result['successes']}/{result['episodes']})",
        f"{result['ci_low']:.0%} – {result['ci_high']:.0%}",
        f"{result['mean_length']:.1f}",
    )
    for name, row in result["by_variant"].items():
        table.add_row(name, str(row["episodes"]), f"{row['success_rate']:.0%}", "", "")
    console.print(table)
    rates = result.get("milestone_rates") or {}
    if rates:
        console.print("reached: " + ", ".join(f"{name.replace('_', ' ')} {rate:.0%}" for name, rate in rates.items()))
    steps = result.get("mean_steps_to_success")
    console.print(f"throughput: {result['successes_per_1000_steps']:.1f} successes per 1,000 steps"
                  + ("" if steps is None else f", {steps:.0f} steps per success on average"))
    mistakes = result.get("mistake_rates") or {}
    if mistakes:
        console.print("episodes with a mistake (sim ground truth): "
                      + ", ".join(f"{name} {rate:.0%}" for name, rate in mistakes.items()))
    effect = result.get("indicator_effect")
    if effect:
        console.print(
            f"indicator effect ({effect['states']} states, first {effect['steps']} actions): positive vs negative "
            f"{effect['positive_vs_negative']:.3f}, vs no indicator {effect['positive_vs_none']:.3f}; sampling "
            f"spread {effect['sampling_spread']:.3f}, prompt swap {effect['prompt_swap']:.3f} "
            f"({effect['relative']:.0%} of the spread)"
        )
    for path in result["videos"]:
        console.print(f"video: {path}")


@contextlib.contextmanager
def _episode_progress(task: str, episodes: int) -> Iterator[Callable[[Any], None]]:
    """A transient progress bar over the episodes, with the successes so far."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        bar = progress.add_task(f"evaluating on {task}", total=episodes)
        wins = 0

        def advance(episode: Any) -> None:
            nonlocal wins
            wins += int(episode.success)
            done = progress.tasks[0].completed + 1
            progress.update(bar, advance=1, description=f"evaluating on {task}: {wins}/{done} succeeded")

        yield advance


def eval_command(
    run_or_ckpt: Annotated[
        Path | None,
        typer.Argument(
            help="A recap run directory or <run>/checkpoints/<step>: served on a free loopback port for this run.",
            show_default=False,
        ),
    ] = None,
    task: Annotated[str, typer.Option("--task", help=_TASK_HELP)] = "handover",
    episodes: Annotated[int, typer.Option("--episodes", min=1, help="Closed-loop episodes to run.")] = 50,
    seed: Annotated[
        int, typer.Option("--seed", help="Episode k of a seed is the same scene for every policy.")
    ] = 0,
    server: Annotated[
        str | None,
        typer.Option("--server", help="Evaluate the policy served at ws://HOST:PORT (e.g. by recap serve)."),
    ] = None,
    expert: Annotated[
        bool,
        typer.Option("--expert", help="Evaluate the scripted expert instead (a sanity check of the task)."),
    ] = False,
    adv_ind: Annotated[
        AdvInd | None,
        typer.Option("--adv-ind", help="adv_ind sent with each observation (default: the server's default)."),
    ] = None,
    cfg_beta: Annotated[
        float,
        typer.Option("--cfg-beta", help="Classifier-free guidance weight for a pi0.6 RUN_OR_CKPT (1: off; the paper's "
                     "beta > 1 pushes the actions further towards 'positive')."),
    ] = 1.0,
    replan_steps: Annotated[
        int,
        typer.Option("--replan-steps", min=1, help="Actions executed from each chunk before asking again."),
    ] = 5,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="RECAP_SERVE_API_KEY", help="API key of the --server.")
    ] = None,
    connect_timeout: Annotated[
        float, typer.Option("--connect-timeout", help="Seconds to wait for the --server to answer.")
    ] = 30.0,
    video: Annotated[
        Path | None,
        typer.Option(
            "--video", help="Save the head camera of the first episodes as GIFs in this new directory."
        ),
    ] = None,
    video_episodes: Annotated[
        int, typer.Option("--video-episodes", min=1, help="How many episodes --video films.")
    ] = 3,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --video directory.")
    ] = False,
    indicator_states: Annotated[
        int,
        typer.Option(
            "--indicator-effect", min=0, metavar="STATES",
            help="Also measure, on this many expert-visited states, how far a pi0.6 run's actions move between "
            "'Advantage: positive' and 'negative' from the same noise, next to the sampling spread and a prompt "
            "swap (needs RUN_OR_CKPT; 0: off).",
        ),
    ] = 0,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print {task, policy, success_rate, ci_low, ci_high, mean_length, outcomes, ...}."
        ),
    ] = False,
) -> None:
    """Closed-loop success rate (with a Wilson 95% interval) of a policy on the built-in toy task.

    The policy is reached through the openpi websocket protocol, so a policy served anywhere can be evaluated; a run directory is served on a free loopback port while the evaluation runs.

    Example:  recap eval --server ws://127.0.0.1:8000 --task handover --episodes 50 --json
    """
    from recap_core.sim.closed_loop import PolicySource, evaluate_source
    from recap_core.sim.task import get_task

    spec = get_task(task)
    source = PolicySource(run=run_or_ckpt, server=server, expert=expert,
                          adv_ind=adv_ind.value if adv_ind is not None else None, cfg_beta=cfg_beta,
                          api_key=api_key, connect_timeout_s=connect_timeout)
    out = evaluate_source(source, task, episodes, seed, replan_steps=replan_steps, indicator_states=indicator_states,
                          video_dir=video, video_episodes=video_episodes, overwrite=overwrite,
                          progress=lambda: _episode_progress(spec.name, episodes), status=err_console.status)
    emit(out, as_json, _render)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
