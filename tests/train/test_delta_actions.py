"""Delta actions (`--delta-actions`): train on joint deltas, serve absolute targets.

The maths against a loop reference, the mask from the dataset's names, the run config that
records it, the delta norm stats, inheritance by a finetune run, and the served actions
(state added back on the joints, grippers untouched).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recap_core.data.actions import check_mask, chunk_deltas, delta_mask_from_names, to_absolute, to_delta
from recap_core.errors import ConfigError
from tests.conftest import TINY_PI0, tiny_policy_config, train_tiny_policy

STATE_DIM = ACTION_DIM = 4
NAMES = ["left_joint", "left_gripper", "right_joint", "right_gripper"]
MASK = [True, False, True, False]


def test_delta_and_absolute_are_inverse_on_the_masked_dims() -> None:
    rng = np.random.default_rng(0)
    actions, state = rng.normal(size=(3, 5, 6)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    mask = [True, False, True, False]
    delta = to_delta(actions[..., :4], state, mask)
    np.testing.assert_allclose(delta[..., 0], actions[..., 0] - state[:, None, 0], rtol=1e-6)
    np.testing.assert_array_equal(delta[..., 1], actions[..., 1])  # grippers stay absolute
    # The model pads actions (6 > 4 dims): the padding passes through untouched.
    padded = np.concatenate([delta, actions[..., 4:]], axis=-1)
    back = to_absolute(padded, state, mask)
    np.testing.assert_allclose(back[..., :4], actions[..., :4], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(back[..., 4:], actions[..., 4:])


def test_chunk_deltas_match_a_loop_over_frames_and_offsets() -> None:
    rng = np.random.default_rng(1)
    lengths, horizon = [3, 5], 4
    episodes = np.repeat([0, 1], lengths)
    state, actions = rng.normal(size=(8, 2)), rng.normal(size=(8, 2))
    got = chunk_deltas(state, actions, episodes, [True, False], horizon)
    want, start = [], 0
    for n in lengths:
        for t in range(n):
            for k in range(horizon):
                a = actions[start + min(t + k, n - 1)]  # past the episode's end: its last action
                want.append([a[0] - state[start + t, 0], a[1]])
        start += n
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6)


def test_mask_from_names_and_its_errors() -> None:
    assert delta_mask_from_names(NAMES, 4, "ds") == MASK
    with pytest.raises(ConfigError, match="no per-dim names") as err:
        delta_mask_from_names(None, 4, "ds")
    assert "data.delta_actions=[true, true, true, true]" in err.value.fix
    with pytest.raises(ConfigError, match="has 3 entries but the actions have 4 dims"):
        check_mask([True, True, False], 4, 4, "ds")
    with pytest.raises(ConfigError, match="beyond the state's 2 dims"):
        check_mask([True, False, True, False], 4, 2, "ds")


@pytest.fixture(scope="module")
def named_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeRobot dataset whose state/action features carry per-dim names (as the converters write)."""
    from recap_core.data.synthetic import make_dataset

    root = make_dataset(tmp_path_factory.mktemp("delta") / "ds", episodes=3, frames=7, state_dim=STATE_DIM,
                        action_dim=ACTION_DIM, image_size=16, cameras=("cam_high",), tasks=("stack",))
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    for key in ("observation.state", "action"):
        info["features"][key]["names"] = NAMES
    info_path.write_text(json.dumps(info, indent=4))
    return root


