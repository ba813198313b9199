"""Serving real trained pi0.6 / pi0.5 runs: the `pi0` builder behind `recap serve RUN`.

Two tiny runs are trained once for the module (one optimiser step each, the real loader,
tokenizer, model and orbax checkpoints), then served through the same code path as the CLI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from recap_core.errors import CheckpointError, ServeError, TokenizerError
from recap_core.serve.loading import ServeOptions, load_policy
from tests.conftest import TINY_PI0 as TINY_PI0_BASE
from tests.conftest import panel_text, run_recap, tiny_policy_config, train_tiny_policy
from tests.serve.test_cli import ENV, RECAP, _read_ready_json

STATE_DIM, ACTION_DIM, HORIZON, MODEL_ACTION_DIM = 6, 5, 4, 8  # tests.sim.tiny_env with dim=5 matches
ROOT = Path(__file__).resolve().parents[2]
TINY_PI0 = {**TINY_PI0_BASE, "action_dim": MODEL_ACTION_DIM, "action_horizon": HORIZON}


def _train(root: Path, stage: str, preset: str, dataset: Path, tokenizer: Path) -> Path:
    config = tiny_policy_config(stage, dataset, tokenizer, model=TINY_PI0)
    assert config.preset == preset
    return train_tiny_policy(config, root / f"{preset}-run")


def _start_server(run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*RECAP, "serve", str(run), "--port", "0", "--json", "--num-steps", "3", "--no-preflight", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Both runs, and a `recap serve` subprocess for each, started as soon as its run exists.

    Compilation is mostly single-threaded, so each server loads and warms up while the next
    run trains and the in-process tests compile: the module takes far less wall time.
    """
    from recap_core.data.synthetic import make_dataset
    from recap_core.models.tokenizer import build_toy_tokenizer

    root = tmp_path_factory.mktemp("pi0serve")
    tokenizer = build_toy_tokenizer(root / "tok.model")
    dataset = make_dataset(root / "ds", episodes=2, frames=6, state_dim=STATE_DIM, action_dim=ACTION_DIM,
                           image_size=16, tasks=("pick up the cube",))
    servers: list[subprocess.Popen] = []
    try:
        out: dict[str, Path] = {"pi06": _train(root, "finetune", "pi06-tiny", dataset, tokenizer)}
        servers.append(_start_server(out["pi06"], "--seed", str(PI06_SERVER_SEED)))
        out["pi05"] = _train(root, "sft", "pi05-tiny", dataset, tokenizer)
        servers.append(_start_server(out["pi05"]))
        _SERVERS.update(pi06=servers[0], pi05=servers[1])
        yield out
    finally:
        for proc in servers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


_SERVERS: dict[str, subprocess.Popen] = {}
PI06_SERVER_SEED = 3  # `recap serve --seed`; the pi0.5 server keeps the default 0


@pytest.fixture(scope="module")
def served(runs: dict[str, Path]) -> dict[str, WebsocketClientPolicy]:
    """An unchanged openpi client connected to each `recap serve RUN` subprocess."""
    clients = {}
    for name, proc in _SERVERS.items():
        url = _read_ready_json(proc, timeout_s=400)["url"]
        host, port = url.removeprefix("ws://").rsplit(":", 1)
        clients[name] = WebsocketClientPolicy(host, port=int(port))
    return clients


@pytest.fixture(scope="module")
def pi06_policy(runs: dict[str, Path]):
    return load_policy(runs["pi06"], ServeOptions(num_steps=3))


def _observation(seed: int = 0, **extra: object) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "state": rng.uniform(-1, 1, STATE_DIM).astype(np.float32),
        # openpi's ALOHA layout: CHW uint8 at 224, resized to the model's 32 by the server.
        "images": {"cam_high": rng.integers(0, 256, (3, 224, 224), dtype=np.uint8),
                   "cam_left_wrist": rng.integers(0, 256, (3, 224, 224), dtype=np.uint8)},
        "prompt": "pick up the cube",
        **extra,
    }


def _batch(policy, **extra: object) -> dict:
    from recap_core.serve.observation import prepare_observation

    return prepare_observation(_observation(**extra), policy.spec)


