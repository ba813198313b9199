"""The policy task (`recap sft`, `recap finetune`): loader batch -> pi0.5/pi0.6 inputs -> flow loss.

Host side, per batch: state and actions are normalised with the run's norm stats (quantiles, as
openpi does for pi0.5), the state is written into the prompt as 256-bin text (the unpadded,
normalised state), pi0.6 adds the advantage indicator with training dropout drawn from the
step's seeded generator, actions are padded to the model's action_dim, and uint8 images become
float32 in [-1, 1] under the model's camera names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recap_core.data.actions import to_absolute, to_delta
from recap_core.data.stats import ACTIONS, STATE, NormStats, normalize, unnormalize
from recap_core.errors import DatasetError
from recap_core.models.pi0 import Pi0Config
from recap_core.models.tokenizer import PolicyTokenizer


def assign_cameras(dataset_cameras: Sequence[str], model_keys: Sequence[str]) -> dict[str, str]:
    """Model image slot -> dataset camera: base <- the first non-wrist camera, left/right wrist
    slots <- cameras named left/right + wrist, then the rest in order. Unfilled slots are masked."""
    remaining = list(dataset_cameras)
    mapping: dict[str, str] = {}

    def take(slot: str, pred: Any) -> None:
        for cam in remaining:
            if pred(cam.lower()):
                mapping[slot] = cam
                remaining.remove(cam)
                return

    for slot in model_keys:
        s = slot.lower()
        if s.startswith("base"):
            take(slot, lambda c: "wrist" not in c)
        elif "left" in s:
            take(slot, lambda c: "wrist" in c and "left" in c)
        elif "right" in s:
            take(slot, lambda c: "wrist" in c and "right" in c)
    for slot in model_keys:
        if slot not in mapping and remaining:
            mapping[slot] = remaining.pop(0)
    if remaining:
        raise DatasetError(
            f"the dataset has {len(dataset_cameras)} cameras ({', '.join(dataset_cameras)}) but the model "
            f"has only {len(model_keys)} image slots ({', '.join(model_keys)}); unused: {', '.join(remaining)}",
            fix="choose the cameras to train on with --cameras",
        )
    return mapping


def images_to_model(
    batch: Mapping[str, Any], mapping: Mapping[str, str], model_keys: Sequence[str], size: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """uint8 [B,H,W,3] -> float32 in [-1, 1]; slots without a camera are zeros and masked out."""
    images, masks = batch["images"], batch.get("image_masks", {})
    b = len(batch["state"])
    out, out_masks = {}, {}
    for slot in model_keys:
        cam = mapping.get(slot)
        if cam is None:
            out[slot] = np.zeros((b, size, size, 3), np.float32)
            out_masks[slot] = np.zeros((b,), bool)
            continue
        img = np.asarray(images[cam])
        if img.shape[1:3] != (size, size):
            raise DatasetError(
                f"camera {cam!r} images are {img.shape[1]}x{img.shape[2]}, the model expects {size}x{size}",
                fix="load the dataset with the model's image size (the loader resizes with padding)",
            )
        out[slot] = img.astype(np.float32) / 127.5 - 1.0
        out_masks[slot] = np.asarray(masks.get(cam, np.ones((b,), bool)), bool)
    return out, out_masks


class PolicyTask:
    """pi0.5 (sft) or pi0.6 (finetune: `model_config.pi06`) training on loader batches."""

    name = "policy"

    def __init__(
        self,
        model_config: Pi0Config,
        tokenizer: PolicyTokenizer,
        norm_stats: Mapping[str, NormStats] | None,
        cameras: Sequence[str],
        delta_mask: Sequence[bool] | None = None,
    ) -> None:
        self.model_config = model_config
        # Action dims trained as deltas w.r.t. the current state (`recap_core.data.actions`).
        self.delta_mask = list(delta_mask) if delta_mask and any(delta_mask) else None
        self.tokenizer = tokenizer
        self.norm_stats = dict(norm_stats) if norm_stats else None
        self.cameras = tuple(cameras)
        self.camera_map = assign_cameras(self.cameras, model_config.image_keys)
        self.image_size = (model_config.image_size, model_config.image_size)

    def build_model(self, rngs: Any) -> Any:
        return self.model_config.create(rngs)

    def frozen_filter(self) -> Any:
        return self.model_config.freeze_filter()

    def _normalise(self, key: str, x: np.ndarray) -> np.ndarray:
        if self.norm_stats is None:
            return x.astype(np.float32)
        return np.asarray(normalize(x.astype(np.float32), self.norm_stats[key], use_quantiles=True))

    def unnormalise_actions(self, actions: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        """Model actions [B, H, A] (or [H, A]) back to absolute robot targets: the inverse of the
        training normalisation, then, for a delta-action run, plus the raw `state` [B, S] / [S]."""
        out = np.asarray(actions, np.float32)
        if self.norm_stats is not None:
            out = np.asarray(unnormalize(out, self.norm_stats[ACTIONS], use_quantiles=True))
        if self.delta_mask is None:
            return out
        if state is None:
            raise ValueError("a delta-action policy needs the observation's state to return absolute actions")
        return to_absolute(out, state, self.delta_mask)

    def observation_inputs(
        self, batch: Mapping[str, Any], rng: np.random.Generator | None, *, with_unconditional: bool = False
    ) -> dict[str, Any]:
        """Images, masks and prompt tokens of a batch without actions (serving uses this too).

        `rng` None: the advantage clause is never dropped (inference). `with_unconditional` adds
        the prompts without the clause (`uncond_tokens`, `uncond_token_mask`) for CFG sampling.
        """
        cfg = self.model_config
        state = self._normalise(STATE, np.asarray(batch["state"]))
        adv = [str(a) for a in batch["adv_ind"]] if cfg.pi06 and "adv_ind" in batch else None
        if cfg.pi06 and adv is None:
            raise DatasetError("batch has no adv_ind", fix="finetune needs the adv_ind column")
        tokens = self.tokenizer.tokenize_batch(
            [str(p) for p in batch["prompt"]], state, adv, rng=rng, with_unconditional=with_unconditional
        )
        images, masks = images_to_model(batch, self.camera_map, cfg.image_keys, cfg.image_size)
        return {"images": images, "image_masks": masks, **tokens}

    def make_inputs(self, batch: Mapping[str, Any], rng: np.random.Generator, *, train: bool) -> dict[str, Any]:
        cfg = self.model_config
        inputs = self.observation_inputs(batch, rng if train else None)
        actions = np.asarray(batch["actions"])[:, : cfg.action_horizon]
        if self.delta_mask is not None:
            actions = to_delta(actions, np.asarray(batch["state"]), self.delta_mask)
        actions = self._normalise(ACTIONS, actions)
        if actions.shape[-1] > cfg.action_dim:
            raise DatasetError(
                f"the dataset's actions have {actions.shape[-1]} dims, more than the model's action_dim "
                f"{cfg.action_dim}",
                fix="use a preset whose action_dim covers the dataset (real presets: 32)",
            )
        padded = np.zeros((*actions.shape[:2], cfg.action_dim), np.float32)
        padded[..., : actions.shape[-1]] = actions
        return {
            **inputs,
            "actions": padded,
            "action_is_pad": np.asarray(batch["action_is_pad"], bool)[:, : cfg.action_horizon],
        }

    def loss(self, model: Any, inputs: dict[str, Any], rng: Any) -> tuple[Any, dict[str, Any]]:
        return model.loss(inputs, rng)