@pytest.fixture(scope="module")
def delta_run(named_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recap_core.models.tokenizer import build_toy_tokenizer

    root = tmp_path_factory.mktemp("delta_run")
    tokenizer = build_toy_tokenizer(root / "tok.model")
    return train_tiny_policy(tiny_policy_config("sft", named_dataset, tokenizer, **{"data.delta_actions": True}), root / "sft")


def test_run_records_the_mask_and_delta_norm_stats(delta_run: Path, named_dataset: Path) -> None:
    from recap_core.data.dataset import column_array, open_dataset, read_table
    from recap_core.data.stats import load_norm_stats, stats_of

    config = json.loads((delta_run / "config.json").read_text())
    assert config["data"]["delta_actions"] == MASK
    stats = load_norm_stats(delta_run / "assets" / "norm_stats.json")
    table = read_table(open_dataset(named_dataset), ["observation.state", "action"])
    state, action = (np.asarray(column_array(table, c)) for c in ("observation.state", "action"))
    want = stats_of(chunk_deltas(state, action, np.asarray(column_array(table, "episode_index")), MASK,
                                 TINY_PI0["action_horizon"]))
    np.testing.assert_allclose(stats["actions"].q99, want.q99, rtol=1e-6)
    np.testing.assert_allclose(stats["actions"].mean, want.mean, rtol=1e-6)


def test_data_stats_delta_actions_are_the_runs_file(delta_run: Path, named_dataset: Path, tmp_path: Path) -> None:
    from tests.data.test_output_safety import invoke

    out = tmp_path / "norm_stats.json"
    horizon = str(TINY_PI0["action_horizon"])
    code, stdout, err = invoke("data", "stats", named_dataset, "--delta-actions", "--action-horizon", horizon,
                               "--output", out, "--json")
    assert code == 0, err
    run_file = delta_run / "assets" / "norm_stats.json"
    assert out.read_bytes() == run_file.read_bytes()  # the file a --delta-actions run wrote, byte for byte
    printed = json.loads(stdout)
    assert printed["norm_stats"] == json.loads(run_file.read_text())["norm_stats"]
    assert printed["convention"] == {"actions": "delta", "delta_mask": MASK, "action_horizon": TINY_PI0["action_horizon"]}
    code, stdout, err = invoke("data", "stats", named_dataset, "--delta-actions", "--action-horizon", horizon)
    assert code == 0 and "deltas from the current state over chunks of 4" in stdout and "absolute dims: 1, 3" in stdout
    code, stdout, _ = invoke("data", "stats", named_dataset, "--json")  # without the flag: absolute, not the run's
    assert json.loads(stdout)["convention"]["actions"] == "absolute"
    assert json.loads(stdout)["norm_stats"]["actions"] != printed["norm_stats"]["actions"]


def test_finetune_inherits_the_mask_and_refuses_another(delta_run: Path, named_dataset: Path) -> None:
    from recap_core.data.dataset import open_dataset
    from recap_core.train.jobs import resolve_delta_actions

    info = open_dataset(named_dataset)
    tokenizer = delta_run / "assets" / "tokenizer.model"
    inherited = tiny_policy_config("finetune", named_dataset, tokenizer, init=str(delta_run))
    assert resolve_delta_actions(inherited, info) == MASK
    absolute = tiny_policy_config("finetune", named_dataset, tokenizer, init=str(delta_run), **{"data.delta_actions": False})
    with pytest.raises(ConfigError, match=r"trained with data\.delta_actions=") as err:
        resolve_delta_actions(absolute, info)
    assert "--delta-actions/--absolute-actions" in err.value.fix
    assert resolve_delta_actions(tiny_policy_config("sft", named_dataset, tokenizer), info) is False  # default: absolute


def test_served_actions_add_the_state_back_on_the_joints(delta_run: Path) -> None:
    from recap_core.data.stats import ACTIONS, unnormalize
    from recap_core.serve.loading import ServeOptions, load_policy
    from recap_core.serve.observation import prepare_observation

    policy = load_policy(delta_run, ServeOptions(num_steps=2))
    assert policy.metadata["delta_actions"] == MASK
    sampler = policy._sample_actions
    noise = np.random.default_rng(0).standard_normal(sampler.noise_shape).astype(np.float32)
    sampler.next_noise = lambda: noise
    state = np.array([0.5, 0.9, -1.5, 0.1], np.float32)
    obs = {"state": state, "images": {"cam_high": np.zeros((16, 16, 3), np.uint8)}, "prompt": "stack"}
    served = policy.infer(obs)["actions"]
    model = sampler.sample(prepare_observation(obs, policy.spec), noise)[0, :, :ACTION_DIM]
    deltas = np.asarray(unnormalize(model, sampler.task.norm_stats[ACTIONS], use_quantiles=True))
    np.testing.assert_allclose(served[:, [0, 2]], deltas[:, [0, 2]] + state[[0, 2]], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(served[:, [1, 3]], deltas[:, [1, 3]], rtol=1e-5, atol=1e-5)