def test_actions_are_deterministic_given_noise_or_seed(pi06_policy) -> None:
    from recap_core.serve.pi0_policy import Pi0Sampler

    sampler = pi06_policy._sample_actions
    batch = _batch(pi06_policy)
    noise = np.random.default_rng(3).standard_normal(sampler.noise_shape).astype(np.float32)
    first = sampler.sample(batch, noise)
    np.testing.assert_array_equal(first, sampler.sample(batch, noise))
    assert not np.allclose(first, sampler.sample(batch, noise + 1.0))
    # Two samplers with the same seed answer the same request sequence identically...
    a, b = (Pi0Sampler(sampler.task, sampler.parts, num_steps=3, cfg_beta=1.0, seed=7) for _ in range(2))
    answers_a, answers_b = [a(batch), a(batch)], [b(batch), b(batch)]
    np.testing.assert_array_equal(answers_a[0], answers_b[0])
    np.testing.assert_array_equal(answers_a[1], answers_b[1])
    # ...with fresh noise per request, as openpi's policy splits its rng per call.
    assert not np.array_equal(answers_a[0], answers_a[1])


def test_adv_ind_reaches_the_prompt_and_changes_the_actions(pi06_policy) -> None:
    sampler = pi06_policy._sample_actions
    inputs = {ind: sampler.inputs(_batch(pi06_policy, adv_ind=ind)) for ind in ("positive", "negative", "none")}
    tok = sampler.task.tokenizer
    texts = {ind: tok.processor.DecodeIds([int(t) for t, m in zip(x["tokens"][0], x["token_mask"][0], strict=True)
                                             if m and t != tok.processor.bos_id()])
             for ind, x in inputs.items()}
    assert "Advantage: positive" in texts["positive"] and "Advantage: negative" in texts["negative"]
    assert "Advantage" not in texts["none"]
    # Indicator dropout is off when serving: 50 requests all keep the clause.
    for _ in range(50):
        np.testing.assert_array_equal(sampler.inputs(_batch(pi06_policy, adv_ind="positive"))["tokens"],
                                      inputs["positive"]["tokens"])
    noise = np.random.default_rng(1).standard_normal(sampler.noise_shape).astype(np.float32)
    pos = sampler.sample(_batch(pi06_policy, adv_ind="positive"), noise)
    neg = sampler.sample(_batch(pi06_policy, adv_ind="negative"), noise)
    assert not np.allclose(pos, neg)
    # No adv_ind in the request: the announced default (positive).
    np.testing.assert_array_equal(sampler.sample(_batch(pi06_policy), noise), pos)


def test_cfg_guidance(pi06_policy) -> None:
    from recap_core.serve.pi0_policy import Pi0Sampler

    plain = pi06_policy._sample_actions
    # More samplers on the same loaded params, with other guidance weights.
    beta1 = Pi0Sampler(plain.task, plain.parts, num_steps=3, cfg_beta=1.0)
    guided = Pi0Sampler(plain.task, plain.parts, num_steps=3, cfg_beta=2.0)
    assert guided.guided and not beta1.guided
    noise = np.random.default_rng(2).standard_normal(plain.noise_shape).astype(np.float32)
    pos = _batch(pi06_policy, adv_ind="positive")
    none = _batch(pi06_policy, adv_ind="none")
    # beta = 1 is plain conditional sampling.
    np.testing.assert_array_equal(beta1.sample(pos, noise), plain.sample(pos, noise))
    # Guidance pushes away from the unconditional prompt: a different answer...
    assert not np.allclose(guided.sample(pos, noise), plain.sample(pos, noise), atol=1e-5)
    # ...except when the request carries no indicator (conditional == unconditional prompt).
    np.testing.assert_allclose(guided.sample(none, noise), plain.sample(none, noise), atol=1e-5)
    assert {"uncond_tokens", "uncond_token_mask"} <= set(guided.inputs(pos))


