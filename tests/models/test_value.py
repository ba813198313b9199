"""Value model: two-hot C51 targets, overfitting, freeze modes, masking, real-size shapes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from recap_core.errors import ConfigError
from recap_core.models.siglip import ModelInputError, MultiHeadAttention
from recap_core.models.value import (
    FREEZE_MODES,
    ValueModel,
    expected_value,
    frozen_filter,
    hl_gauss,
    target_distribution,
    trainable_filter,
    two_hot,
    value_config,
)
from tests.models._parity import count_params

TINY = value_config("value-tiny")
_predict = nnx.jit(lambda model, batch: model.predict(batch))


def _batch(batch_size: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    size = TINY.image_size
    return {
        "images": {
            cam: rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32)
            for cam in ("base", "wrist")
        },
        "image_masks": {"base": np.ones(batch_size, bool), "wrist": np.array([True, False, True, True])},
        "tokens": rng.integers(1, 262_144, (batch_size, 10)).astype(np.int32),
        "token_mask": np.arange(10)[None, :] < np.array([[10], [7], [4], [9]]),
        # Two labels between atoms, so the target really is two-hot.
        "value_label": np.array([-0.9, -0.5025, -0.1, -0.33333], np.float32),
    }


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, (16,), elements=st.floats(-1.0, 0.0, width=32)))
def test_two_hot_expectation_equals_the_value(values: np.ndarray) -> None:
    target = np.asarray(two_hot(jnp.asarray(values), TINY), np.float64)
    atoms = np.linspace(TINY.v_min, TINY.v_max, TINY.num_bins)
    np.testing.assert_allclose(target.sum(-1), 1.0, atol=1e-6)
    assert (target >= 0).all()
    np.testing.assert_allclose(target @ atoms, values, atol=1e-6, rtol=0)
    nonzero = [np.flatnonzero(row > 1e-7) for row in target]
    assert all(len(idx) <= 2 and (len(idx) < 2 or idx[1] == idx[0] + 1) for idx in nonzero)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, (16,), elements=st.floats(-1.0, 0.0, width=32)),
       st.sampled_from([0.25, 0.75, 2.0]))
def test_hl_gauss_is_a_distribution_centred_on_the_value(values: np.ndarray, sigma: float) -> None:
    config = dataclasses.replace(TINY, target="hl_gauss", hl_gauss_sigma=sigma)
    target = np.asarray(hl_gauss(jnp.asarray(values), config), np.float64)
    atoms = np.linspace(config.v_min, config.v_max, config.num_bins)
    np.testing.assert_allclose(target.sum(-1), 1.0, atol=1e-5)
    assert (target >= 0).all()
    error = np.abs(target @ atoms - values)
    # Within half a bin; at the support's edges the truncated Gaussian's mean moves inward, by up to
    # 0.37 bins at the default sigma 0.75, so wider targets are checked away from the edges.
    away = np.minimum(values - config.v_min, config.v_max - values) >= 3 * sigma * config.bin_width
    assert error[away if sigma > 0.75 else slice(None)].max(initial=0.0) <= config.bin_width / 2
    # Spread: more than two bins carry mass (unlike two-hot), about sigma bin widths either side.
    inner = (values > -0.9) & (values < -0.1)
    if inner.any():
        spread = np.sqrt(target[inner] @ atoms**2 - (target[inner] @ atoms) ** 2) / config.bin_width
        np.testing.assert_allclose(spread, sigma, rtol=0.2, atol=0.3)
    assert target_distribution(jnp.asarray(values), config).shape == target.shape


def test_value_targets_are_chosen_and_checked() -> None:
    with pytest.raises(ConfigError, match="unknown value target"):
        value_config("value-tiny", target="one_hot")
    with pytest.raises(ConfigError, match="hl_gauss_sigma"):
        value_config("value-tiny", target="hl_gauss", hl_gauss_sigma=0.0)
    label = jnp.asarray([-0.5025])
    np.testing.assert_array_equal(target_distribution(label, TINY), two_hot(label, TINY))


def test_value_train_target_flag_reaches_the_model(tmp_path) -> None:
    from recap_core.config import resolve_run_config
    from recap_core.train.value_task import value_task

    config = resolve_run_config("value", "value-tiny", "d", sets=["model.target=hl_gauss"], environ={},
                                model={"kind": "value", "name": "value-tiny"})
    assert value_task(config, ("cam_high",), run_dir=tmp_path).model_config.target == "hl_gauss"


def test_two_hot_edges_and_clipping() -> None:
    target = np.asarray(two_hot(jnp.asarray([-1.0, 0.0, -1.7, 0.4, -0.0025]), TINY))
    assert target[0, 0] == 1.0 and target[1, -1] == 1.0  # exact ends
    np.testing.assert_array_equal(target[2], target[0])  # clipped to -1
    np.testing.assert_array_equal(target[3], target[1])  # clipped to 0
    np.testing.assert_allclose(target[4, 199:], [0.5, 0.5], atol=1e-4)  # midway between the last atoms
    # expected_value of a near one-hot logit reads the atom back
    logits = jnp.full((1, TINY.num_bins), -1e4).at[0, 40].set(0.0)
    np.testing.assert_allclose(np.asarray(expected_value(logits, TINY)), [-0.8], atol=1e-6)


@pytest.fixture(scope="module")
def trained() -> dict:
    """One short training run on a tiny batch (shared: compiling the step dominates the cost)."""
    config = value_config("value-tiny", freeze="siglip_only")
    model = ValueModel(config, rngs=nnx.Rngs(0))
    batch = _batch()
    trainable = trainable_filter(config.freeze)
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=trainable)
    before = jax.tree.map(np.array, nnx.state(model, nnx.Param).to_pure_dict())

    @nnx.jit
    def step(model: ValueModel, optimizer: nnx.Optimizer) -> dict:
        grad_fn = nnx.value_and_grad(
            lambda m: m.loss(batch), has_aux=True, argnums=nnx.DiffState(0, trainable)
        )
        (_, metrics), grads = grad_fn(model)
        optimizer.update(model, grads)
        return metrics

    first = step(model, optimizer)
    for _ in range(100):
        last = step(model, optimizer)
    return {"config": config, "model": model, "batch": batch, "before": before, "first": first, "last": last}


def test_overfits_a_tiny_batch_and_respects_the_freeze_mode(trained: dict) -> None:
    config, model, batch, before = trained["config"], trained["model"], trained["batch"], trained["before"]
    first, last = trained["first"], trained["last"]
    assert float(last["loss"]) < float(first["loss"]) / 4
    # The floor of the loss is the entropy of the two-hot targets: compare the excess above it.
    target = np.asarray(two_hot(jnp.asarray(batch["value_label"]), config), np.float64)
    floor = float(np.mean(-np.sum(target * np.log(np.where(target > 0, target, 1.0)), axis=-1)))
    assert float(last["loss"]) - floor < (float(first["loss"]) - floor) / 10
    assert float(last["value_mae"]) < 0.03
    np.testing.assert_allclose(np.asarray(_predict(model, batch)), batch["value_label"], atol=0.05)

    after = nnx.state(model, nnx.Param).to_pure_dict()
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, np.asarray(b))), before, after)
    assert all(jax.tree.leaves(same["img"]))  # SigLIP frozen
    assert all(jax.tree.leaves(same["llm"]["embedder"]))  # token table frozen in every mode
    assert not any(jax.tree.leaves(same["llm"]["layers"]))  # Gemma3 trains
    assert not any(jax.tree.leaves(same["value_head"]))


def test_masked_cameras_and_padding_tokens_do_not_change_the_value(trained: dict) -> None:
    model, batch = trained["model"], trained["batch"]
    base = np.asarray(_predict(model, batch))
    assert ((base >= -1.0) & (base <= 0.0)).all()
    changed = dict(batch, images=dict(batch["images"]), tokens=batch["tokens"].copy())
    changed["images"]["wrist"] = batch["images"]["wrist"].copy()
    changed["images"]["wrist"][1] = 0.7  # sample 1's wrist camera is masked out
    changed["tokens"][2, 4:] = 5  # sample 2's tokens past 4 are padding
    np.testing.assert_allclose(np.asarray(_predict(model, changed)), base, atol=1e-5)
    changed["tokens"][0, 0] = 6  # a real token: the value must move
    assert abs(float(_predict(model, changed)[0]) - float(base[0])) > 1e-6


def test_bf16_compute_tracks_f32(trained: dict) -> None:
    """Same weights, bf16 vs f32 compute (the real `value` preset computes in bf16): the values
    differ only by rounding."""
    model, batch, config = trained["model"], trained["batch"], trained["config"]

    def with_dtype(dtype: str) -> ValueModel:
        other = dataclasses.replace(
            config,
            siglip=dataclasses.replace(config.siglip, dtype=dtype),
            gemma3=dataclasses.replace(config.gemma3, dtype=dtype),
        )
        copy = ValueModel(other, rngs=nnx.Rngs(0))
        nnx.update(copy, nnx.state(model, nnx.Param))
        return copy

    got, want = np.asarray(_predict(with_dtype("bfloat16"), batch)), np.asarray(_predict(with_dtype("float32"), batch))
    np.testing.assert_allclose(got, want, atol=0.02)
    assert np.abs(got - want).max() > 0  # the bf16 model really computes in bf16


def test_cross_attention_matches_nnx_multihead_attention() -> None:
    """pistar's cross-attention is nnx.MultiHeadAttention: same param tree, same outputs."""
    reference = nnx.MultiHeadAttention(
        num_heads=4, in_features=32, qkv_features=32, out_features=32, decode=False, rngs=nnx.Rngs(3)
    )
    ours = MultiHeadAttention(32, 4, jnp.float32, nnx.Rngs(0))
    ref_params = nnx.state(reference, nnx.Param).to_pure_dict()
    assert jax.tree.map(jnp.shape, ref_params) == jax.tree.map(
        jnp.shape, nnx.state(ours, nnx.Param).to_pure_dict()
    )
    nnx.update(ours, nnx.state(reference, nnx.Param))
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.normal(size=(2, 5, 32)), jnp.float32)
    image = jnp.asarray(rng.normal(size=(2, 7, 32)), jnp.float32)
    mask = jnp.asarray(np.arange(7)[None, :] < np.array([[7], [3]]))
    want = reference(text, image, image, mask=mask[:, None, None, :])
    np.testing.assert_allclose(np.asarray(ours(text, image, mask)), np.asarray(want), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", FREEZE_MODES)
def test_freeze_modes_select_the_right_params(mode: str) -> None:
    abstract = nnx.eval_shape(lambda: ValueModel(value_config("value"), rngs=nnx.Rngs(0)))
    paths = [path for path, _ in nnx.state(abstract, trainable_filter(mode)).flat_state()]
    tops = {path[0] for path in paths}
    llm_parts = {path[1] for path in paths if path[0] == "llm"}
    heads = {"img_projection", "cross_attention", "cross_attn_norm", "value_head"}
    if mode == "all_backbones":
        assert tops == heads
    elif mode == "siglip_only":
        assert tops == heads | {"llm"} and llm_parts == {"layers", "final_norm"}
    else:
        assert tops == heads | {"llm", "img"} and llm_parts == {"layers", "final_norm"}
    frozen = {path[0] for path, _ in nnx.state(abstract, frozen_filter(mode)).flat_state()}
    assert frozen.isdisjoint(tops - {"llm"})


def test_real_preset_sizes() -> None:
    config = value_config("value")
    abstract = nnx.eval_shape(lambda: ValueModel(config, rngs=nnx.Rngs(0)))
    siglip, gemma3 = 412_442_352, 268_098_176  # each checked against transformers in its own test
    width = 640
    heads = (
        (1152 * width + width)  # img_projection
        + 2 * width  # cross_attn_norm
        + 4 * (width * width + width)  # cross-attention q, k, v, out
        + 2 * width
        + (width * 320 + 320)
        + (320 * 201 + 201)  # value head
    )
    assert count_params(abstract) == siglip + gemma3 + heads
    assert config.image_size == 224 and config.max_token_len == 48 and config.bin_width == 0.005

    graphdef, state = nnx.split(abstract)
    images = {cam: jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32) for cam in ("a", "b", "c")}
    inputs = {
        "images": images,
        "image_masks": {cam: jax.ShapeDtypeStruct((2,), jnp.bool_) for cam in images},
        "tokens": jax.ShapeDtypeStruct((2, 48), jnp.int32),
        "token_mask": jax.ShapeDtypeStruct((2, 48), jnp.bool_),
    }
    out = jax.eval_shape(lambda st, x: nnx.merge(graphdef, st).logits(x), state, inputs)
    assert out.shape == (2, 201) and out.dtype == jnp.float32


def test_bad_inputs_and_configs_are_clear_errors() -> None:
    model = nnx.eval_shape(lambda: ValueModel(TINY, rngs=nnx.Rngs(0)))
    batch = _batch()
    with pytest.raises(ModelInputError, match="no 'token_mask'"):
        model.logits({k: v for k, v in batch.items() if k != "token_mask"})
    with pytest.raises(ModelInputError, match="1 to 3 cameras, got 4"):
        model.logits(dict(batch, images={str(i): batch["images"]["base"] for i in range(4)}))
    with pytest.raises(ModelInputError, match=r"image_masks lacks cameras \['wrist'\]"):
        model.logits(dict(batch, image_masks={"base": batch["image_masks"]["base"]}))
    with pytest.raises(ModelInputError, match="no 'value_label'"):
        model.loss({k: v for k, v in batch.items() if k != "value_label"})
    with pytest.raises(ConfigError, match="freeze mode 'heads'") as err:
        value_config("value-tiny", freeze="heads")
    assert "all_backbones" in (err.value.fix or "")
    with pytest.raises(ConfigError, match="unknown value-model preset"):
        value_config("value-huge")
    with pytest.raises(ConfigError, match="freeze mode"):
        frozen_filter("everything")
