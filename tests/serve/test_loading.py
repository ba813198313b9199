"""Run directory -> policy: checkpoint resolution, builder registry, options, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from recap_core.errors import CheckpointError, ServeError
from recap_core.serve.loading import (
    RunCheckpoint,
    ServeOptions,
    load_policy,
    register_policy_builder,
    resolve_checkpoint,
)
from recap_core.serve.observation import ObservationSpec
from recap_core.serve.policy import ModelPolicy
from recap_core.serve.server import ServerConfig, ServerThread
from tests.serve.policies import (
    ACTION_DIM,
    HORIZON,
    STATE_DIM,
    echo_observation,
    expected_actions,
    state_echo_policy,
)

KIND = "test-echo"


def _build_echo(checkpoint: RunCheckpoint, options: ServeOptions) -> ModelPolicy:
    """A builder as a model module would write it: spec from config.json, z-score from norm stats."""
    stats = json.loads(checkpoint.norm_stats_path.read_text())["norm_stats"]["state"]
    mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
    model = checkpoint.config["model"]
    spec = ObservationSpec(
        state_dim=model["state_dim"],
        cameras=tuple(model["cameras"]),
        image_size=(8, 8),
        default_prompt=checkpoint.config.get("default_prompt"),
        default_adv_ind=options.default_adv_ind,
        require_adv_ind=options.require_adv_ind,
    )
    echo = state_echo_policy(spec, normalize_state=lambda s: (s - mean) / std)
    echo.metadata.update({"step": checkpoint.step, "cfg_beta": options.cfg_beta, "num_steps": options.num_steps})
    return echo


register_policy_builder(KIND, _build_echo)


def make_run(root: Path, *, kind: str = KIND, steps: tuple[int, ...] = (100, 200)) -> Path:
    run = root / "run"
    (run / "assets").mkdir(parents=True)
    config = {"model": {"kind": kind, "state_dim": STATE_DIM, "cameras": ["cam_high", "cam_left_wrist"]},
              "default_prompt": "hand over the vial"}
    (run / "config.json").write_text(json.dumps(config))
    stats = {"norm_stats": {"state": {"mean": [1.0] * STATE_DIM, "std": [2.0] * STATE_DIM}}}
    (run / "assets" / "norm_stats.json").write_text(json.dumps(stats))
    for step in steps:
        (run / "checkpoints" / str(step)).mkdir(parents=True)
    return run


def test_run_dir_serves_its_latest_checkpoint_to_an_openpi_client(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    policy = load_policy(run, ServeOptions(default_adv_ind="negative", cfg_beta=1.5, num_steps=3))
    assert policy.metadata["step"] == 200 and policy.metadata["cfg_beta"] == 1.5
    assert policy.metadata["adv_ind"]["default"] == "negative"
    with ServerThread(policy, ServerConfig(port=0)) as server:
        client = WebsocketClientPolicy(server.url)
        assert client.get_server_metadata()["cameras"] == ["cam_high", "cam_left_wrist"]
        out = client.infer(echo_observation(5.0))
        # state 5 normalised with mean 1, std 2 -> 2; no adv_ind sent -> the announced default.
        np.testing.assert_array_equal(out["actions"], expected_actions(np.full(STATE_DIM, 2.0), "negative"))
        assert out["actions"].shape == (HORIZON, ACTION_DIM)


def test_a_step_directory_selects_that_step(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    checkpoint = resolve_checkpoint(run / "checkpoints" / "100")
    assert (checkpoint.run_dir, checkpoint.step) == (run, 100)
    assert checkpoint.checkpoint_dir == run / "checkpoints" / "100"
    assert checkpoint.norm_stats_path == run / "assets" / "norm_stats.json"
    assert load_policy(run / "checkpoints" / "100").metadata["step"] == 100


def test_require_adv_ind_reaches_the_policy(tmp_path: Path) -> None:
    policy = load_policy(make_run(tmp_path), ServeOptions(require_adv_ind=True))
    with ServerThread(policy, ServerConfig(port=0)) as server:
        client = WebsocketClientPolicy(server.url)
        with pytest.raises(RuntimeError, match="missing 'adv_ind' and this server requires it"):
            client.infer(echo_observation(0.0))
        assert client.infer(echo_observation(0.0, adv_ind="positive"))["actions"][0, 0] == pytest.approx(999.5)


def test_not_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="not a recap run directory") as info:
        load_policy(tmp_path)
    assert "--policy zeros" in info.value.fix
    with pytest.raises(ServeError, match="does not exist"):
        load_policy(tmp_path / "nope")


def test_broken_runs_raise_checkpoint_errors(tmp_path: Path) -> None:
    run = make_run(tmp_path / "a", steps=())
    with pytest.raises(CheckpointError, match="has no checkpoints"):
        load_policy(run)
    run = make_run(tmp_path / "b")
    with pytest.raises(CheckpointError, match="no checkpoint at step 300"):
        resolve_checkpoint(run / "checkpoints" / "300")
    (run / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_policy(run)
    (run / "config.json").write_text(json.dumps({"model": {}}))
    with pytest.raises(CheckpointError, match=r"no model\.kind"):
        load_policy(run)


def test_unknown_model_kind_names_the_servable_ones(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=rf"kind 'pi99'.*servable kinds: .*{KIND}"):
        load_policy(make_run(tmp_path, kind="pi99"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"default_adv_ind": "good"}, "--default-adv-ind"), ({"cfg_beta": 0.5}, "--cfg-beta"), ({"num_steps": 0}, "--num-steps")],
)
def test_serve_options_are_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(ServeError, match=match):
        ServeOptions(**kwargs)
