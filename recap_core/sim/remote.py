"""Drive the toy task with a policy served over the openpi websocket protocol.

`remote_policy(url)` turns a running `recap serve` (or any openpi policy server) into a
`policy_fn` for `evaluate` / `collect`; `serve_run(run)` starts one for a run directory on a
free loopback port for the duration of a `with` block. Used together::

    with serve_run(run_dir) as url, remote_policy(url) as policy_fn:
        result = evaluate(policy_fn, "handover", episodes=50, seed=0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from recap_core.sim.rollout import PolicyFn
from recap_core.sim.task import ACTION_DIM, CAMERAS, STATE_DIM, PolicyOutputError


def check_served_policy(metadata: Mapping[str, Any], url: str) -> None:
    """Refuse a server whose announced shapes or cameras cannot drive the toy task."""
    for key, want in (("action_dim", ACTION_DIM), ("state_dim", STATE_DIM)):
        got = metadata.get(key)
        if got is not None and int(got) != want:
            raise PolicyOutputError(
                f"the policy at {url} announces {key}={got}; the toy task needs {key}={want}",
                fix="serve a run trained on toy-task data (e.g. from `recap demo`), not a real-robot policy",
            )
    cameras = metadata.get("cameras")
    if cameras is not None and not set(cameras) <= set(CAMERAS):
        raise PolicyOutputError(
            f"the policy at {url} expects cameras {sorted(cameras)}; the toy task renders {list(CAMERAS)}",
            fix="serve a run trained on toy-task data, whose cameras are cam_high and the two wrist cameras",
        )


@contextlib.contextmanager
def remote_policy(
    url: str,
    *,
    adv_ind: str | None = None,
    api_key: str | None = None,
    connect_timeout_s: float = 30.0,
    check: Callable[[Mapping[str, Any], str], None] = check_served_policy,
) -> Iterator[PolicyFn]:
    """A policy_fn that sends each observation to the server (with `adv_ind` when given).

    `check(metadata, url)` refuses a server that cannot drive the environment (default: the toy task's)."""
    from recap_core.serve.client import PolicyClient

    with PolicyClient(url, api_key=api_key, connect_timeout_s=connect_timeout_s) as client:
        check(client.metadata, client.url)

        def policy_fn(obs: dict[str, Any]) -> Any:
            return client.infer({**obs, "adv_ind": adv_ind} if adv_ind is not None else obs)

        yield policy_fn


@contextlib.contextmanager
def serve_policy(policy: Any) -> Iterator[str]:
    """Serve a loaded policy on 127.0.0.1:<free port> for the `with` block; yield its URL."""
    from recap_core.serve.server import ServerConfig, ServerThread

    with ServerThread(policy, ServerConfig(host="127.0.0.1", port=0)) as server:
        yield server.url


@contextlib.contextmanager
def serve_run(run_or_ckpt: Path, *, default_adv_ind: str = "positive") -> Iterator[str]:
    """Load a run (or one of its checkpoints), serve it on 127.0.0.1:<free port>, yield its URL."""
    from recap_core.serve.loading import ServeOptions, load_policy

    with serve_policy(load_policy(Path(run_or_ckpt), ServeOptions(default_adv_ind=default_adv_ind))) as url:
        yield url
