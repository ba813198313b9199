"""`recap serve`: serve a run (or zero actions) to robots over the openpi websocket protocol."""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recap_cli.output import err_console, info, print_json, warn

if TYPE_CHECKING:
    from recap_core.serve.policy import Policy


class AdvInd(StrEnum):
    positive = "positive"
    negative = "negative"
    none = "none"


class BuiltinPolicy(StrEnum):
    zeros = "zeros"


# --max-message-mb: 1 KiB (the server's floor) to 4 GiB (far above any camera observation).
MIN_MESSAGE_MB, MAX_MESSAGE_MB = 0.001, 4096.0


def _max_message_bytes(max_message_mb: float) -> int:
    from recap_core.errors import ServeError

    if not (math.isfinite(max_message_mb) and MIN_MESSAGE_MB <= max_message_mb <= MAX_MESSAGE_MB):
        raise ServeError(
            f"--max-message-mb must be a number from {MIN_MESSAGE_MB:g} to {MAX_MESSAGE_MB:g} (MB), "
            f"got {max_message_mb:g}",
            fix="leave the default (64), or give the largest observation you send in MB, e.g. 16",
        )
    return max(1024, int(max_message_mb * 1024 * 1024))


def _parse_action_shape(text: str | None) -> tuple[int, int]:
    from recap_core.errors import ServeError

    parts = (text or "").replace("x", ",").split(",")
    try:
        horizon, dim = (int(p) for p in parts)
    except ValueError:
        raise ServeError(
            f"--action-shape {text!r} is not H,D",
            fix="give the action chunk shape, e.g. --action-shape 50,14",
        ) from None
    return horizon, dim


def _policy_loader(
    run_or_ckpt: Path | None,
    policy: BuiltinPolicy | None,
    action_shape: str | None,
    default_adv_ind: AdvInd,
    require_adv_ind: bool,
    cfg_beta: float,
    num_steps: int,
    seed: int,
    preflight: bool,
    cameras: list[str] | None = None,
) -> Callable[[], Policy]:
    """Check the arguments now (fast); the returned function runs the preflight and loads the policy."""
    from recap_core.errors import ServeError

    if policy is not None and run_or_ckpt is not None:
        raise ServeError("give either RUN_OR_CKPT or --policy, not both", fix="drop one of them")
    if policy is BuiltinPolicy.zeros:
        from recap_core.serve.policy import ZerosPolicy

        if cameras:
            raise ServeError("--camera is only for a run", fix="--policy zeros accepts any camera names")
        if action_shape is None:
            raise ServeError("--policy zeros needs --action-shape H,D", fix="e.g. --action-shape 50,14")
        zeros = ZerosPolicy(*_parse_action_shape(action_shape))
        return lambda: zeros
    if run_or_ckpt is None:
        raise ServeError(
            "nothing to serve: give a run directory or --policy zeros",
            fix="recap serve runs/pi06  or  recap serve --policy zeros --action-shape 50,14",
        )
    if action_shape is not None:
        raise ServeError("--action-shape is only for --policy zeros", fix="a run's action shape comes from its config")
    from recap_core.serve.loading import ServeOptions, load_policy, resolve_checkpoint
    from recap_core.serve.observation import parse_camera_map

    options = ServeOptions(
        default_adv_ind=default_adv_ind.value,
        require_adv_ind=require_adv_ind,
        cfg_beta=cfg_beta,
        num_steps=num_steps,
        seed=seed,
        camera_map=parse_camera_map(cameras or []),
    )
    checkpoint = resolve_checkpoint(run_or_ckpt)  # a wrong path fails here, before any slow check
    from recap_core.stack import version_changes

    recorded = checkpoint.config.get("versions") if isinstance(checkpoint.config, dict) else None
    changes = version_changes(recorded if isinstance(recorded, dict) else None)
    if changes:
        warn(f"{run_or_ckpt} was trained under other versions: {', '.join(changes)}")

    def load() -> Policy:
        if preflight:
            from recap_core.doctor import preflight as run_preflight

            preset = checkpoint.config.get("preset")
            run_preflight("serve", preset=preset if isinstance(preset, str) else None, warn=warn)
        return load_policy(checkpoint, options)

    return load


