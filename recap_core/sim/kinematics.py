"""Planar two-link arm kinematics for the toy task: forward kinematics and analytic IK.

An arm is a shoulder at `base`, a link of length `upper`, an elbow, a link of length `fore`
and a gripper at the tip. Joint angles are radians, measured counter-clockwise from +x
(the elbow angle relative to the upper link).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArmGeometry:
    base: tuple[float, float]
    upper: float
    fore: float
    # -1 bends the elbow clockwise (elbow above the base->tip line for an arm reaching to its
    # right), +1 counter-clockwise; fixing it per arm keeps IK solutions continuous.
    elbow_sign: float

    @property
    def reach(self) -> float:
        return self.upper + self.fore


def forward(arm: ArmGeometry, shoulder: float, elbow: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (elbow_xy, tip_xy) for the given joint angles."""
    base = np.asarray(arm.base, dtype=np.float64)
    elbow_xy = base + arm.upper * np.array([np.cos(shoulder), np.sin(shoulder)])
    total = shoulder + elbow
    tip_xy = elbow_xy + arm.fore * np.array([np.cos(total), np.sin(total)])
    return elbow_xy, tip_xy


def inverse(arm: ArmGeometry, target: np.ndarray) -> tuple[float, float]:
    """Joint angles that put the tip at `target`, or as close as the arm's reach allows."""
    d = np.asarray(target, dtype=np.float64) - np.asarray(arm.base, dtype=np.float64)
    dist = float(np.hypot(d[0], d[1]))
    # Keep a small margin off full extension / full fold, where the elbow angle is singular.
    lo = abs(arm.upper - arm.fore) + 1e-3
    dist = min(max(dist, lo), arm.reach - 1e-3)
    cos_elbow = (dist**2 - arm.upper**2 - arm.fore**2) / (2 * arm.upper * arm.fore)
    elbow = arm.elbow_sign * float(np.arccos(np.clip(cos_elbow, -1.0, 1.0)))
    shoulder = float(
        np.arctan2(d[1], d[0]) - np.arctan2(arm.fore * np.sin(elbow), arm.upper + arm.fore * np.cos(elbow))
    )
    return shoulder, elbow
