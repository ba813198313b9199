"""Copy `transformers` reference weights into our NNX params, for numerical parity tests.

The reference models are built with tiny random configs in the test; these helpers only move
arrays (transposing PyTorch's [out, in] Linear layout into ours) and report the ones we used, so
a test can check that no reference weight was left behind.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import torch
from flax import nnx


def torch_params(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: p.detach().to(torch.float32).numpy() for name, p in module.named_parameters()}


def load_pure_dict(model: nnx.Module, params: dict[str, Any]) -> None:
    """Replace every nnx.Param of `model` by the arrays in the nested dict `params` (same shapes)."""
    state = nnx.state(model, nnx.Param)
    expected = jax.tree.map(lambda a: a.shape, state.to_pure_dict())
    got = jax.tree.map(lambda a: a.shape, params)
    assert expected == got, f"param tree mismatch:\nours {expected}\nref  {got}"
    state.replace_by_pure_dict(jax.tree.map(np.asarray, params))
    nnx.update(model, state)


def count_params(model: nnx.Module) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def siglip_from_hf(
    ref: dict[str, np.ndarray], depth: int, num_heads: int, prefix: str = "vision_model."
) -> dict:
    """HF SiglipVisionModel state -> our Siglip pure dict (big_vision names, layers stacked)."""
    t = {k.removeprefix(prefix): v for k, v in ref.items()}
    width = t["post_layernorm.weight"].shape[0]
    hd = width // num_heads

    def stack(fmt: str, fn: Any = lambda a: a) -> np.ndarray:
        return np.stack([fn(t[fmt.format(i)]) for i in range(depth)])

    def qkv(name: str) -> dict:
        return {
            "kernel": stack(
                f"encoder.layers.{{}}.self_attn.{name}.weight", lambda w: w.T.reshape(width, num_heads, hd)
            ),
            "bias": stack(f"encoder.layers.{{}}.self_attn.{name}.bias", lambda b: b.reshape(num_heads, hd)),
        }

    def ln(name: str) -> dict:
        return {
            "scale": stack(f"encoder.layers.{{}}.{name}.weight"),
            "bias": stack(f"encoder.layers.{{}}.{name}.bias"),
        }

    def dense(name: str) -> dict:
        return {
            "kernel": stack(f"encoder.layers.{{}}.mlp.{name}.weight", lambda w: w.T),
            "bias": stack(f"encoder.layers.{{}}.mlp.{name}.bias"),
        }

    block = {
        "LayerNorm_0": ln("layer_norm1"),
        "LayerNorm_1": ln("layer_norm2"),
        "MlpBlock_0": {"Dense_0": dense("fc1"), "Dense_1": dense("fc2")},
        "MultiHeadDotProductAttention_0": {
            "query": qkv("q_proj"),
            "key": qkv("k_proj"),
            "value": qkv("v_proj"),
            "out": {
                "kernel": stack(
                    "encoder.layers.{}.self_attn.out_proj.weight", lambda w: w.T.reshape(num_heads, hd, width)
                ),
                "bias": stack("encoder.layers.{}.self_attn.out_proj.bias"),
            },
        },
    }
    return {
        "embedding": {
            "kernel": t["embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
            "bias": t["embeddings.patch_embedding.bias"],
        },
        "pos_embedding": t["embeddings.position_embedding.weight"][None],
        "Transformer": {
            "encoderblock": block,
            "encoder_norm": {"scale": t["post_layernorm.weight"], "bias": t["post_layernorm.bias"]},
        },
    }


def gemma3_from_hf(ref: dict[str, np.ndarray], depth: int, num_heads: int, num_kv_heads: int) -> dict:
    """HF Gemma3 (text) state -> our Gemma3 pure dict (gemma-library names, layers stacked)."""
    t = {k.removeprefix("model."): v for k, v in ref.items()}
    width = t["norm.weight"].shape[0]
    head_dim = t["layers.0.self_attn.q_norm.weight"].shape[0]

    def heads(w: np.ndarray, n: int) -> np.ndarray:  # [n*H, D] -> [n, D, H]
        return w.reshape(n, head_dim, width).transpose(0, 2, 1)

    def layer(i: int) -> dict:
        p = f"layers.{i}."
        q = heads(t[p + "self_attn.q_proj.weight"], num_heads)
        k = heads(t[p + "self_attn.k_proj.weight"], num_kv_heads)
        v = heads(t[p + "self_attn.v_proj.weight"], num_kv_heads)
        attn = {
            "attn_vec_einsum": {"w": t[p + "self_attn.o_proj.weight"].T.reshape(num_heads, head_dim, width)},
            "_query_norm": {"scale": t[p + "self_attn.q_norm.weight"]},
            "_key_norm": {"scale": t[p + "self_attn.k_norm.weight"]},
        }
        if num_heads == num_kv_heads:
            attn["qkv_einsum"] = {"w": np.stack([q, k, v])}
        else:
            attn["q_einsum"] = {"w": q}
            attn["kv_einsum"] = {"w": np.stack([k, v])}
        return {
            "attn": attn,
            "pre_attention_norm": {"scale": t[p + "input_layernorm.weight"]},
            "post_attention_norm": {"scale": t[p + "post_attention_layernorm.weight"]},
            "pre_ffw_norm": {"scale": t[p + "pre_feedforward_layernorm.weight"]},
            "post_ffw_norm": {"scale": t[p + "post_feedforward_layernorm.weight"]},
            "mlp": {
                "gating_einsum": np.stack([t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"]]),
                "linear": t[p + "mlp.down_proj.weight"].T,
            },
        }

    layers = [layer(i) for i in range(depth)]
    return {
        "embedder": {"input_embedding": t["embed_tokens.weight"]},
        "layers": jax.tree.map(lambda *xs: np.stack(xs), *layers),
        "final_norm": {"scale": t["norm.weight"]},
    }