def test_pi05_refuses_advantage_options(runs: dict[str, Path]) -> None:
    with pytest.raises(ServeError, match=r"pi0\.5 run.*--require-adv-ind") as info:
        load_policy(runs["pi05"], ServeOptions(require_adv_ind=True))
    assert "recap finetune" in (info.value.fix or "")
    with pytest.raises(ServeError, match=r"--cfg-beta 1\.5"):
        load_policy(runs["pi05"], ServeOptions(cfg_beta=1.5))


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_missing_norm_stats_is_a_clear_error_and_cli_exit_2(runs: dict[str, Path], tmp_path: Path) -> None:
    broken = _copy_run(runs["pi06"], tmp_path / "run")
    (broken / "assets" / "norm_stats.json").unlink()
    with pytest.raises(CheckpointError, match=r"norm_stats\.json is missing") as info:
        load_policy(broken)
    assert "recap data stats" in (info.value.fix or "")
    before = sorted(p.relative_to(broken) for p in broken.rglob("*"))
    proc = run_recap("serve", broken, "--port", "0", "--no-preflight", timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "norm_stats.json" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.relative_to(broken) for p in broken.rglob("*")) == before  # input untouched


def test_tokenizer_is_found_from_the_run_dir(runs: dict[str, Path], tmp_path: Path) -> None:
    from recap_core.config import load_run_config
    from recap_core.serve.pi0_policy import task_factory_for
    from recap_core.train.jobs import tokenizer_path

    run = _copy_run(runs["pi06"], tmp_path / "run")
    config = load_run_config(run / "config.json")
    stored = run / "assets" / "tokenizer.model"
    # Training stored a copy of the tokenizer it used, and that copy is what the run resolves to.
    assert stored.read_bytes() == Path(config.tokenizer).read_bytes()
    assert tokenizer_path(config, run) == stored and tokenizer_path(config) == Path(config.tokenizer)
    # The run's own copy wins, so a moved or deleted original does not matter.
    data = json.loads((run / "config.json").read_text())
    data["tokenizer"] = str(tmp_path / "gone.model")
    (run / "config.json").write_text(json.dumps(data))
    moved = load_run_config(run / "config.json")
    task = task_factory_for(run, None)(moved)
    assert task.tokenizer.vocab_size == 512
    stored.unlink()
    with pytest.raises(TokenizerError, match=r"gone\.model"):
        task_factory_for(run, None)(moved)