def serve(
    run_or_ckpt: Annotated[
        Path | None,
        typer.Argument(help="A recap run directory (latest checkpoint) or <run>/checkpoints/<step>.", show_default=False),
    ] = None,
    policy: Annotated[
        BuiltinPolicy | None,
        typer.Option("--policy", help="Serve a built-in policy instead of a checkpoint (zeros: zero actions)."),
    ] = None,
    action_shape: Annotated[
        str | None, typer.Option("--action-shape", help="H,D of the action chunk for --policy zeros, e.g. 50,14.")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to bind; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0 picks a free one and prints it).")] = 8000,
    default_adv_ind: Annotated[
        AdvInd, typer.Option("--default-adv-ind", help="adv_ind for observations that carry none (in the metadata).")
    ] = AdvInd.positive,
    require_adv_ind: Annotated[
        bool, typer.Option("--require-adv-ind", help="Answer observations without adv_ind with an error.")
    ] = False,
    cfg_beta: Annotated[
        float, typer.Option("--cfg-beta", help="Classifier-free guidance weight; > 1 turns CFG on.")
    ] = 1.0,
    num_steps: Annotated[int, typer.Option("--num-steps", help="Flow-matching denoising steps.")] = 10,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the sampling noise. A server started with the same seed answers the same sequence of "
                 "requests with the same actions (the noise advances with every request, so the order of "
                 "concurrent clients' requests matters).")
    ] = 0,
    camera: Annotated[
        list[str] | None,
        typer.Option(
            "--camera", metavar="MODEL=CLIENT",
            help="Feed the run's camera MODEL from the image clients send as CLIENT (repeatable): with "
            "--camera top=cam_high clients send images['cam_high'] and the model sees it as 'top'. The metadata "
            "lists the names clients send ('cameras') and the map ('camera_map').",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="RECAP_SERVE_API_KEY", help="Refuse clients without 'Authorization: Api-Key KEY'."),
    ] = None,
    max_message_mb: Annotated[
        float,
        typer.Option(
            "--max-message-mb", help="Largest request accepted (0.001 to 4096); bigger ones close that connection."
        ),
    ] = 64.0,
    no_preflight: Annotated[bool, typer.Option("--no-preflight", help="Skip the doctor checks.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="When ready, print {url, health_url, metadata} as one JSON document.")
    ] = False,
) -> None:
    """Serve a policy over the openpi websocket protocol until Ctrl-C / SIGTERM.

    Any openpi client (openpi_client.WebsocketClientPolicy, limb's OpenPIClient) connects unchanged.

    Observations without adv_ind get --default-adv-ind (announced in the metadata). GET /healthz answers 200. SIGTERM finishes in-flight requests, then exits.

    Example:  recap serve runs/pi06-recap --port 8000   (or: recap serve --policy zeros --action-shape 50,14)
    """
    from recap_core.serve.client import health_url
    from recap_core.serve.server import PolicyServer, ServerConfig, bind_socket

    _log_requests_to_stderr()

    config = ServerConfig(
        host=host, port=port, api_key=api_key, max_message_bytes=_max_message_bytes(max_message_mb)
    )
    load = _policy_loader(
        run_or_ckpt, policy, action_shape, default_adv_ind, require_adv_ind, cfg_beta, num_steps, seed,
        not no_preflight, camera,
    )
    # Take the port before the preflight and the (maybe minutes-long) model load: a busy port fails at once.
    sock = bind_socket(config.host, config.port)
    try:
        with err_console.status("loading and warming up the policy"):
            served = load()
        server = PolicyServer(served, config, sock=sock)
    except BaseException:
        sock.close()
        raise

    def ready(srv: PolicyServer) -> None:
        if as_json:
            print_json({"url": srv.url, "health_url": health_url(srv.url), "metadata": served.metadata})
        info(f"[green]serving[/green] {srv.url}  (health: {health_url(srv.url)}; Ctrl-C or SIGTERM to stop)")
        if host in ("0.0.0.0", "::", ""):
            info(f"listening on all interfaces: robots connect to ws://<this machine's address>:{srv.port}")

    server.run(on_ready=ready)
    info("server stopped")


def _log_requests_to_stderr() -> None:
    """Show the operator bad requests and policy failures (one line each) while serving."""
    import logging

    from rich.logging import RichHandler

    logger = logging.getLogger("recap.serve")
    logger.setLevel(logging.INFO)
    logger.addHandler(RichHandler(console=err_console, show_path=False, rich_tracebacks=False))
    logger.propagate = False


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
