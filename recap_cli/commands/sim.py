"""`recap sim demos|rollouts`: record toy-task episodes as raw ALOHA HDF5, as a robot would.

The built-in simulator stands in for the robot in scripts and tests: `demos` records scripted
teleoperators, `rollouts` lets a policy act with the scripted expert ready to take over (the
DAgger corrections of a RECAP round). Both write `OUT/episode_<k>.hdf5` for `recap convert
aloha-hdf5 OUT DATASET --fps <the task's fps> --task <task>`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from recap_cli.output import emit, err_console, info
from recap_core.sim.task import TASKS

sim_app = typer.Typer(help="Record toy-task episodes (raw ALOHA HDF5) for scripts and tests.", no_args_is_help=True)

_TASK_HELP = "Toy task: " + ", ".join(TASKS) + "."
TaskOpt = Annotated[str, typer.Option("--task", help=_TASK_HELP)]
EpisodesOpt = Annotated[int, typer.Option("--episodes", min=1, help="Episodes to record.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print {raw_dir, task, fps, episodes, success_rate, ...}.")]
OutArg = Annotated[Path, typer.Argument(help="New folder for the episodes (episode_<k>.hdf5).", metavar="OUT")]


def _summary(result: Any) -> dict[str, Any]:
    return {
        "raw_dir": str(result.raw_dir), "task": result.task, "fps": result.fps, "episodes": result.episodes,
        "successes": result.successes, "success_rate": result.success_rate, "frames": result.frames,
        "intervention_fraction": round(result.intervention_frames / max(result.frames, 1), 4),
        "takeovers": result.takeovers,
    }


def _render(summary: dict[str, Any]) -> None:
    info(f"[green]recorded[/green] {summary['episodes']} episodes of {summary['task']} in {summary['raw_dir']}: "
         f"{summary['successes']} succeeded, {summary['intervention_fraction']:.0%} of {summary['frames']} frames "
         f"by the operator")
    info(f"next: recap convert aloha-hdf5 {summary['raw_dir']} DATASET --fps {summary['fps']} --task {summary['task']}")


def _progress(what: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err_console, transient=True)


@sim_app.command("demos")
def demos(
    out: OutArg,
    task: TaskOpt = "handover-easy",
    episodes: EpisodesOpt = 60,
    seed: Annotated[int, typer.Option("--seed", help="Episode k of a seed is the same scene for every operator.")] = 0,
    operators: Annotated[str, typer.Option(
        "--operators", help="Mix of scripted teleoperators, name=share: careful (the expert), sloppy (lets the "
        "cube go early, then often gives up), hesitant (pauses).")] = "careful=0.4,sloppy=0.3,hesitant=0.3",
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Teleoperated demonstrations from a mix of scripted operators (every frame a human's).

    Example:  recap sim demos raw/demos --episodes 60 --operators careful=0.4,sloppy=0.3,hesitant=0.3
    """
    from recap_core.fsutil import check_output
    from recap_core.sim.collect import collect_demos
    from recap_core.sim.operators import OperatorMix
    from recap_core.sim.task import get_task

    spec, mix = get_task(task), OperatorMix.parse(operators)
    check_output(out, overwrite)
    with _progress(f"demos of {spec.name}") as progress:
        bar = progress.add_task("demos", total=episodes)
        result = collect_demos(spec, episodes, seed, out, overwrite=overwrite, operators=mix,
                               progress=lambda _: progress.advance(bar))
    emit({**_summary(result), "operators": operators}, as_json, _render)


@sim_app.command("rollouts")
def rollouts(
    out: OutArg,
    policy: Annotated[Path | None, typer.Option(
        "--policy", help="Run directory (or checkpoint) to roll out; it is served on a free loopback port.")] = None,
    server: Annotated[str | None, typer.Option(
        "--server", help="Or: the policy served at ws://HOST:PORT (e.g. by recap serve).")] = None,
    task: TaskOpt = "handover-easy",
    episodes: EpisodesOpt = 40,
    seed: Annotated[int, typer.Option(
        "--seed", help="Scenes of the rollouts; use another seed than the demos' (and than the evaluation's).")] = 10_000,
    replan_steps: Annotated[int, typer.Option("--replan-steps", min=1,
                                              help="Actions executed from each chunk before asking again.")] = 5,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="RECAP_SERVE_API_KEY",
                                                help="API key of the --server.")] = None,
    connect_timeout: Annotated[float, typer.Option("--connect-timeout",
                                                   help="Seconds to wait for the --server to answer.")] = 30.0,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Autonomous rollouts with the scripted expert taking over when the policy drifts or stalls.

    The taken-over frames are flagged as interventions (corrections, positive for RECAP); the
    policy's own frames are what the value model labels.

    Example:  recap sim rollouts raw/rollouts_1 --policy runs/sft --episodes 40 --seed 10000
    """
    from recap_core.errors import ConfigError
    from recap_core.fsutil import check_output
    from recap_core.sim.collect import collect
    from recap_core.sim.remote import remote_policy, serve_run
    from recap_core.sim.rollout import OPERATOR_RULE
    from recap_core.sim.task import get_task

    if (policy is None) == (server is None):
        raise ConfigError("give exactly one policy to roll out: --policy RUN or --server ws://HOST:PORT",
                          fix="recap sim rollouts raw/rollouts --policy runs/sft")
    spec = get_task(task)
    check_output(out, overwrite, inputs=(policy,) if policy is not None else ())
    with contextlib.ExitStack() as stack:
        if policy is not None:
            with err_console.status(f"loading {policy}"):
                url = stack.enter_context(serve_run(policy))
        else:
            url = str(server)
        policy_fn = stack.enter_context(remote_policy(url, api_key=api_key, connect_timeout_s=connect_timeout))
        with _progress(f"rollouts on {spec.name}") as progress:
            bar = progress.add_task("rollouts", total=episodes)
            result = collect(policy_fn, spec, episodes, seed, out, rule=OPERATOR_RULE, replan_steps=replan_steps,
                             overwrite=overwrite, progress=lambda _: progress.advance(bar))
    emit({**_summary(result), "policy": str(policy or server)}, as_json, _render)


def register(app: typer.Typer) -> None:
    app.add_typer(sim_app, name="sim")