def test_camera_map_renames_what_clients_send(runs: dict[str, Path], pi06_policy) -> None:
    """`--camera MODEL=CLIENT`; that a run serves with it end to end is checked by the `recap eval --env` test."""
    import dataclasses

    from recap_core.serve.observation import parse_camera_map, prepare_observation

    # The run's spec with the map `recap serve RUN --camera cam_high=top` gives it (without a second load).
    spec = dataclasses.replace(pi06_policy.spec, camera_map=parse_camera_map(["cam_high=top"]))
    assert spec.describe()["cameras"] == ["top", "cam_left_wrist"] and spec.describe()["camera_map"] == {"top": "cam_high"}
    obs = _observation()
    renamed = {**obs, "images": {"top": obs["images"]["cam_high"], "cam_left_wrist": obs["images"]["cam_left_wrist"]}}
    # `top` reaches the model exactly where an unmapped server puts `cam_high`.
    ours, plain = prepare_observation(renamed, spec), prepare_observation(obs, pi06_policy.spec)
    for key in ("images", "image_masks"):
        assert set(ours[key]) == set(plain[key]) == {"cam_high", "cam_left_wrist"}
        for cam in plain[key]:
            np.testing.assert_array_equal(ours[key][cam], plain[key][cam])
    # Written the wrong way round: refused before the weights load, naming the run's cameras.
    with pytest.raises(ServeError, match=r"no camera 'top'; its cameras are \['cam_high', 'cam_left_wrist'\]"):
        load_policy(runs["pi06"], ServeOptions(camera_map=parse_camera_map(["top=cam_high"])))
    proc = run_recap("serve", runs["pi06"], "--camera", "front=cam_high", "--port", "0", "--no-preflight", timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "its cameras are ['cam_high', 'cam_left_wrist']" in panel_text(proc.stderr)


def test_recap_eval_drives_a_gym_env_with_the_run(runs: dict[str, Path]) -> None:
    """`recap eval RUN --env`: the run served on loopback, the env's `top` camera mapped to `cam_high`."""
    proc = run_recap("eval", runs["pi06"], "--env", "tests.sim.tiny_env:TinyReach", "--env-kwargs",
                     json.dumps({"dim": ACTION_DIM}), "--camera", "cam_high=top", "--episodes", "2", "--max-steps", "4",
                     "--replan-steps", "3", "--seed", "1", "--json", cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["policy"] == str(runs["pi06"]) and out["episodes"] == 2 and out["replan_steps"] == 3
    assert [o["seed"] for o in out["outcomes"]] == [1, 2]
    for episode in out["outcomes"]:  # a 1-step policy rarely reaches the target: check the bookkeeping
        assert 1 <= episode["length"] <= 4 and episode["chunks"] == -(-episode["length"] // 3)
        assert episode["success"] == (episode["steps_to_success"] is not None)


# Wire tests last: by now both `recap serve` subprocesses have had time to warm up.


def test_recap_serve_run_answers_the_openpi_client(
    runs: dict[str, Path], served: dict[str, WebsocketClientPolicy]
) -> None:
    client = served["pi06"]
    meta = client.get_server_metadata()
    assert meta["model"] == "pi0.6" and meta["params"] == "ema" and meta["step"] == 1
    assert meta["adv_ind"]["default"] == "positive" and meta["adv_ind"]["conditioned"]
    assert meta["cameras"] == ["cam_high", "cam_left_wrist"] and meta["state_dim"] == STATE_DIM
    assert meta["default_prompt"] == "pick up the cube"  # the dataset's only task
    assert meta["seed"] == PI06_SERVER_SEED
    answers = []
    for extra in ({}, {"adv_ind": "negative"}, {"adv_ind": "none"}):
        out = client.infer(_observation(**extra))
        # The model pads actions to 8 dims; the robot gets its own 5, unnormalised, float32.
        assert out["actions"].shape == (HORIZON, ACTION_DIM) and out["actions"].dtype == np.float32
        assert np.isfinite(out["actions"]).all()
        answers.append(out["actions"])
    # --seed reached the sampler: the server's first answer is what a fresh same-seed policy answers
    # after the same warm-up request, and a policy with another seed answers differently.
    from recap_core.serve.policy import warm_up

    def first_answer(seed: int) -> np.ndarray:
        policy = load_policy(runs["pi06"], ServeOptions(num_steps=3, seed=seed))
        warm_up(policy)  # as the server does before its port opens (it draws noise too)
        return policy.infer(_observation())["actions"]

    np.testing.assert_allclose(answers[0], first_answer(PI06_SERVER_SEED), rtol=1e-5, atol=1e-6)
    assert not np.allclose(answers[0], first_answer(PI06_SERVER_SEED + 1), rtol=1e-3, atol=1e-4)
    with pytest.raises(RuntimeError, match="adv_ind"):
        client.infer(_observation(adv_ind="great"))
    assert client.infer(_observation())["actions"].shape == (HORIZON, ACTION_DIM)  # still serving


def test_pi05_run_serves_and_ignores_adv_ind(runs: dict[str, Path], served: dict[str, WebsocketClientPolicy]) -> None:
    from recap_core.config import load_run_config
    from recap_core.data.stats import load_norm_stats
    from recap_core.serve.observation import ObservationSpec, prepare_observation
    from recap_core.serve.pi0_policy import task_factory_for

    client = served["pi05"]
    meta = client.get_server_metadata()
    assert meta["model"] == "pi0.5" and not meta["adv_ind"]["conditioned"]
    for extra in ({"adv_ind": "negative"}, {}):  # accepted, with or without
        out = client.infer(_observation(**extra))
        assert out["actions"].shape == (HORIZON, ACTION_DIM) and out["actions"].dtype == np.float32
    # The indicator never reaches a pi0.5 prompt, so it cannot change the actions.
    run = runs["pi05"]
    task = task_factory_for(run, load_norm_stats(run / "assets"))(load_run_config(run / "config.json"))
    batch = _observation(adv_ind="positive")
    spec = ObservationSpec(state_dim=STATE_DIM, cameras=task.cameras, image_size=task.image_size)
    tokens = [task.observation_inputs(prepare_observation({**batch, "adv_ind": ind}, spec), None)["tokens"]
              for ind in ("positive", "negative", "none")]
    np.testing.assert_array_equal(tokens[0], tokens[1])
    np.testing.assert_array_equal(tokens[0], tokens[2])
