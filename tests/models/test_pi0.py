"""pi0.5 / pi0.6 policy at tiny size: flow loss, KV-cached sampling, guidance, input errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from recap_core.models.pi0 import Pi0, Pi0Config, fake_inputs, posemb_sincos
from recap_core.models.siglip import ModelInputError

CONFIG = Pi0Config(
    pi06=True, paligemma_variant="dummy", action_expert_variant="dummy_expert", siglip_variant="tiny",
    image_size=32, image_keys=("base_0_rgb", "left_wrist_0_rgb"), action_dim=6, action_horizon=4,
    max_token_len=12, vocab_size=64, dtype="float32", remat=False,
)


@pytest.fixture(scope="module")
def model() -> Pi0:
    m = Pi0(CONFIG, rngs=nnx.Rngs(0))
    # pi0.5's adaRMS modulation starts at zero (action expert blocks are identity); give it weights
    # so the tests exercise the time conditioning and the joint attention
    for norm in (m.PaliGemma["llm"].layers.pre_attention_norm_1, m.PaliGemma["llm"].layers.pre_ffw_norm_1):
        norm.Dense_0.bias[...] = jnp.ones(norm.Dense_0.bias.shape) * 0.5
    return m


def _inputs(batch: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    inputs = fake_inputs(CONFIG, batch, with_unconditional=True)
    inputs["images"] = {k: jnp.asarray(rng.uniform(-1, 1, v.shape), jnp.float32) for k, v in inputs["images"].items()}
    inputs["image_masks"]["left_wrist_0_rgb"] = jnp.asarray([True, False][:batch] + [True] * (batch - 2))
    tokens = rng.integers(1, CONFIG.vocab_size, size=(batch, CONFIG.max_token_len))
    mask = np.arange(CONFIG.max_token_len)[None, :] < np.asarray([10, 7][:batch] + [9] * (batch - 2))[:, None]
    inputs["tokens"], inputs["token_mask"] = jnp.asarray(tokens * mask, jnp.int32), jnp.asarray(mask)
    uncond = mask & (np.arange(CONFIG.max_token_len)[None, :] < 5)  # the "indicator" is gone
    inputs["uncond_tokens"], inputs["uncond_token_mask"] = jnp.asarray(tokens * uncond, jnp.int32), jnp.asarray(uncond)
    inputs["actions"] = jnp.asarray(rng.normal(size=inputs["actions"].shape), jnp.float32)
    inputs["action_is_pad"] = jnp.asarray([[False] * 4, [False, False, True, True]][:batch] + [[False] * 4] * (batch - 2))
    return inputs


@nnx.jit(static_argnames=("num_steps", "cfg_beta"))
def _sample(model: Pi0, rng, inputs, noise=None, num_steps: int = 3, cfg_beta: float = 1.0):
    return model.sample_actions(rng, inputs, num_steps=num_steps, cfg_beta=cfg_beta, noise=noise)


def test_posemb_matches_openpi_formula() -> None:
    emb = posemb_sincos(jnp.asarray([0.0, 0.5]), 8)
    period = 4e-3 * (4.0 / 4e-3) ** np.linspace(0, 1, 4)
    expected = np.concatenate([np.sin(0.5 * 2 * np.pi / period), np.cos(0.5 * 2 * np.pi / period)])
    np.testing.assert_allclose(np.asarray(emb[1]), expected, atol=1e-4)  # f32 sin of ~800 rad
    np.testing.assert_array_equal(np.asarray(emb[0]), [0, 0, 0, 0, 1, 1, 1, 1])


def test_one_cached_euler_step_equals_the_full_forward(model: Pi0) -> None:
    """Sampling runs the prefix once into a KV cache; one step must equal the training forward."""
    inputs = _inputs()
    noise = jax.random.normal(jax.random.key(1), inputs["actions"].shape)
    x0 = _sample(model, jax.random.key(0), inputs, noise, num_steps=1)
    v_full = nnx.jit(lambda m, i, x: m.velocity_full(i, x, jnp.ones(2)))(model, inputs, noise)
    np.testing.assert_allclose(np.asarray(x0), np.asarray(noise - v_full), atol=1e-5)


def test_sampling_is_deterministic_for_a_key(model: Pi0) -> None:
    inputs = _inputs()
    a = _sample(model, jax.random.key(3), inputs)
    b = _sample(model, jax.random.key(3), inputs)
    c = _sample(model, jax.random.key(4), inputs)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.abs(a - c).max()) > 1e-3
    assert a.shape == (2, CONFIG.action_horizon, CONFIG.action_dim)


def test_cfg_beta_one_is_plain_conditioning_and_other_betas_guide(model: Pi0) -> None:
    inputs = _inputs()
    plain = {k: v for k, v in inputs.items() if not k.startswith("uncond")}
    conditional = _sample(model, jax.random.key(5), plain)
    np.testing.assert_array_equal(np.asarray(_sample(model, jax.random.key(5), inputs, cfg_beta=1.0)),
                                  np.asarray(conditional))
    # beta = 0 is the unconditional policy: the same as sampling from the prompt without indicator
    unconditional = _sample(model, jax.random.key(5), {**plain, "tokens": inputs["uncond_tokens"],
                                                       "token_mask": inputs["uncond_token_mask"]})
    np.testing.assert_allclose(np.asarray(_sample(model, jax.random.key(5), inputs, cfg_beta=0.0)),
                               np.asarray(unconditional), atol=1e-5)
    guided = _sample(model, jax.random.key(5), inputs, cfg_beta=2.0)
    assert float(jnp.abs(guided - conditional).max()) > 1e-4
    with pytest.raises(ModelInputError, match="uncond_tokens"):
        model.sample_actions(jax.random.key(5), plain, num_steps=1, cfg_beta=2.0)


def test_loss_is_openpi_flow_matching_averaged_over_unpadded_steps(model: Pi0) -> None:
    inputs = _inputs()
    key = jax.random.key(7)
    loss, metrics = nnx.jit(lambda m, i: m.loss(i, key))(model, inputs)
    # openpi: noise ~ N(0, 1), t ~ Beta(1.5, 1) * 0.999 + 0.001, x_t = t noise + (1 - t) a, u = noise - a
    noise_key, time_key = jax.random.split(key)
    actions = inputs["actions"]
    noise = jax.random.normal(noise_key, actions.shape)
    t = jax.random.beta(time_key, 1.5, 1.0, (2,)) * 0.999 + 0.001
    x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
    v = nnx.jit(lambda m, i, x, t: m.velocity_full(i, x, t))(model, inputs, x_t, t)
    per_step = np.mean((np.asarray(v) - np.asarray(noise - actions)) ** 2, axis=-1)
    valid = ~np.asarray(inputs["action_is_pad"])
    np.testing.assert_allclose(float(loss), per_step[valid].mean(), rtol=1e-5)
    assert abs(per_step[valid].mean() - per_step.mean()) > 1e-4  # the padding mask matters here
    assert float(metrics["flow_loss"]) == float(loss)


def test_overfitting_a_tiny_batch_drives_the_flow_loss_down(model: Pi0) -> None:
    model = nnx.clone(model)  # train a copy; the fixture stays as it was for the other tests
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    inputs = _inputs()

    @nnx.jit
    def step(model: Pi0, optimizer: nnx.Optimizer, inputs: dict) -> jax.Array:
        # a fixed key: the same noise and time every step, so the batch can be memorised
        (loss, _), grads = nnx.value_and_grad(lambda m: m.loss(inputs, jax.random.key(0)), has_aux=True)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, inputs)) for _ in range(80)]
    assert losses[-1] < losses[0] / 20, (losses[0], losses[-1])


def test_input_errors_name_the_key(model: Pi0) -> None:
    inputs = _inputs()
    no_wrist = dict(inputs, images={"base_0_rgb": inputs["images"]["base_0_rgb"]})
    with pytest.raises(ModelInputError, match="left_wrist_0_rgb"):
        model.loss(no_wrist, jax.random.key(0))
    with pytest.raises(ModelInputError, match="action_dim"):
        model.loss(dict(inputs, actions=inputs["actions"][..., :3]), jax.random.key(0))


def test_config_defaults_follow_openpi_and_pistar() -> None:
    assert Pi0Config().max_token_len == 200
    assert Pi0Config(pi06=True).max_token_len == 203
    assert Pi0Config().action_dim == 32 and Pi0Config().action_horizon == 50
    assert Pi0Config.from_dict(Pi0Config(pi06=True).to_dict()) == Pi0Config(pi06=True)
    from recap_core.errors import ConfigError

    with pytest.raises(ConfigError, match="bogus"):
        Pi0Config.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="gemma_2b_lora"):
        Pi0Config(paligemma_variant="gemma_2b_lorra")
    with pytest.raises(ConfigError, match="action_horizon"):
        Pi0Config(action_horizon=0)


def test_real_size_policy_traces_loss_and_guided_sampling_abstractly() -> None:
    """The full-size pi0.6-LoRA graph (3 cameras x 256 tokens + 203 prompt tokens, 50x32 actions)
    type-checks end to end without allocating: jax.eval_shape over abstract params."""
    config = Pi0Config(pi06=True, paligemma_variant="gemma_2b_lora", action_expert_variant="gemma_300m_lora")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: config.create(nnx.Rngs(0))))
    spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fake_inputs(config, 2, with_unconditional=True))
    loss = jax.eval_shape(lambda s, i: nnx.merge(graphdef, s).loss(i, jax.random.key(0))[0], state, spec)
    assert loss.shape == () and loss.dtype == jnp.float32
    actions = jax.eval_shape(
        lambda s, i: nnx.merge(graphdef, s).sample_actions(jax.random.key(0), i, cfg_beta=1.5), state, spec)
    assert actions.shape == (2, 50, 32)
