"""SigLIP: numerical parity with transformers' SiglipVisionModel, real sizes by eval_shape."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import SiglipVisionConfig, SiglipVisionModel

from recap_core.errors import ConfigError
from recap_core.models.siglip import ModelInputError, Siglip, siglip_config
from tests.models._parity import count_params, load_pure_dict, siglip_from_hf, torch_params


def _tiny_pair(seed: int = 0) -> tuple[SiglipVisionModel, Siglip]:
    cfg = siglip_config("tiny", dtype="float32", depth=3)
    torch.manual_seed(seed)
    hf_cfg = SiglipVisionConfig(
        hidden_size=cfg.width,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    )
    ref = SiglipVisionModel(hf_cfg).eval()
    # HF initialises biases/norms to 0/1; randomise every weight so a swapped one shows up.
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] == cfg.width else 0.0))
    ours = Siglip(cfg, rngs=nnx.Rngs(0))
    load_pure_dict(ours, siglip_from_hf(torch_params(ref), cfg.depth, cfg.num_heads))
    return ref, ours


def test_matches_transformers_hidden_states() -> None:
    ref, ours = _tiny_pair()
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2)).last_hidden_state.numpy()
    got = np.asarray(ours(jnp.asarray(images)))
    assert got.shape == (2, 16, 32)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(want).max() > 0.1  # the comparison is not between two near-zero tensors


def test_head_and_bf16_remat_run() -> None:
    cfg = siglip_config("tiny", out_dim=24, remat=True)
    model = Siglip(cfg, rngs=nnx.Rngs(1))
    images = jnp.zeros((1, 32, 32, 3))

    def loss(m: Siglip) -> tuple[jax.Array, jax.Array]:
        out = m(images)
        return jnp.mean(out.astype(jnp.float32) ** 2), out

    (_, out), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    assert out.shape == (1, 16, 24) and out.dtype == jnp.bfloat16
    assert grads["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].shape == (2, 32, 64)


@pytest.mark.parametrize("name", ["So400m/14", "siglip2-so400m-patch14-224"])
def test_real_size_param_count_matches_transformers(name: str) -> None:
    cfg = siglip_config(name)
    abstract = nnx.eval_shape(lambda: Siglip(cfg, rngs=nnx.Rngs(0)))
    hf_cfg = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
    )
    with torch.device("meta"):
        ref = SiglipVisionModel(hf_cfg)
    ref_total = sum(p.numel() for p in ref.parameters())
    # HF adds the MAP pooling head (openpi/pool "none" has none): probe, attention, LN, MLP.
    map_head = sum(p.numel() for n, p in ref.named_parameters() if ".head." in n)
    assert count_params(abstract) == ref_total - map_head == 412_442_352
    assert cfg.num_tokens == 256
    graphdef, state = nnx.split(abstract)
    tokens = jax.eval_shape(
        lambda st, x: nnx.merge(graphdef, st)(x), state, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    )
    assert tokens.shape == (2, 256, 1152)


def test_openpi_head_adds_exactly_one_dense() -> None:
    base = count_params(nnx.eval_shape(lambda: Siglip(siglip_config("So400m/14"), rngs=nnx.Rngs(0))))
    headed = count_params(
        nnx.eval_shape(lambda: Siglip(siglip_config("So400m/14", out_dim=2048), rngs=nnx.Rngs(0)))
    )
    assert headed - base == 1152 * 2048 + 2048


def test_wrong_image_size_is_a_clear_error() -> None:
    model = Siglip(siglip_config("tiny", dtype="float32"), rngs=nnx.Rngs(0))
    with pytest.raises(ModelInputError, match=r"\[B, 32, 32, 3\].*\(1, 64, 64, 3\)") as err:
        model(jnp.zeros((1, 64, 64, 3)))
    assert "resize" in (err.value.fix or "")
    with pytest.raises(ModelInputError, match="float images in \\[-1, 1\\], got dtype uint8"):
        model(jnp.zeros((1, 32, 32, 3), jnp.uint8))


def test_bad_config_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown SigLIP variant"):
        siglip_config("So999m")
    with pytest.raises(ConfigError, match="not divisible"):
        Siglip(siglip_config("tiny", num_heads=5), rngs=nnx.Rngs(0))
