"""`recap convert`: robot episodes and LeRobot datasets -> RECAP-ready LeRobot v3.0 (and v2.1 for openpi)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from recap_cli.output import console, emit, err_console

convert_app = typer.Typer(
    help="Convert robot episodes and LeRobot datasets (outputs are always new directories).",
    no_args_is_help=True,
)

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists (written to a temp dir, then renamed).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as one JSON document.")]
FailurePenalty = Annotated[
    float,
    typer.Option("--failure-penalty", help="reward_label at a failed episode's last frame is -X (in units of T_max steps)."),
]
TMax = Annotated[
    int | None, typer.Option("--t-max", help="Episode length that normalises returns (default: longest episode per task).")
]


@contextlib.contextmanager
def _episode_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr, driven by the library's (done, total) callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console, transient=True
    ) as bar:
        task_id = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task_id, completed=done, total=total)

        yield update


def _render(result: dict) -> None:
    table = Table(title=f"wrote {result['output']}", show_header=False)
    for key, value in result.items():
        if key == "output":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} -> {v}" for k, v in value.items()) or "none"
        table.add_row(key, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
    console.print(table)


@convert_app.command("aloha-hdf5")
def aloha_hdf5(
    raw_dir: Annotated[Path, typer.Argument(help="Folder of episode_<k>.hdf5 files in the ALOHA/ACT layout.")],
    out: Annotated[Path, typer.Argument(help="New LeRobot v3.0 dataset directory.")],
    fps: Annotated[int, typer.Option("--fps", help="Recording rate in frames per second.")],
    task: Annotated[str, typer.Option("--task", help="Task text (an episode's `task` attribute overrides it).")],
    robot_type: Annotated[str, typer.Option("--robot-type", help="Stored in meta/info.json.")] = "aloha",
    failure_penalty: FailurePenalty = 1.0,
    success: Annotated[
        str | None,
        typer.Option("--success", help="How to tell a successful episode: 'attr' (each file's `success` attribute; the "
                     "default when every file has one, otherwise the command refuses), 'all', 'none', or 'reward' "
                     "(max of /reward >= --success-reward)."),
    ] = None,
    success_reward: Annotated[
        float | None,
        typer.Option("--success-reward", help="With --success reward: the reward of a finished task (default 4, as "
                     "ACT's / gym-aloha's TransferCube and Insertion)."),
    ] = None,
    camera: Annotated[
        list[str] | None,
        typer.Option("--camera", help="Rename a camera, SRC=DST (repeatable), e.g. top=cam_high for openpi's ALOHA "
                     "clients; cameras not named keep theirs."),
    ] = None,
    t_max: TMax = None,
    overwrite: Overwrite = False,
    as_json: AsJson = False,
) -> None:
    """Convert raw ALOHA/ACT HDF5 episodes to LeRobot v3.0 with the five RECAP columns.

    Reads /observations/qpos, /observations/qvel (optional), /observations/images/<camera>,
    /action, optional /intervention and /reward, and the `success` / `task` attributes of each
    file. The success rule used is printed and recorded in meta/recap_source.json.

    Example:  recap convert aloha-hdf5 raw/ data/towel --fps 50 --task "fold the towel"

    Example (ACT sim recordings, no success attribute):
              recap convert aloha-hdf5 raw/ data/cube --fps 50 --task "transfer the cube" --success reward --camera top=cam_high
    """
    from recap_core.data.convert_aloha import convert_aloha_hdf5, parse_camera_map

    camera_map = parse_camera_map(camera or [])
    with _episode_progress("converting episodes") as progress:
        result = convert_aloha_hdf5(
            raw_dir, out, fps=fps, task=task, robot_type=robot_type, failure_penalty=failure_penalty,
            t_max=t_max, overwrite=overwrite, progress=progress, success=success, success_reward=success_reward,
            camera_map=camera_map,
        )
    emit(result, as_json, _render)


@convert_app.command("lerobot")
def lerobot(
    src: Annotated[Path, typer.Argument(help="LeRobot dataset (v2.1 or v3.0) without RECAP columns.")],
    out: Annotated[Path, typer.Argument(help="New LeRobot v3.0 dataset directory.")],
    success: Annotated[
        str,
        typer.Option("--success", help="'all' (every episode succeeded), a per-frame COLUMN read at each episode's last frame, or a JSON/CSV FILE mapping episode_index -> success."),
    ] = "all",
    intervention: Annotated[
        str,
        typer.Option("--intervention", help="A per-frame 0/1 COLUMN, 'all' (human demonstrations, the default) or 'none' (autonomous rollouts)."),
    ] = "all",
    failure_penalty: FailurePenalty = 1.0,
    t_max: TMax = None,
    overwrite: Overwrite = False,
    as_json: AsJson = False,
) -> None:
    """Add the five RECAP columns to an existing LeRobot dataset; videos are kept as they are.

    Example:  recap convert lerobot data/demos data/demos_recap --success all --intervention all
    """
    from recap_core.data.convert_lerobot import convert_lerobot

    with _episode_progress("labelling episodes") as progress:
        result = convert_lerobot(
            src, out, success=success, intervention=intervention, failure_penalty=failure_penalty,
            t_max=t_max, overwrite=overwrite, progress=progress,
        )
    emit(result, as_json, _render)


@convert_app.command("v30-to-v21")
def v30_to_v21(
    src: Annotated[Path, typer.Argument(help="LeRobot v3.0 dataset.")],
    out: Annotated[Path, typer.Argument(help="New LeRobot v2.1 dataset directory (per-episode files, for openpi).")],
    overwrite: Overwrite = False,
    as_json: AsJson = False,
) -> None:
    """Write a LeRobot v2.1 copy of a v3.0 dataset; every column is kept, videos are cut without re-encoding.

    Example:  recap convert v30-to-v21 data/towel data/towel_v21
    """
    from recap_core.data.versions import v30_to_v21 as convert

    with _episode_progress("splitting episodes") as progress:
        result = convert(src, out, overwrite=overwrite, progress=progress)
    emit(result, as_json, _render)


@convert_app.command("v21-to-v30")
def v21_to_v30(
    src: Annotated[Path, typer.Argument(help="LeRobot v2.1 dataset.")],
    out: Annotated[Path, typer.Argument(help="New LeRobot v3.0 dataset directory.")],
    overwrite: Overwrite = False,
    as_json: AsJson = False,
) -> None:
    """Write a LeRobot v3.0 copy of a v2.1 dataset with lerobot's own converter (the input is untouched).

    Example:  recap convert v21-to-v30 data/towel_v21 data/towel
    """
    from recap_core.data.versions import v21_to_v30 as convert

    with err_console.status("converting with lerobot's v2.1 -> v3.0 converter"):
        result = convert(src, out, overwrite=overwrite)
    emit(result, as_json, _render)


def register(app: typer.Typer) -> None:
    app.add_typer(convert_app, name="convert")
