"""Benchmark `recap value label`. Prints one JSON document.

    .venv/bin/python benchmarks/label.py                          # math + data path + writer
    .venv/bin/python benchmarks/label.py --checkpoint runs/value-tiny --batch-sizes 8 32

Sections:
- `math`: N-step advantages + global and per-task binarisation on `--frames` synthetic frames
  (episodes of 200-800 frames, 20% intervention), best of 3.
- `data_path`: frames/s of the prediction driver with decoded video frames (224x224) and a
  trivial predict_fn: the ceiling the data side puts on labelling, before any model.
- `writer`: seconds to write the labelled copy of the synthetic dataset.
- `end_to_end` (with `--checkpoint`): frames/s of the whole command with that value run, per
  batch size, on this machine's devices (the first batch includes the one jit compile).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bench_math(frames: int, lookahead: int) -> dict[str, Any]:
    from recap_core.label.advantage import n_step_advantage
    from recap_core.label.threshold import binarise

    rng = np.random.default_rng(0)
    lengths = []
    while sum(lengths) < frames:
        lengths.append(int(rng.integers(200, 800)))
    lengths[-1] -= sum(lengths) - frames
    ep = np.repeat(np.arange(len(lengths)), lengths)
    fr = np.concatenate([np.arange(n) for n in lengths])
    task = np.repeat(rng.integers(0, 4, len(lengths)), lengths)
    values = rng.uniform(-1, 0, frames)
    rewards = np.full(frames, -1 / 800)
    interv = (rng.random(frames) < 0.2).astype(np.int64)
    timings: dict[str, float] = {}
    for name, fn in {
        "advantage": lambda: n_step_advantage(values, rewards, ep, fr, lookahead),
        "binarise_global": lambda: binarise(values, interv, ep, task, 30.0),
        "binarise_per_task": lambda: binarise(values, interv, ep, task, 30.0, per_task=True),
    }.items():
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        timings[name] = best
    total = timings["advantage"] + timings["binarise_global"]
    return {
        "frames": frames,
        "episodes": len(lengths),
        "seconds": {k: round(v, 4) for k, v in timings.items()},
        "frames_per_second": round(frames / total),
    }


def bench_data_path(root: Path, batch_size: int) -> dict[str, Any]:
    from recap_core.data.dataset import open_dataset
    from recap_core.label.cache import PredictionCache
    from recap_core.label.pipeline import episode_rows_of, read_frames
    from recap_core.label.predict import InferenceFrames, predict_values

    info = open_dataset(root)
    frames = read_frames(info)
    rows = episode_rows_of(frames, np.unique(frames.episode_index))
    needed = np.ones(frames.index.size, dtype=bool)
    load = InferenceFrames(root, cameras=None, image_size=(224, 224))
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = PredictionCache(Path(cache_dir), {"bench": 1})
        t0 = time.perf_counter()
        stats = predict_values(rows, needed, load, lambda b: np.zeros(len(b["index"])), cache, batch_size=batch_size)
        seconds = time.perf_counter() - t0
    return {
        "frames": stats.frames_predicted,
        "cameras": len(info.camera_keys),
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "frames_per_second": round(stats.frames_predicted / seconds, 1),
    }


def bench_writer(root: Path) -> dict[str, Any]:
    from recap_core.data.dataset import open_dataset
    from recap_core.label.pipeline import read_frames
    from recap_core.label.relabel import FrameLabels, write_labelled_copy

    info = open_dataset(root)
    frames = read_frames(info)
    n = frames.index.size
    labels = FrameLabels(
        frames.index, np.where(np.arange(n) % 3 == 0, "positive", "negative").astype(object),
        np.zeros(n, np.float32), np.zeros(n, np.float32),
    )
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        write_labelled_copy(info, labels, Path(out) / "labelled")
        seconds = time.perf_counter() - t0
    return {"frames": n, "seconds": round(seconds, 3)}


def bench_end_to_end(root: Path, checkpoint: Path, batch_sizes: list[int]) -> list[dict[str, Any]]:
    from recap_core.label.checkpoint import resolve_value_checkpoint
    from recap_core.label.model import value_predictor
    from recap_core.label.pipeline import LabelOptions, label_dataset

    ckpt = resolve_value_checkpoint(checkpoint)
    out = []
    for bs in batch_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            options = LabelOptions(batch_size=bs, output=Path(tmp) / "out", cache_dir=Path(tmp) / "cache")
            res = label_dataset(root, ckpt.content_hash(), value_predictor(ckpt, use_ema=False), options)
        out.append({
            "batch_size": bs,
            "frames_predicted": res["frames_predicted"],
            "predict_frames_per_second": res["predict_frames_per_second"],
            "seconds": res["seconds"],
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--lookahead", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=6, help="episodes of the synthetic video dataset")
    parser.add_argument("--episode-frames", type=int, default=100)
    parser.add_argument("--checkpoint", type=Path, help="a `recap value train` run for the end-to-end section")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    args = parser.parse_args()

    import jax

    from recap_core.data.synthetic import make_dataset

    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "devices": [str(d) for d in jax.devices()]},
        "math": bench_math(args.frames, args.lookahead),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = make_dataset(Path(tmp) / "ds", episodes=args.episodes, frames=args.episode_frames,
                            cameras=("cam_high", "cam_left_wrist"), image_size=(240, 320))
        result["data_path"] = bench_data_path(root, max(args.batch_sizes))
        result["writer"] = bench_writer(root)
        if args.checkpoint is not None:
            result["end_to_end"] = bench_end_to_end(root, args.checkpoint, args.batch_sizes)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
