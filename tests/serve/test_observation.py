"""Mapping a wire observation to the model batch, and every way a request can be wrong."""

from __future__ import annotations

import numpy as np
import pytest
from openpi_client import image_tools

from recap_core.serve.observation import (
    ObservationSpec,
    RequestError,
    example_observation,
    prepare_observation,
)
from recap_core.serve.policy import ModelPolicy, ZerosPolicy
from tests.serve.policies import (
    ACTION_DIM,
    HORIZON,
    STATE_DIM,
    echo_observation,
    expected_actions,
    state_echo_policy,
)

SPEC = ObservationSpec(state_dim=STATE_DIM, image_size=(8, 8), default_prompt="test task")


def _rng_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_aloha_request_maps_to_the_batch_contract() -> None:
    chw = _rng_image((3, 8, 8))
    obs = {
        "state": np.arange(STATE_DIM, dtype=np.float64),
        "images": {"cam_high": chw, "cam_left_wrist": np.moveaxis(chw, 0, -1), "cam_low": chw},
        "prompt": "fold",
        "adv_ind": "negative",
    }
    batch = prepare_observation(obs, SPEC)
    assert batch["state"].dtype == np.float32 and batch["state"].shape == (1, STATE_DIM)
    assert set(batch["images"]) == {"cam_high", "cam_left_wrist", "cam_right_wrist"}  # cam_low ignored
    for cam in batch["images"]:
        assert batch["images"][cam].shape == (1, 8, 8, 3) and batch["images"][cam].dtype == np.uint8
    # CHW and HWC of the same picture give the same model input.
    np.testing.assert_array_equal(batch["images"]["cam_high"], batch["images"]["cam_left_wrist"])
    np.testing.assert_array_equal(batch["images"]["cam_high"][0], np.moveaxis(chw, 0, -1))
    # The missing right wrist is black and masked out.
    assert not batch["image_masks"]["cam_right_wrist"][0] and batch["image_masks"]["cam_high"][0]
    assert not batch["images"]["cam_right_wrist"].any()
    assert batch["prompt"].tolist() == ["fold"] and batch["adv_ind"].tolist() == ["negative"]


