"""`recap eval`: closed-loop success rate of a policy on the built-in toy task or a gymnasium env."""

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


def _render_gym(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{result['policy']} on {result['env']} (seed {result['seed']}, "
                  f"replan every {result['replan_steps']} steps, at most {result['max_steps']} steps)")
    for column in ("episode", "seed", "success", "steps", "steps to success", "max reward"):
        table.add_column(column)
    for row in result["outcomes"]:
        table.add_row(str(row["index"]), str(row["seed"]), "yes" if row["success"] else "no", str(row["length"]),
                      "" if row["steps_to_success"] is None else str(row["steps_to_success"]),
                      f"{row['max_reward']:g}")
    console.print(table)
    steps = result["mean_steps_to_success"]
    console.print(
        f"success rate {result['success_rate']:.0%} ({result['successes']}/{result['episodes']}, 95% CI "
        f"{result['ci_low']:.0%} – {result['ci_high']:.0%}); max reward {result['max_reward']:g} "
        f"(mean per episode {result['mean_max_reward']:g})"
        + ("" if steps is None else f"; {steps:.0f} steps to success on average")
    )


def _env_kwargs(text: str | None) -> dict[str, Any]:
    import json

    from recap_core.errors import ConfigError

    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--env-kwargs is not JSON: {exc}", fix='e.g. --env-kwargs \'{"obs_type": "pixels_agent_pos"}\'') from None
    if not isinstance(value, dict):
        raise ConfigError(f"--env-kwargs must be a JSON object, got {type(value).__name__}",
                          fix='e.g. --env-kwargs \'{"obs_type": "pixels_agent_pos"}\'')
    return value


def _check_gym_flags(task: str | None, video: Path | None, indicator_states: int) -> None:
    from recap_core.errors import ConfigError

    given = [flag for flag, on in (("--task", task), ("--video", video), ("--indicator-effect", indicator_states))
             if on]
    if given:
        raise ConfigError(f"{', '.join(given)} belong to the built-in task, not to --env",
                          fix=f"drop {', '.join(given)}, or drop --env to evaluate on the built-in task")


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
    task: Annotated[str | None, typer.Option("--task", help=_TASK_HELP + " Default: handover.")] = None,
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
    env: Annotated[
        str | None,
        typer.Option(
            "--env", metavar="MODULE:ID",
            help="Evaluate on a gymnasium environment instead of the toy task: MODULE is imported (it registers ID), "
            "then gymnasium.make(ID); MODULE:CLASS makes an env class without registering it. E.g. "
            "gym_aloha:gym_aloha/AlohaTransferCube-v0 (pip install 'recap[aloha]', MUJOCO_GL=egl).",
        ),
    ] = None,
    env_kwargs: Annotated[
        str | None,
        typer.Option("--env-kwargs", metavar="JSON",
                     help='Keyword arguments of gymnasium.make, e.g. \'{"obs_type": "pixels_agent_pos"}\'.'),
    ] = None,
    adapter: Annotated[
        str | None,
        typer.Option(
            "--adapter", metavar="MODULE:FUNC",
            help="FUNC(env) returns an object with observation(obs) -> {state, images[, prompt]}, action(row) -> env "
            "action and success(reward, terminated, info) -> bool. Default: Dict observations with agent_pos (or "
            "state) and pixels (camera -> HxWx3 uint8), Box actions, success from info['is_success'].",
        ),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", min=1, help="Steps per --env episode (default: the env's time limit, else 500)."),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", help="Task text sent with each --env observation (default: the run's own, if any)."),
    ] = None,
    camera: Annotated[
        list[str] | None,
        typer.Option(
            "--camera", metavar="MODEL=CLIENT",
            help="For RUN_OR_CKPT: feed the run's camera MODEL from the image sent as CLIENT (repeatable), as "
            "`recap serve --camera` does; e.g. --camera cam_high=top for an env that renders 'top'.",
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print {task, policy, success_rate, ci_low, ci_high, mean_length, outcomes, ...} "
            "(with --env: {env, policy, success_rate, ci_low, ci_high, max_reward, mean_steps_to_success, "
            "replan_steps, outcomes, ...})."
        ),
    ] = False,
) -> None:
    """Closed-loop success rate (with a Wilson 95% interval) of a policy on the built-in toy task or a gymnasium env.

    The policy is reached through the openpi websocket protocol, so a policy served anywhere can be evaluated; a run directory is served on a free loopback port while the evaluation runs.

    With --env MODULE:ID it runs a gymnasium environment instead: episode k resets with seed + k, each chunk's first --replan-steps actions are executed, and an episode ends at success, termination or --max-steps.

    Example:  recap eval --server ws://127.0.0.1:8000 --task handover --episodes 50 --json

    Example:  recap eval runs/pi06 --env gym_aloha:gym_aloha/AlohaTransferCube-v0 --env-kwargs '{"obs_type": "pixels_agent_pos"}' --camera cam_high=top --replan-steps 10
    """
    from recap_core.serve.observation import parse_camera_map
    from recap_core.sim.closed_loop import PolicySource, evaluate_gym_source, evaluate_source
    from recap_core.sim.task import get_task

    source = PolicySource(run=run_or_ckpt, server=server, expert=expert,
                          adv_ind=adv_ind.value if adv_ind is not None else None, cfg_beta=cfg_beta,
                          api_key=api_key, connect_timeout_s=connect_timeout, camera_map=parse_camera_map(camera or []))
    if env is not None:
        _check_gym_flags(task, video, indicator_states)
        out = evaluate_gym_source(source, env, episodes, seed, env_kwargs=_env_kwargs(env_kwargs), adapter=adapter,
                                  replan_steps=replan_steps, max_steps=max_steps, prompt=prompt,
                                  progress=lambda: _episode_progress(env, episodes), status=err_console.status)
        emit(out, as_json, _render_gym)
        return
    if max_steps is not None or prompt is not None or env_kwargs is not None or adapter is not None:
        from recap_core.errors import ConfigError

        raise ConfigError("--max-steps, --prompt, --env-kwargs and --adapter are for --env",
                          fix="add --env MODULE:ID, or drop them for the built-in task")
    task = task or "handover"
    spec = get_task(task)
    out = evaluate_source(source, task, episodes, seed, replan_steps=replan_steps, indicator_states=indicator_states,
                          video_dir=video, video_episodes=video_episodes, overwrite=overwrite,
                          progress=lambda: _episode_progress(spec.name, episodes), status=err_console.status)
    emit(out, as_json, _render)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
