"""Serve a trained pi0.5 / pi0.6 run: the policy builder for model kind "pi0".

Everything comes from the run directory, exactly as training left it: `config.json` (model,
cameras), `assets/norm_stats.json`, `assets/tokenizer.model` and the checkpoint. The model is rebuilt through
`train.init.load_parts` (the frozen base re-attached and checked against the fingerprint the
checkpoint recorded; EMA params when the run kept them, as openpi serves EMA). Requests go
through the run's own `PolicyTask.observation_inputs` with no generator, so serving tokenises,
normalises and assigns cameras exactly as training did, and the advantage clause is never
dropped. pi0.6 runs put the request's `adv_ind` into the prompt; pi0.5 runs accept and ignore it.
`cfg_beta > 1` samples with classifier-free guidance against the prompt without the clause.

Sampling is one jitted function (params, inputs, noise) -> actions; the server warms it up
before its port opens. Noise comes from a seeded numpy generator, so a server started with the
same seed answers the same request sequence with the same actions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.config import RunConfig, load_run_config
from recap_core.data.stats import ACTIONS, STATE, load_norm_stats
from recap_core.errors import CheckpointError, RecapError, ServeError
from recap_core.runtime import compiler_options
from recap_core.serve.loading import RunCheckpoint, ServeOptions, register_policy_builder
from recap_core.serve.observation import ObservationSpec
from recap_core.serve.policy import ModelPolicy
from recap_core.train.init import POLICY_STAGES, load_parts
from recap_core.train.jobs import POLICY_KIND, task_for_config
from recap_core.train.policy_task import PolicyTask


def run_default_prompt(config: RunConfig) -> str | None:
    """The dataset's task when it had exactly one (so clients may omit `prompt`), else None."""
    from recap_core.data.dataset import open_dataset

    try:
        tasks = open_dataset(Path(config.dataset), version=None).tasks
    except (RecapError, OSError, ValueError, KeyError):
        return None  # the training data need not be on the serving machine
    return tasks[0] if len(tasks) == 1 else None


class Pi0Sampler:
    """Wire batch (batch contract, B=1) -> model actions [1, H, action_dim] in normalised units."""

    def __init__(self, task: PolicyTask, parts: Any, *, num_steps: int, cfg_beta: float, seed: int = 0) -> None:
        import jax
        from flax import nnx

        self.task = task
        self.parts = parts  # ModelParts: more samplers (other beta/steps) can share these params
        self.guided = cfg_beta != 1.0
        graphdef = parts.graphdef
        config = task.model_config
        self.noise_shape = (1, config.action_horizon, config.action_dim)

        def sample(trainable: Any, frozen: Any, inputs: dict[str, Any], noise: Any) -> Any:
            model = nnx.merge(graphdef, trainable, frozen)
            # rng is unused when noise is given; sample_actions takes it positionally.
            return model.sample_actions(jax.random.key(0), inputs, num_steps=num_steps, cfg_beta=cfg_beta,
                                        noise=noise)

        self._sample = jax.jit(sample, compiler_options=compiler_options(parts.frozen))
        self._noise_rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # the server may run more than one inference worker

    def next_noise(self) -> np.ndarray:
        with self._lock:
            return self._noise_rng.standard_normal(self.noise_shape, dtype=np.float32)

    def inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Model inputs from a served batch: the training pipeline with indicator dropout off."""
        return self.task.observation_inputs(batch, None, with_unconditional=self.guided)

    def sample(self, batch: dict[str, Any], noise: np.ndarray) -> np.ndarray:
        out = self._sample(self.parts.trainable, self.parts.frozen, self.inputs(batch), np.asarray(noise, np.float32))
        return np.asarray(out, np.float32)

    def __call__(self, batch: dict[str, Any]) -> np.ndarray:
        return self.sample(batch, self.next_noise())


def _check_options(config: RunConfig, pi06: bool, options: ServeOptions, run_dir: Path) -> None:
    """Refuse advantage options a pi0.5 run cannot honour, instead of silently ignoring them."""
    if pi06:
        return
    if options.require_adv_ind:
        raise ServeError(
            f"{run_dir} is a pi0.5 run (preset {config.preset}): it was not trained with adv_ind, "
            "so --require-adv-ind has no effect",
            fix="drop --require-adv-ind, or serve a `recap finetune` (pi0.6) run",
        )
    if options.cfg_beta != 1.0:
        raise ServeError(
            f"{run_dir} is a pi0.5 run (preset {config.preset}): --cfg-beta {options.cfg_beta} guides with "
            "the advantage indicator, which this model never saw",
            fix="use --cfg-beta 1.0, or serve a `recap finetune` (pi0.6) run",
        )


def task_factory_for(run_dir: Path, norm_stats: Any) -> Callable[[RunConfig], Any]:
    """The task training built for a config, with the run's stored tokenizer and norm stats."""
    return lambda cfg: task_for_config(cfg, norm_stats=norm_stats, run_dir=run_dir)