def test_float_images_in_unit_range_become_uint8() -> None:
    img = np.linspace(0, 1, 3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    batch = prepare_observation({"state": np.zeros(STATE_DIM), "images": {"cam_high": img}}, SPEC)
    out = batch["images"]["cam_high"][0]
    assert out.dtype == np.uint8 and out.max() == 255 and out.min() == 0


@pytest.mark.parametrize("shape", [(480, 640, 3), (3, 240, 320), (100, 30, 3)])
def test_resize_matches_openpi_resize_with_pad(shape: tuple[int, ...]) -> None:
    img = _rng_image(shape, seed=1)
    hwc = img if shape[-1] == 3 else np.moveaxis(img, 0, -1)
    ours = prepare_observation(
        {"state": np.zeros(4), "images": {"cam_high": img}}, ObservationSpec(state_dim=4, default_prompt="p")
    )["images"]["cam_high"][0]
    np.testing.assert_array_equal(ours, image_tools.resize_with_pad(hwc, 224, 224))


def test_defaults_for_prompt_and_adv_ind() -> None:
    batch = prepare_observation(echo_observation(0.0), SPEC)
    assert batch["prompt"].tolist() == ["test task"] and batch["adv_ind"].tolist() == ["positive"]
    negative = ObservationSpec(state_dim=STATE_DIM, default_adv_ind="negative", default_prompt="p")
    assert prepare_observation(echo_observation(0.0), negative)["adv_ind"].tolist() == ["negative"]


def _obs(**changes: object) -> dict:
    obs = echo_observation(0.0, prompt="p")
    for key, value in changes.items():
        if value is ...:
            obs.pop(key)
        else:
            obs[key] = value
    return obs


@pytest.mark.parametrize(
    ("obs", "spec", "match"),
    [
        ([1, 2], SPEC, "must be a dict"),
        (_obs(state=...), SPEC, "missing 'state'"),
        (_obs(images=...), SPEC, "missing 'images'"),
        (_obs(prompt=..., ), ObservationSpec(state_dim=STATE_DIM), "missing 'prompt'"),
        (_obs(wrist=np.zeros(3)), SPEC, r"unexpected keys \['wrist'\]"),
        (_obs(state=np.zeros(STATE_DIM + 1)), SPEC, rf"shape \[{STATE_DIM + 1}\], expected \[{STATE_DIM}\]"),
        (_obs(state=np.zeros((1, STATE_DIM))), SPEC, "expected"),
        (_obs(state="1,2,3"), SPEC, "numeric array"),
        (_obs(state=np.full(STATE_DIM, np.nan)), SPEC, "NaN"),
        (_obs(images=np.zeros((3, 8, 8))), SPEC, "camera name -> image"),
        (_obs(images={"cam_front": np.zeros((8, 8, 3), np.uint8)}), SPEC, r"unknown cameras \['cam_front'\]"),
        (_obs(images={"cam_low": np.zeros((8, 8, 3), np.uint8)}), SPEC, "none of the policy's cameras"),
        (_obs(images={"cam_high": np.zeros((1, 3, 8, 8), np.uint8)}), SPEC, r"images\['cam_high'\] has shape"),
        (_obs(images={"cam_high": np.zeros((8, 8), np.uint8)}), SPEC, "3-channel"),
        (_obs(images={"cam_high": np.full((8, 8, 3), 2.0)}), SPEC, "outside"),
        (_obs(images={"cam_high": np.zeros((8, 8, 3), np.int32)}), SPEC, "dtype int32"),
        (_obs(prompt=3), SPEC, "'prompt' must be a string"),
        (_obs(adv_ind="great"), SPEC, "'adv_ind' is 'great'"),
        (_obs(), ObservationSpec(state_dim=STATE_DIM, require_adv_ind=True), "requires it"),
    ],
)
def test_bad_requests_raise_readable_errors(obs: object, spec: ObservationSpec, match: str) -> None:
    with pytest.raises(RequestError, match=match) as info:
        prepare_observation(obs, spec)
    assert info.value.fix or "dict" in info.value.message


def test_spec_rejects_a_bad_default_adv_ind() -> None:
    with pytest.raises(RequestError, match="default adv_ind"):
        ObservationSpec(state_dim=2, default_adv_ind="maybe")


def test_model_policy_normalises_samples_and_cuts_padding() -> None:
    policy = state_echo_policy(
        normalize_state=lambda s: s * 2.0,
        unnormalize_actions=lambda a, state: a + 0.5,
    )
    out = policy.infer(echo_observation(3.0, adv_ind="none"))
    assert out["actions"].shape == (HORIZON, ACTION_DIM) and out["actions"].dtype == np.float32
    np.testing.assert_allclose(out["actions"], expected_actions(np.full(STATE_DIM, 6.0), "none") + 0.5)
    assert out["policy_timing"]["infer_ms"] >= 0
    meta = policy.metadata
    assert meta["adv_ind"] == {"conditioned": True, "default": "positive", "required": False,
                               "values": ["positive", "negative", "none"]}
    assert meta["cameras"] == ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    assert (meta["action_horizon"], meta["action_dim"], meta["state_dim"]) == (HORIZON, ACTION_DIM, STATE_DIM)
    # The warm-up request is valid for the policy's own spec.
    policy.infer(policy.example_observation())


def test_model_policy_rejects_a_model_that_breaks_its_shape_contract() -> None:
    policy = ModelPolicy(SPEC, lambda batch: np.zeros((2, 1)), action_horizon=HORIZON, action_dim=ACTION_DIM)
    with pytest.raises(ValueError, match="model returned actions of shape"):
        policy.infer(echo_observation(0.0))


def test_zeros_policy() -> None:
    policy = ZerosPolicy(50, 14)
    out = policy.infer({"anything": 1})
    assert out["actions"].shape == (50, 14) and out["actions"].dtype == np.float32 and not out["actions"].any()
    with pytest.raises(RequestError, match="must be a dict"):
        policy.infer([1])  # type: ignore[arg-type]
    with pytest.raises(RequestError, match="--action-shape"):
        ZerosPolicy(0, 14)


def test_example_observation_includes_adv_ind_when_required() -> None:
    spec = ObservationSpec(state_dim=3, require_adv_ind=True, default_prompt="p")
    assert prepare_observation(example_observation(spec), spec)["adv_ind"].tolist() == ["positive"]


def test_camera_map_feeds_a_client_camera_to_the_model_camera() -> None:
    from recap_core.serve.observation import parse_camera_map

    spec = ObservationSpec(state_dim=STATE_DIM, cameras=("top", "left_wrist"), image_size=(8, 8), default_prompt="p",
                           camera_map=parse_camera_map(["top=cam_high"]))
    assert spec.camera_map == {"cam_high": "top"}
    meta = spec.describe()
    assert meta["cameras"] == ["cam_high", "left_wrist"] and meta["camera_map"] == {"cam_high": "top"}
    img, wrist = _rng_image((8, 8, 3), 1), _rng_image((8, 8, 3), 2)
    batch = prepare_observation({"state": np.zeros(STATE_DIM), "images": {"cam_high": img, "left_wrist": wrist}}, spec)
    np.testing.assert_array_equal(batch["images"]["top"][0], img)  # sent as cam_high, read as top
    np.testing.assert_array_equal(batch["images"]["left_wrist"][0], wrist)
    assert set(batch["images"]) == {"top", "left_wrist"} and batch["image_masks"]["top"][0]
    # The model's own name is no longer what clients send; errors name the announced names.
    with pytest.raises(RequestError, match=r"unknown cameras \['top'\].*reads \['cam_high', 'left_wrist'\]"):
        prepare_observation({"state": np.zeros(STATE_DIM), "images": {"top": img}}, spec)
    assert set(example_observation(spec)["images"]) == {"cam_high", "left_wrist"}
    # A swap is allowed, and feeds each image to the other slot.
    swap = ObservationSpec(state_dim=STATE_DIM, cameras=("a", "b"), image_size=(8, 8), default_prompt="p",
                           camera_map=parse_camera_map(["a=b", "b=a"]))
    batch = prepare_observation({"state": np.zeros(STATE_DIM), "images": {"a": img, "b": wrist}}, swap)
    np.testing.assert_array_equal(batch["images"]["a"][0], wrist)
    np.testing.assert_array_equal(batch["images"]["b"][0], img)
    # Mapping cam_low makes it read, not ignored.
    low = ObservationSpec(state_dim=STATE_DIM, cameras=("top",), camera_map={"cam_low": "top"})
    assert low.describe()["cameras"] == ["cam_low"] and "cam_low" not in low.describe()["ignored_cameras"]


@pytest.mark.parametrize(
    ("items", "needle"),
    [
        (["front=cam_high"], r"no camera 'front'; its cameras are \['top', 'left_wrist'\]"),
        (["top=cam_high", "left_wrist=cam_high"], "to both 'top' and 'left_wrist'"),
        (["top=a", "top=b"], "both 'a' and 'b' to the run's camera 'top'"),
        (["top=left_wrist"], "'left_wrist' is also one of the run's cameras"),
        (["top"], "is not MODEL=CLIENT"),
        (["=cam_high"], "is not MODEL=CLIENT"),
    ],
)
def test_bad_camera_maps_are_refused(items: list[str], needle: str) -> None:
    from recap_core.errors import ServeError
    from recap_core.serve.observation import parse_camera_map

    with pytest.raises(ServeError, match=needle) as info:
        ObservationSpec(state_dim=2, cameras=("top", "left_wrist"), camera_map=parse_camera_map(items))
    assert info.value.fix
