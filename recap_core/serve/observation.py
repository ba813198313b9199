"""Map one wire observation (openpi ALOHA-style request dict) to a model-ready batch of one.

A request looks like openpi's ALOHA example, plus RECAP's advantage indicator::

    {"state": float[S],
     "images": {"cam_high": uint8[3, H, W] | uint8[H, W, 3] | float[...] in [0, 1], ...},
     "prompt": "hand over the vial",          # optional when the run has a default prompt
     "adv_ind": "positive"}                   # optional unless --require-adv-ind

and becomes the batch contract of docs/internals.md with a leading dim of 1 (images resized
to the model resolution, a mask per camera). Every problem raises `RequestError` naming the
key, what was expected and what to send instead; the server turns it into an error reply.
Client-supplied names and values are quoted short (`describe_names`, `clip`), whatever is sent.

A camera map (`recap serve RUN --camera top=cam_high`) lets clients send a camera under another
name than the one the model was trained on: the request's `images["cam_high"]` is fed to the
model's `top`. The metadata then lists the names clients send (`cameras`) and the map itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recap_core.data.loader import resize_with_pad
from recap_core.errors import RecapError, ServeError
from recap_core.serve.protocol import clip, describe_names

ADV_IND_VALUES = ("positive", "negative", "none")
# The ALOHA/YAM camera names, in openpi's order (base view, left wrist, right wrist).
ALOHA_CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
# openpi's ALOHA clients also send `cam_low`; its ALOHA policy ignores it, so do we.
ALOHA_IGNORED_CAMERAS = frozenset({"cam_low"})
REQUEST_KEYS = frozenset({"state", "images", "prompt", "adv_ind"})


class RequestError(RecapError):
    """An observation sent by a client does not match what the served policy expects."""


@dataclasses.dataclass(frozen=True)
class ObservationSpec:
    """What the served model reads from a request, taken from the run's config."""

    state_dim: int
    cameras: tuple[str, ...] = ALOHA_CAMERAS
    image_size: tuple[int, int] = (224, 224)  # (height, width) the model was trained at
    ignored_cameras: frozenset[str] = ALOHA_IGNORED_CAMERAS
    default_prompt: str | None = None
    default_adv_ind: str | None = "positive"  # None: the model is not advantage-conditioned
    require_adv_ind: bool = False
    camera_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Client camera name -> model camera (from `--camera MODEL=CLIENT`); unmapped cameras keep their name."""

    def __post_init__(self) -> None:
        if self.state_dim < 1:
            raise RequestError(f"state_dim must be >= 1, got {self.state_dim}")
        if not self.cameras:
            raise RequestError("a policy needs at least one camera", fix="list the run's camera keys")
        if self.default_adv_ind is not None and self.default_adv_ind not in ADV_IND_VALUES:
            raise RequestError(
                f"default adv_ind {self.default_adv_ind!r} is not one of {list(ADV_IND_VALUES)}",
                fix="use --default-adv-ind positive|negative|none",
            )
        check_camera_map(self.camera_map, self.cameras)
        object.__setattr__(self, "camera_map", dict(self.camera_map))

    @property
    def client_cameras(self) -> tuple[str, ...]:
        """The camera names clients send, one per model camera and in the model's order."""
        to_client = {model: client for client, model in self.camera_map.items()}
        return tuple(to_client.get(cam, cam) for cam in self.cameras)

    @property
    def client_ignored_cameras(self) -> frozenset[str]:
        """Camera names accepted and dropped (a mapped name is read, not ignored)."""
        return self.ignored_cameras - set(self.client_cameras)

    def describe(self) -> dict[str, Any]:
        """The request contract, for the server metadata clients read on connect."""
        return {
            "state_dim": self.state_dim,
            "cameras": list(self.client_cameras),
            "camera_map": dict(self.camera_map),
            "ignored_cameras": sorted(self.client_ignored_cameras),
            "image_size": list(self.image_size),
            "default_prompt": self.default_prompt,
            "adv_ind": {
                "conditioned": self.default_adv_ind is not None or self.require_adv_ind,
                "default": None if self.require_adv_ind else self.default_adv_ind,
                "required": self.require_adv_ind,
                "values": list(ADV_IND_VALUES),
            },
        }


