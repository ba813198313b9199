"""`recap eval --env MODULE:ID`: gymnasium environments driven by a policy served over websockets.

The env is `tests/sim/tiny_env.py` (made as MODULE:CLASS, so nothing is registered); a scripted
expert that reads the target off the image is served on a loopback port, and every outcome is
checked against what that expert must achieve on each seed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from recap_core.errors import ConfigError
from recap_core.serve.policy import ZerosPolicy
from recap_core.serve.server import ServerConfig, ServerThread
from recap_core.sim.closed_loop import PolicySource, evaluate_gym_source
from recap_core.sim.evaluate import wilson_interval
from recap_core.sim.gym_env import check_gym_policy, make_env
from recap_core.sim.task import PolicyOutputError
from tests.conftest import panel_text
from tests.sim.tiny_env import SPEED, ReachExpert, TinyReach, expert_steps

ENV = "tests.sim.tiny_env:TinyReach"
RECAP = [sys.executable, "-m", "recap_cli.main"]


def _targets(seed: int, episodes: int, dim: int = 2) -> list[np.ndarray]:
    """The target of each episode, from a fresh env reset as the evaluation resets it."""
    env, targets = TinyReach(dim), []
    for k in range(episodes):
        env.reset(seed=seed + k)
        targets.append(env.target.copy())
    return targets


@pytest.fixture
def expert():
    policy = ReachExpert(dim=2, horizon=8)
    with ServerThread(policy, ServerConfig(port=0)) as server:
        yield policy, server.url


def test_expert_outcomes_match_what_each_seed_allows(expert) -> None:
    policy, url = expert
    seed, episodes, max_steps, replan = 11, 6, 6, 4
    out = evaluate_gym_source(PolicySource(server=url), ENV, episodes, seed, replan_steps=replan, max_steps=max_steps)
    needed = [expert_steps(t) for t in _targets(seed, episodes)]
    wins = [n <= max_steps for n in needed]
    assert 0 < sum(wins) < episodes, needed  # the seed gives both outcomes, so both are checked
    assert [o["success"] for o in out["outcomes"]] == wins
    assert [o["seed"] for o in out["outcomes"]] == [seed + k for k in range(episodes)]
    assert [o["steps_to_success"] for o in out["outcomes"]] == [n if w else None for n, w in zip(needed, wins, strict=True)]
    assert [o["length"] for o in out["outcomes"]] == [min(n, max_steps) for n in needed]
    # A chunk is asked for every `replan` steps, and only those are executed.
    assert [o["chunks"] for o in out["outcomes"]] == [math.ceil(min(n, max_steps) / replan) for n in needed]
    # Each episode asks at steps 0, replan, 2 * replan, ... (the time feature is step / 100).
    asked = [round(t * 100) for t in policy.asked_at]
    assert asked == [s for n in needed for s in range(0, min(n, max_steps), replan)]
    assert out["successes"] == sum(wins) and out["success_rate"] == sum(wins) / episodes
    assert (out["ci_low"], out["ci_high"]) == wilson_interval(sum(wins), episodes)
    assert [o["max_reward"] for o in out["outcomes"]] == [4.0 if w else 1.0 for w in wins]
    assert out["max_reward"] == 4.0 and out["replan_steps"] == replan and out["max_steps"] == max_steps
    assert out["mean_steps_to_success"] == pytest.approx(np.mean([n for n, w in zip(needed, wins, strict=True) if w]))


def test_an_adapter_decides_observation_and_success(expert) -> None:
    """tests.sim.tiny_env:loose_adapter sends the image as cam_high and counts reward >= 1 as success."""
    _, url = expert
    with pytest.raises(PolicyOutputError, match=r"renders cameras \['cam_high'\].*reads \['top'\]") as info:
        evaluate_gym_source(PolicySource(server=url), ENV, 1, 0, adapter="tests.sim.tiny_env:loose_adapter")
    assert "--camera top=cam_high" in (info.value.fix or "")
    policy = ReachExpert(dim=2, horizon=8, camera="cam_high")
    with ServerThread(policy, ServerConfig(port=0)) as server:
        out = evaluate_gym_source(PolicySource(server=server.url), ENV, 3, 5, adapter="tests.sim.tiny_env:loose_adapter",
                                  replan_steps=100)
    # Within 0.5 of the target on every coordinate: far fewer steps than the strict task.
    needed = [max(1, math.ceil((np.max(np.abs(t)) - 0.5) / SPEED)) for t in _targets(5, 3)]
    assert out["successes"] == 3 and [o["length"] for o in out["outcomes"]] == needed
    assert [o["chunks"] for o in out["outcomes"]] == [1, 1, 1]  # replan beyond the chunk: the whole chunk


def test_time_limit_and_zero_actions() -> None:
    with ServerThread(ZerosPolicy(5, 2), ServerConfig(port=0)) as server:
        out = evaluate_gym_source(PolicySource(server=server.url), ENV, 2, 0, env_kwargs={"time_limit": 7})
    # The env truncates at 7 steps (before the default limit of 500); standing still never reaches 4.
    assert out["max_steps"] == 500 and [o["length"] for o in out["outcomes"]] == [7, 7]
    assert out["successes"] == 0 and out["mean_steps_to_success"] is None and out["ci_low"] == 0.0


def test_env_and_policy_mismatches_are_user_errors() -> None:
    with pytest.raises(ConfigError, match="cannot import 'no_such_env_pkg'") as info:
        make_env("no_such_env_pkg:Thing-v0")
    assert "MUJOCO_GL=egl" in (info.value.fix or "")
    with pytest.raises(ConfigError, match="not MODULE:NAME"):
        make_env("tests.sim.tiny_env:")
    with pytest.raises(ConfigError, match="gymnasium cannot make it"):
        make_env("tests.sim.tiny_env:Nothing-v0")
    with pytest.raises(ConfigError, match="--env-kwargs do not fit"):
        make_env(ENV, {"colour": "red"})
    with pytest.raises(ConfigError, match="default adapter reads a Dict") as info:
        evaluate_gym_source(PolicySource(server="ws://127.0.0.1:9"), "CartPole-v1", 1, 0)
    assert "--adapter" in (info.value.fix or "")
    with pytest.raises(ConfigError, match="--expert"):
        evaluate_gym_source(PolicySource(expert=True), ENV, 1, 0)
    obs = {"state": np.zeros(3, np.float32), "images": {"top": np.zeros((8, 8, 3), np.uint8)}}
    with pytest.raises(PolicyOutputError, match=r"state has 3 values.*state_dim=14"):
        check_gym_policy({"state_dim": 14, "cameras": ["top"]}, "ws://x", obs)
    check_gym_policy({"policy": "zeros"}, "ws://x", obs)  # a server that announces nothing is let through
    check_gym_policy({"state_dim": 3, "cameras": ["top", "wrist"]}, "ws://x", obs)  # a missing camera is masked
    with pytest.raises(PolicyOutputError, match=r"renders cameras \['top', 'wrist'\]") as info:
        check_gym_policy({"cameras": ["cam_high", "wrist"]}, "ws://x", {**obs, "images": {"top": 0, "wrist": 0}})
    assert "--camera cam_high=top" in (info.value.fix or "")


def test_cli_prints_one_json_document(expert) -> None:
    _, url = expert
    proc = subprocess.run([*RECAP, "eval", "--server", url, "--env", ENV, "--episodes", "3", "--seed", "2",
                           "--max-steps", "20", "--replan-steps", "3", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    needed = [expert_steps(t) for t in _targets(2, 3)]
    assert out["env"] == ENV and out["policy"] == url and out["episodes"] == 3 and out["replan_steps"] == 3
    assert [o["steps_to_success"] for o in out["outcomes"]] == needed and out["success_rate"] == 1.0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--env", "gym_aloha:gym_aloha/AlohaTransferCube-v0"], "cannot import 'gym_aloha'"),
        (["--env", ENV, "--task", "handover"], "--task belong to the built-in task"),
        (["--env", ENV, "--env-kwargs", "[1]"], "must be a JSON object"),
        (["--env", ENV, "--camera", "top=cam_high"], "--camera renames the cameras of a run served here"),
        (["--max-steps", "9"], "are for --env"),
    ],
)
def test_cli_user_errors_are_one_panel_and_exit_2(args: list[str], needle: str) -> None:
    from tests.data.test_output_safety import invoke

    if "gym_aloha" in args[1] and importlib.util.find_spec("gym_aloha") is not None:
        pytest.skip("gym-aloha is installed here: the missing-package error cannot be shown")
    code, out, err = invoke("eval", "--server", "ws://127.0.0.1:9", "--episodes", "1", *args)
    assert code == 2 and out == "" and "Traceback" not in err
    text = panel_text(err)
    assert needle in text
    if "gym_aloha" in args[1]:
        assert "recap[aloha]" in text and "MUJOCO_GL=egl" in text