def build_pi0_policy(checkpoint: RunCheckpoint, options: ServeOptions) -> ModelPolicy:
    """A servable policy from a `recap sft` (pi0.5) or `recap finetune` (pi0.6) checkpoint."""
    from recap_core.train.sharding import make_mesh

    run_dir = checkpoint.run_dir
    config = load_run_config(run_dir / "config.json")
    if config.stage not in POLICY_STAGES:
        raise CheckpointError(
            f"{run_dir} is a `{config.stage}` run; only policy runs (sft, finetune) can be served",
            fix="serve the run directory of `recap sft` or `recap finetune`",
        )
    if checkpoint.norm_stats_path is None:
        raise CheckpointError(
            f"{run_dir / 'assets' / 'norm_stats.json'} is missing: the policy's state and actions are normalised",
            fix="restore the run's assets/ folder, or write the training dataset's stats there with "
            f"`recap data stats {config.dataset} --output {run_dir / 'assets' / 'norm_stats.json'}`",
        )
    norm_stats = load_norm_stats(checkpoint.norm_stats_path)
    for key in (STATE, ACTIONS):
        if key not in norm_stats:
            raise CheckpointError(
                f"{checkpoint.norm_stats_path} has no norm_stats.{key}",
                fix="restore the norm_stats.json written by training",
            )
    factory = task_factory_for(run_dir, norm_stats)
    task = factory(config)
    model_config = task.model_config
    _check_options(config, model_config.pi06, options, run_dir)
    spec = ObservationSpec(
        state_dim=len(norm_stats[STATE].mean),
        cameras=task.cameras,
        image_size=task.image_size,
        default_prompt=run_default_prompt(config),
        # pi0.5 is not advantage-conditioned: adv_ind is accepted and ignored.
        default_adv_ind=options.default_adv_ind if model_config.pi06 else None,
        require_adv_ind=options.require_adv_ind,
        camera_map=options.camera_map,  # checked here, before the slow load
    )
    parts = load_parts(run_dir, checkpoint.step, make_mesh(1), task_factory=factory, use_ema=True)
    sampler = Pi0Sampler(task, parts, num_steps=options.num_steps, cfg_beta=options.cfg_beta,
                         seed=options.seed)
    return ModelPolicy(
        spec,
        sampler,
        action_horizon=model_config.action_horizon,
        action_dim=len(norm_stats[ACTIONS].mean),  # the robot's dims; the model pads to action_dim
        unnormalize_actions=task.unnormalise_actions,
        metadata={
            "policy": POLICY_KIND,
            "model": "pi0.6" if model_config.pi06 else "pi0.5",
            "preset": config.preset,
            "stage": config.stage,
            "run_dir": str(run_dir),
            "step": checkpoint.step,
            "params": "ema" if config.ema_decay is not None else "trained",
            "num_steps": options.num_steps,
            "cfg_beta": options.cfg_beta,
            "seed": options.seed,
            "delta_actions": task.delta_mask or False,
        },
    )


register_policy_builder(POLICY_KIND, build_pi0_policy)
