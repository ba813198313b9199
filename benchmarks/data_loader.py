"""Samples/s of recap's training loader vs lerobot's LeRobotDataset + torch DataLoader.

Both read the same generated LeRobot v3.0 dataset (video cameras), the same cameras, decode with
PyAV, resize-with-pad to the same resolution, build the same action chunk (lerobot:
`delta_timestamps`), use the same batch size and worker count, and run one full epoch per run.
Dataset objects are built before the clock starts; worker start-up and all decoding are timed.
Prints one JSON document: per-run rates, medians and the ratio recap / lerobot.

    .venv/bin/python benchmarks/data_loader.py --episodes 6 --frames 40 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, help="existing v3.0 dataset (default: generate one)")
    p.add_argument("--episodes", type=int, default=6)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--image-height", type=int, default=96)
    p.add_argument("--image-width", type=int, default=128)
    p.add_argument("--cameras", default="cam_high,cam_left_wrist")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--horizon", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    return p.parse_args()


def time_batches(batches, batch_size: int) -> float:
    """Samples/s over one epoch, from creating the iterator (worker start, first decode) to its end."""
    start, n = time.perf_counter(), 0
    for _ in batches:
        n += batch_size
    return n / (time.perf_counter() - start)


def run_recap(root: Path, args: argparse.Namespace, cameras: list[str], seed: int) -> float:
    from recap_core.data.loader import LoaderConfig, TrainLoader

    config = LoaderConfig(
        batch_size=args.batch_size,
        action_horizon=args.horizon,
        cameras=tuple(cameras),
        image_size=(args.resolution, args.resolution),
        num_workers=args.workers,
        seed=seed,
        num_epochs=1,
    )
    return time_batches(TrainLoader(root, config), args.batch_size)


class _LeRobotResized:
    """lerobot samples with the chosen cameras resized-with-pad to the model resolution (in workers)."""

    def __init__(self, ds, keys: list[str], resolution: int) -> None:
        self.ds, self.keys, self.resolution = ds, keys, resolution

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        import torch
        import torch.nn.functional as F

        item = self.ds[i]
        out = {k: item[k] for k in ("observation.state", "action", "action_is_pad", "index")}
        out["task"] = item["task"]
        size = self.resolution
        for key in self.keys:
            img = item[key]  # float [3, H, W] in [0, 1]
            h, w = img.shape[1:]
            ratio = max(w / size, h / size)
            rh, rw = int(h / ratio), int(w / ratio)
            resized = F.interpolate(img[None], size=(rh, rw), mode="bilinear", antialias=True)[0]
            canvas = torch.zeros(3, size, size)
            top, left = (size - rh) // 2, (size - rw) // 2
            canvas[:, top : top + rh, left : left + rw] = resized
            out[key] = (canvas * 255).round().to(torch.uint8)
        return out


def run_lerobot(root: Path, args: argparse.Namespace, cameras: list[str], seed: int) -> float:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    meta_fps = json.loads((root / "meta" / "info.json").read_text())["fps"]
    ds = LeRobotDataset(
        "local/bench",
        root=root,
        video_backend="pyav",
        delta_timestamps={"action": [k / meta_fps for k in range(args.horizon)]},
    )
    keys = [f"observation.images.{c}" for c in cameras]
    loader = torch.utils.data.DataLoader(
        _LeRobotResized(ds, keys, args.resolution),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
    return time_batches(loader, args.batch_size)


def main() -> None:
    args = parse_args()
    cameras = [c for c in args.cameras.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="recap-bench-") as tmp:
        root = args.dataset
        made = 0.0
        if root is None:
            from recap_core.data.synthetic import make_dataset

            t0 = time.perf_counter()
            root = make_dataset(
                Path(tmp) / "ds",
                episodes=args.episodes,
                frames=args.frames,
                image_size=(args.image_height, args.image_width),
                cameras=cameras,
            )
            made = time.perf_counter() - t0
        ours, theirs = [], []
        for run in range(args.runs):
            ours.append(run_recap(root, args, cameras, seed=run))
            theirs.append(run_lerobot(root, args, cameras, seed=run))
        ours_med, theirs_med = statistics.median(ours), statistics.median(theirs)
        print(
            json.dumps(
                {
                    "benchmark": "data_loader",
                    "dataset": {
                        "generated": args.dataset is None,
                        "generate_s": round(made, 2),
                        "episodes": args.episodes,
                        "frames_per_episode": args.frames,
                        "image": [args.image_height, args.image_width],
                        "cameras": cameras,
                    },
                    "config": {
                        "resolution": args.resolution,
                        "action_horizon": args.horizon,
                        "batch_size": args.batch_size,
                        "workers": args.workers,
                        "runs": args.runs,
                        "cpus": os.cpu_count(),
                    },
                    "recap_samples_per_s": [round(x, 1) for x in ours],
                    "lerobot_samples_per_s": [round(x, 1) for x in theirs],
                    "recap_median": round(ours_med, 1),
                    "lerobot_median": round(theirs_med, 1),
                    "speedup": round(ours_med / theirs_med, 2),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