def parse_camera_map(items: Sequence[str]) -> dict[str, str]:
    """`["top=cam_high", ...]` (MODEL=CLIENT, as `--camera` takes them) -> {client name: model camera}."""
    mapping: dict[str, str] = {}
    for item in items:
        model, sep, client = (part.strip() for part in item.partition("="))
        if not sep or not model or not client:
            raise ServeError(
                f"--camera {item!r} is not MODEL=CLIENT",
                fix="name the run's camera, then the name clients send it under, e.g. --camera top=cam_high",
            )
        if client in mapping and mapping[client] != model:
            raise ServeError(
                f"--camera maps the clients' {client!r} to both {mapping[client]!r} and {model!r}",
                fix="give each client camera one model camera",
            )
        mapping[client] = model
    return mapping


def check_camera_map(camera_map: Mapping[str, str], cameras: Sequence[str]) -> None:
    """Refuse a camera map that names a camera the model lacks, or leaves a model camera unreachable."""
    taken: dict[str, str] = {}
    for client, model in camera_map.items():
        if model not in cameras:
            raise ServeError(
                f"--camera {model}={client}: the run has no camera {model!r}; its cameras are {list(cameras)}",
                fix=f"write --camera MODEL=CLIENT with MODEL one of the run's cameras, e.g. --camera {cameras[0]}={client}",
            )
        if model in taken:
            raise ServeError(
                f"--camera maps both {taken[model]!r} and {client!r} to the run's camera {model!r}",
                fix="give each model camera one client name",
            )
        taken[model] = client
    for client, model in camera_map.items():
        if client in cameras and client not in taken:
            raise ServeError(
                f"--camera {model}={client}: {client!r} is also one of the run's cameras, which clients could "
                "then no longer send",
                fix=f"map {client!r} to another client name as well (a swap: --camera a=b --camera b=a)",
            )


def prepare_observation(obs: Any, spec: ObservationSpec) -> dict[str, Any]:
    """Validate a request and return {images, image_masks, state, prompt, adv_ind} with batch dim 1."""
    if not isinstance(obs, Mapping):
        raise RequestError(
            f"an observation must be a dict, got {type(obs).__name__}",
            fix="send {'state': ..., 'images': {...}, 'prompt': ...}",
        )
    keys = {_key_text(k) for k in obs}
    extra = sorted(keys - REQUEST_KEYS)
    if extra:
        raise RequestError(
            f"observation has unexpected keys {describe_names(extra)}; expected {sorted(REQUEST_KEYS)}",
            fix="send images nested under 'images' (e.g. images['cam_high']) and drop other keys",
        )
    obs = {_key_text(k): v for k, v in obs.items()}
    if "state" not in obs:
        raise RequestError(f"observation is missing 'state' (float[{spec.state_dim}])", fix="add the robot state")
    if "images" not in obs:
        raise RequestError(
            f"observation is missing 'images' (a dict with cameras {list(spec.client_cameras)})",
            fix=f"add images={{'{spec.client_cameras[0]}': uint8[3, H, W], ...}}",
        )
    images, masks = _prepare_images(obs["images"], spec)
    return {
        "images": images,
        "image_masks": masks,
        "state": _prepare_state(obs["state"], spec)[None],
        "prompt": np.array([_prepare_prompt(obs.get("prompt"), spec)], dtype=object),
        "adv_ind": np.array([_prepare_adv_ind(obs.get("adv_ind"), spec)], dtype=object),
    }


def example_observation(spec: ObservationSpec) -> dict[str, Any]:
    """A valid request of the right shapes (all zeros), used to warm the model up before serving."""
    height, width = spec.image_size
    obs: dict[str, Any] = {
        "state": np.zeros(spec.state_dim, np.float32),
        "images": {cam: np.zeros((3, height, width), np.uint8) for cam in spec.client_cameras},
        "prompt": spec.default_prompt or "warm up",
    }
    if spec.require_adv_ind:
        obs["adv_ind"] = "positive"
    return obs


def _key_text(key: Any) -> str:
    return key.decode(errors="replace") if isinstance(key, bytes) else str(key)


def _prepare_state(value: Any, spec: ObservationSpec) -> np.ndarray:
    try:
        state = np.asarray(value) if isinstance(value, np.ndarray | list | tuple) else None
    except (ValueError, TypeError, OverflowError):  # ragged or otherwise unconvertible lists
        state = None
    if state is None or state.dtype.kind not in "biuf":
        raise RequestError(
            f"'state' must be a numeric array float[{spec.state_dim}], got {type(value).__name__}",
            fix="send state as a float32 numpy array",
        )
    if state.shape != (spec.state_dim,):
        raise RequestError(
            f"'state' has shape {list(state.shape)}, expected [{spec.state_dim}]",
            fix=f"send the {spec.state_dim} state values the run was trained on, unbatched",
        )
    state = state.astype(np.float32)
    if not np.all(np.isfinite(state)):
        raise RequestError("'state' contains NaN or inf", fix="check the robot's joint readings")
    return state


