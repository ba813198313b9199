"""Numpy rasteriser for the toy task: a head camera over the table and two wrist cameras.

Every camera looks straight down; a view is a square window of the table (centre, half
width) sampled at pixel centres. The wrist cameras follow each gripper tip with a tighter
window, like a camera mounted on the wrist. The gripper is drawn as a ring whose size shows
how open it is, so its state is visible in the images as on a real robot.
"""

from __future__ import annotations

import numpy as np

from recap_core.sim.kinematics import forward
from recap_core.sim.task import ARM_JOINTS, ARMS, CUBE_HALF, LEFT, RIGHT, HandoverEnv

HEAD_VIEW = ((0.0, 0.3), 0.7)  # (centre, half width) in table coordinates
WRIST_HALF_WIDTH = 0.22
LINK_HALF_WIDTH = 0.03

TABLE = np.array([150, 140, 125], np.uint8)
ZONE = np.array([70, 170, 80], np.uint8)
CUBE = np.array([210, 40, 40], np.uint8)
BASE = np.array([60, 60, 60], np.uint8)
ARM_COLOURS = (np.array([50, 90, 200], np.uint8), np.array([230, 140, 30], np.uint8))
GRIPPER = np.array([240, 230, 90], np.uint8)


def _grid(centre: tuple[float, float], half: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """World x of each column [1, W] and y of each row [H, 1]; row 0 is the far edge (top)."""
    offsets = (np.arange(size) + 0.5) / size * 2 * half - half
    xs = (centre[0] + offsets)[None, :]
    ys = (centre[1] - offsets)[:, None]
    return xs, ys


def _disc(xs: np.ndarray, ys: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    return (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius**2


def _segment(xs: np.ndarray, ys: np.ndarray, a: np.ndarray, b: np.ndarray, half_width: float) -> np.ndarray:
    ab = b - a
    t = np.clip(((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return (xs - a[0] - t * ab[0]) ** 2 + (ys - a[1] - t * ab[1]) ** 2 <= half_width**2


def render_view(env: HandoverEnv, centre: tuple[float, float], half: float, size: int) -> np.ndarray:
    """One uint8 [size, size, 3] top-down image of the scene through a square window."""
    xs, ys = _grid(centre, half, size)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = TABLE
    image[_disc(xs, ys, env.target, env.task.zone_radius)] = ZONE
    cube = (np.abs(xs - env.cube[0]) <= CUBE_HALF) & (np.abs(ys - env.cube[1]) <= CUBE_HALF)
    holding = bool(env.holders)
    if not holding:  # a loose cube lies on the table, under the arms
        image[cube] = CUBE
    for arm in (LEFT, RIGHT):
        shoulder, elbow, gripper = ARM_JOINTS[arm]
        base = np.asarray(ARMS[arm].base)
        elbow_xy, tip_xy = forward(ARMS[arm], env.qpos[shoulder], env.qpos[elbow])
        image[_disc(xs, ys, base, 0.06)] = BASE
        links = _segment(xs, ys, base, elbow_xy, LINK_HALF_WIDTH) | _segment(
            xs, ys, elbow_xy, tip_xy, LINK_HALF_WIDTH
        )
        image[links] = ARM_COLOURS[arm]
        opening = float(np.clip(env.qpos[gripper], 0.0, 1.0))
        reach = env.task.grasp_radius  # the open ring's outer radius is what the gripper can grasp
        outer = reach * (0.5 + 0.5 * opening)
        ring = _disc(xs, ys, tip_xy, outer) & ~_disc(xs, ys, tip_xy, outer - 0.02)
        image[ring] = GRIPPER
    if holding:  # a held cube is lifted, above the gripper
        image[cube] = CUBE
    return image


def render_cameras(env: HandoverEnv, size: int | None = None) -> dict[str, np.ndarray]:
    """All cameras of the task: {camera name: uint8 [size, size, 3]}."""
    size = size or env.task.image_size
    views = {
        "cam_high": HEAD_VIEW,
        "cam_left_wrist": (tuple(env.tip(LEFT)), WRIST_HALF_WIDTH),
        "cam_right_wrist": (tuple(env.tip(RIGHT)), WRIST_HALF_WIDTH),
    }
    return {cam: render_view(env, views[cam][0], views[cam][1], size) for cam in env.task.cameras}
