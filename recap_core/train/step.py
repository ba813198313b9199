"""One optimiser step, jitted: gradient accumulation, clipping + AdamW, EMA, metrics.

The train state is a plain dict pytree so that it checkpoints as-is:
`{"step", "params" (trainable only), "opt_state", "ema" (when EMA is on), "rng"}`.
The frozen params are an argument, never an output, so they cannot change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from recap_core.config import RunConfig
from recap_core.runtime import compiler_options
from recap_core.train.checkpoint import abstract_like
from recap_core.train.optim import make_optimizer, make_schedule
from recap_core.train.state import ModelParts
from recap_core.train.task import Task

TrainState = dict[str, Any]


def _state_builder(config: RunConfig) -> Callable[[nnx.State], TrainState]:
    tx = make_optimizer(config)

    def create(params: nnx.State) -> TrainState:
        state: TrainState = {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": tx.init(params),
            "rng": jax.random.key_data(jax.random.key(config.seed)),
        }
        if config.ema_decay is not None:
            state["ema"] = jax.tree.map(jnp.copy, params)
        return state

    return create


def _state_shardings(create: Callable[[nnx.State], TrainState], abstract_params: Any) -> Any:
    """Every leaf of the train state sharded by the params' rule (`sharding.param_shardings`): the Adam
    moments and the EMA split over fsdp exactly like the params they follow. (Left to XLA, state
    created from zeros came out replicated: each device held the whole optimiser state.)"""
    from recap_core.train.sharding import param_shardings

    meshes = [leaf.sharding.mesh for leaf in jax.tree.leaves(abstract_params) if hasattr(leaf.sharding, "mesh")]
    if not meshes:
        return None
    return param_shardings(jax.eval_shape(create, abstract_params), meshes[0])


def init_train_state(parts: ModelParts, config: RunConfig) -> TrainState:
    """Optimiser state and EMA for the trainable params, sharded like the params they follow."""
    create = _state_builder(config)
    shardings = _state_shardings(create, abstract_like(parts.trainable))
    return jax.jit(create, out_shardings=shardings)(parts.trainable)


def _split_micro(inputs: dict[str, Any], n: int) -> dict[str, Any]:
    """[B, ...] -> [n, B/n, ...] with micro-batch i = rows i, i+n, ...: every device keeps its rows."""
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1), inputs)


def make_train_step(task: Task, parts: ModelParts, config: RunConfig) -> Callable[..., Any]:
    tx = make_optimizer(config)
    schedule = make_schedule(config)
    graphdef = parts.graphdef
    n_micro = config.grad_accum
    ema_decay = config.ema_decay

    def loss_fn(params: nnx.State, frozen: nnx.State, inputs: dict[str, Any], rng: jax.Array) -> Any:
        model = nnx.merge(graphdef, params, frozen)
        loss, metrics = task.loss(model, inputs, rng)
        return loss, metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, frozen: nnx.State, inputs: dict[str, Any]) -> tuple[TrainState, dict[str, Any]]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        params = state["params"]
        if n_micro == 1:
            (loss, metrics), grads = grad_fn(params, frozen, inputs, rng)
        else:
            micro = _split_micro(inputs, n_micro)

            def body(carry: Any, xs: Any) -> Any:
                i, mb = xs
                (l_i, m_i), g_i = grad_fn(params, frozen, mb, jax.random.fold_in(rng, i))
                acc_g, acc_l, acc_m = carry
                return (
                    jax.tree.map(jnp.add, acc_g, g_i),
                    acc_l + l_i,
                    jax.tree.map(jnp.add, acc_m, m_i),
                ), None

            zeros_m = jax.eval_shape(lambda: grad_fn(params, frozen, jax.tree.map(lambda x: x[0], micro), rng)[0][1])
            init = (
                jax.tree.map(jnp.zeros_like, params),
                jnp.zeros((), jnp.float32),
                jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros_m),
            )
            (grads, loss, metrics), _ = jax.lax.scan(body, init, (jnp.arange(n_micro), micro))
            grads = jax.tree.map(lambda g: g / n_micro, grads)
            loss = loss / n_micro
            metrics = jax.tree.map(lambda m: m / n_micro, metrics)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_state = dict(state, step=state["step"] + 1, params=new_params, opt_state=opt_state)
        if ema_decay is not None:
            new_state["ema"] = jax.tree.map(
                lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state["ema"], new_params
            )
        out = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(new_params),
            "lr": schedule(state["step"]),
        }
        return new_state, out

    # The new state keeps the shardings the state was created with (params, Adam moments and EMA split
    # over fsdp alike), so the step compiled ahead of time takes its own output as its next input.
    shardings = _state_shardings(_state_builder(config), abstract_like(parts.trainable))
    if shardings is None:
        return jax.jit(step, donate_argnums=(0,), compiler_options=compiler_options(parts.frozen))
    return jax.jit(step, donate_argnums=(0,), out_shardings=(shardings, None),
                   compiler_options=compiler_options(parts.frozen))


def make_eval_loss(task: Task, parts: ModelParts) -> Callable[..., Any]:
    graphdef = parts.graphdef

    def eval_loss(params: nnx.State, frozen: nnx.State, inputs: dict[str, Any], rng: jax.Array) -> Any:
        loss, metrics = task.loss(nnx.merge(graphdef, params, frozen), inputs, rng)
        return {**metrics, "loss": loss}

    return jax.jit(eval_loss, compiler_options=compiler_options(parts.frozen))


def abstract_train_state(parts: ModelParts, config: RunConfig) -> Any:
    """The train state's shapes, dtypes and shardings, without allocating it (restore target)."""
    create = _state_builder(config)
    abstract_params = abstract_like(parts.trainable)
    shapes = jax.eval_shape(create, abstract_params)
    shardings = _state_shardings(create, abstract_params)
    if shardings is None:
        shardings = jax.jit(create).lower(abstract_params).compile().output_shardings
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