def _prepare_images(value: Any, spec: ObservationSpec) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    if not isinstance(value, Mapping):
        raise RequestError(
            f"'images' must be a dict of camera name -> image, got {type(value).__name__}",
            fix=f"send images={{'{spec.client_cameras[0]}': uint8[3, H, W], ...}}",
        )
    given = {_key_text(k): v for k, v in value.items()}
    sent_as = spec.client_cameras  # the name each model camera arrives under
    unknown = sorted(set(given) - set(sent_as) - spec.client_ignored_cameras)
    if unknown:
        mapped = f" (the server maps {spec.camera_map})" if spec.camera_map else ""
        raise RequestError(
            f"'images' has unknown cameras {describe_names(unknown)}; this policy reads {list(sent_as)}{mapped}",
            fix="rename the cameras to the ones in the server's metadata ('cameras') or drop the extra ones; "
            "a server can rename them for you: recap serve RUN --camera MODEL=CLIENT",
        )
    if not any(cam in given for cam in sent_as):
        raise RequestError(
            f"'images' has none of the policy's cameras {list(sent_as)}",
            fix="send at least the base camera",
        )
    height, width = spec.image_size
    images, masks = {}, {}
    for cam, name in zip(spec.cameras, sent_as, strict=True):
        if name in given:
            # Same resize-with-pad as the training loader, so served frames match trained ones.
            images[cam] = resize_with_pad(_to_hwc_uint8(given[name], name), (height, width))[None]
            masks[cam] = np.ones(1, bool)
        else:
            # A missing camera is fed as black with mask False, as openpi does for absent wrists.
            images[cam] = np.zeros((1, height, width, 3), np.uint8)
            masks[cam] = np.zeros(1, bool)
    return images, masks


def _to_hwc_uint8(value: Any, cam: str) -> np.ndarray:
    image = value if isinstance(value, np.ndarray) else None
    if image is None or image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        shape = list(image.shape) if image is not None else type(value).__name__
        raise RequestError(
            f"images['{cam}'] has shape {shape}, expected a 3-channel image [3, H, W] or [H, W, 3]",
            fix="send one RGB image per camera, unbatched",
        )
    # HWC when the last axis has 3 channels, else CHW (openpi's ALOHA layout); the ambiguous
    # [3, H, 3] reads as HWC, like lerobot frames.
    if image.shape[-1] != 3:
        image = np.moveaxis(image, 0, -1)
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise RequestError(
            f"images['{cam}'] has shape {list(value.shape)}: height and width must be at least 1 pixel",
            fix="send the camera frame itself, or leave the camera out (it is then fed as black, masked out)",
        )
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype.kind == "f":
        if image.size and (np.nanmin(image) < 0.0 or np.nanmax(image) > 1.0 or np.isnan(image).any()):
            raise RequestError(
                f"images['{cam}'] is float with values outside [0, 1]",
                fix="send uint8 images, or floats scaled to [0, 1]",
            )
        return np.round(image * 255.0).astype(np.uint8)
    raise RequestError(
        f"images['{cam}'] has dtype {image.dtype}, expected uint8 or float in [0, 1]",
        fix="send uint8 RGB images",
    )


def _prepare_prompt(value: Any, spec: ObservationSpec) -> str:
    if value is None:
        if spec.default_prompt is None:
            raise RequestError("observation is missing 'prompt' and the run has no default prompt",
                               fix="send the task text as 'prompt'")
        return spec.default_prompt
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str):
        raise RequestError(f"'prompt' must be a string, got {type(value).__name__}", fix="send the task as text")
    return value


def _prepare_adv_ind(value: Any, spec: ObservationSpec) -> str:
    if value is None:
        if spec.require_adv_ind:
            raise RequestError(
                f"observation is missing 'adv_ind' and this server requires it (one of {list(ADV_IND_VALUES)})",
                fix="send adv_ind='positive' with every observation, or restart without --require-adv-ind",
            )
        return spec.default_adv_ind or "none"
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str) or value not in ADV_IND_VALUES:
        raise RequestError(
            f"'adv_ind' is {clip(repr(value))}, expected one of {list(ADV_IND_VALUES)}",
            fix="send adv_ind='positive' to ask for the improved behaviour",
        )
    return value
