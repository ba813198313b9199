"""The training loader: batch contract, lerobot parity, determinism, sharding, resume, errors."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest

from recap_core.data.loader import (
    LoaderConfig,
    LoaderStateError,
    TrainLoader,
    fitted_size,
    resize_with_pad,
)
from recap_core.errors import DatasetError, RecapError


def take(loader: TrainLoader, n: int) -> list[dict]:
    it = iter(loader)
    try:
        return list(itertools.islice(it, n))
    finally:
        it.close()


def tabular(root: Path, **kw) -> TrainLoader:
    kw.setdefault("batch_size", 4)
    kw.setdefault("action_horizon", 5)
    return TrainLoader(root, LoaderConfig(load_images=False, **kw))


def test_batch_contract_shapes_and_dtypes(tiny_dataset: Path) -> None:
    loader = TrainLoader(tiny_dataset, LoaderConfig(batch_size=6, action_horizon=4, image_size=(24, 40), num_workers=2))
    (batch,) = take(loader, 1)
    assert set(batch["images"]) == {"cam_high", "cam_left_wrist"} == set(batch["image_masks"])
    for cam in batch["images"]:
        assert batch["images"][cam].shape == (6, 24, 40, 3) and batch["images"][cam].dtype == np.uint8
        assert batch["image_masks"][cam].dtype == bool and batch["image_masks"][cam].all()
        # 32x32 fitted into 24x40 -> 24x24 centred: 8 black columns each side, content in the middle.
        assert batch["images"][cam][:, :, :8].max() == 0 and batch["images"][cam][:, :, 32:].max() == 0
        assert batch["images"][cam][:, :, 8:32].max() > 0
    assert batch["state"].shape == (6, 14) and batch["state"].dtype == np.float32
    assert batch["actions"].shape == (6, 4, 14) and batch["actions"].dtype == np.float32
    assert batch["action_is_pad"].shape == (6, 4) and batch["action_is_pad"].dtype == bool
    assert batch["prompt"].dtype == object and all(isinstance(p, str) for p in batch["prompt"])
    assert batch["adv_ind"].dtype == object and set(batch["adv_ind"]) <= {"positive", "negative", "none"}
    assert batch["intervention"].dtype == np.int64
    for name in ("reward", "reward_label", "value_label"):
        assert batch[name].dtype == np.float32 and batch[name].shape == (6,)
    for name in ("episode_index", "frame_index", "task_index", "index"):
        assert batch[name].dtype == np.int64 and batch[name].shape == (6,)


def test_matches_lerobot_for_the_same_frames(tiny_dataset_two_tasks: Path) -> None:
    """Actions chunk, padding mask, state, RECAP fields, prompt and pixels equal lerobot's ds[index]."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    horizon = 6
    loader = TrainLoader(
        tiny_dataset_two_tasks, LoaderConfig(batch_size=8, action_horizon=horizon, image_size=(32, 32), num_workers=2)
    )
    ref = LeRobotDataset(
        "local/ref",
        root=tiny_dataset_two_tasks,
        video_backend="pyav",
        delta_timestamps={"action": [k / loader.frames.fps for k in range(horizon)]},
    )
    batches = take(loader, loader.steps_per_epoch)
    seen_pad = 0
    for batch in batches:
        for i, index in enumerate(batch["index"].tolist()):
            item = ref[index]
            assert int(item["episode_index"]) == batch["episode_index"][i]
            assert int(item["frame_index"]) == batch["frame_index"][i]
            np.testing.assert_allclose(batch["actions"][i], item["action"].numpy(), rtol=0, atol=0)
            np.testing.assert_array_equal(batch["action_is_pad"][i], item["action_is_pad"].numpy())
            np.testing.assert_array_equal(batch["state"][i], item["observation.state"].numpy())
            assert batch["prompt"][i] == item["task"]
            assert batch["adv_ind"][i] == item["adv_ind"]
            assert batch["value_label"][i] == pytest.approx(float(item["value_label"]))
            theirs = (item["observation.images.cam_high"].numpy().transpose(1, 2, 0) * 255).round()
            diff = np.abs(batch["images"]["cam_high"][i].astype(np.float64) - theirs)
            assert diff.mean() < 2.0, diff.mean()
            seen_pad += int(batch["action_is_pad"][i].any())
    assert seen_pad > 0  # frames near episode ends were checked


def test_epoch_covers_every_frame_once(tiny_dataset_two_tasks: Path) -> None:
    loader = tabular(tiny_dataset_two_tasks, batch_size=5)
    batches = take(loader, loader.steps_per_epoch)
    seen = np.concatenate([b["index"] for b in batches])
    assert len(seen) == len(set(seen.tolist())) == loader.steps_per_epoch * 5
    assert loader.steps_per_epoch == 46 // 5  # 46 frames, drop_last


def test_action_chunk_and_pad_by_hand(tiny_dataset_two_tasks: Path) -> None:
    loader = tabular(tiny_dataset_two_tasks, batch_size=46, action_horizon=5, shuffle=False)
    (batch,) = take(loader, 1)
    f = loader.frames
    row = int(np.flatnonzero((batch["episode_index"] == 2) & (batch["frame_index"] == 6))[0])  # episode 2 has 8 frames
    assert batch["action_is_pad"][row].tolist() == [False, False, True, True, True]
    start = int(f.starts[2])
    expected = f.actions[[start + 6, start + 7, start + 7, start + 7, start + 7]]
    np.testing.assert_array_equal(batch["actions"][row], expected)


def test_shuffle_is_deterministic_by_seed_and_epoch(tiny_dataset_two_tasks: Path) -> None:
    a = [b["index"] for b in take(tabular(tiny_dataset_two_tasks, seed=3), 20)]
    b = [b["index"] for b in take(tabular(tiny_dataset_two_tasks, seed=3), 20)]
    c = [b["index"] for b in take(tabular(tiny_dataset_two_tasks, seed=4), 20)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    loader = tabular(tiny_dataset_two_tasks, seed=3)
    assert not np.array_equal(loader.epoch_order(0), loader.epoch_order(1))


def test_process_shards_are_disjoint_and_equal_length(tiny_dataset_two_tasks: Path) -> None:
    shards = [tabular(tiny_dataset_two_tasks, batch_size=4, process_index=p, process_count=2) for p in (0, 1)]
    assert shards[0].local_batch_size == 2
    assert shards[0].steps_per_epoch == shards[1].steps_per_epoch > 0
    for epoch in (0, 1):
        orders = [s.epoch_order(epoch) for s in shards]
        assert len(orders[0]) == len(orders[1])
        assert not set(orders[0].tolist()) & set(orders[1].tolist())
        # Each process reads whole episodes of its own: no episode is shared between shards.
        eps = [set(s.frames.row_episode[o].tolist()) for s, o in zip(shards, orders, strict=True)]
        assert not eps[0] & eps[1]


def test_data_shards_make_global_batches_independent_of_the_process_layout(tiny_dataset_two_tasks: Path) -> None:
    """data.shards=2: one process serving both shards and two processes serving one each build the
    same global batches (process 0's rows first), each process reading only its shards' episodes; a
    position saved by process 0 resumes both processes, and under either layout."""
    one = tabular(tiny_dataset_two_tasks, batch_size=4, shard_count=2, seed=5)
    two = [tabular(tiny_dataset_two_tasks, batch_size=4, shard_count=2, seed=5, process_index=p, process_count=2)
           for p in (0, 1)]
    assert (one.shards, two[0].shards, two[1].shards) == ((0, 1), (0,), (1,))
    assert one.steps_per_epoch == two[0].steps_per_epoch == two[1].steps_per_epoch > 0
    for epoch in (0, 1):
        joint = np.concatenate([o.epoch_order(epoch).reshape(-1, 2) for o in two], axis=1).reshape(-1)
        assert np.array_equal(one.epoch_order(epoch), joint)
        eps = [set(o.frames.row_episode[o.epoch_order(epoch)].tolist()) for o in two]
        assert eps[0] and eps[1] and not eps[0] & eps[1]
    # Without data.shards, one shard per process: the single-process order is not the two-process one.
    plain = tabular(tiny_dataset_two_tasks, batch_size=4, seed=5)
    assert not np.array_equal(plain.epoch_order(0), one.epoch_order(0))
    take(two[0], 3)
    saved = two[0].state_dict()
    for loader in (two[1], tabular(tiny_dataset_two_tasks, batch_size=4, shard_count=2, seed=5)):
        loader.load_state_dict(saved)
        assert loader.state_dict()["step_in_epoch"] == 3
    with pytest.raises(LoaderStateError, match="shard_count=2"):
        plain.load_state_dict(saved)
    with pytest.raises(RecapError, match=r"data\.shards=3"):
        tabular(tiny_dataset_two_tasks, batch_size=4, shard_count=3, process_count=2)


def test_resume_continues_exactly(tiny_dataset_two_tasks: Path) -> None:
    full = [b["index"] for b in take(tabular(tiny_dataset_two_tasks, seed=7), 15)]
    first = tabular(tiny_dataset_two_tasks, seed=7)
    take(first, 12)  # crosses the epoch boundary (11 steps per epoch)
    state = first.state_dict()
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
    resumed = tabular(tiny_dataset_two_tasks, seed=7)
    resumed.load_state_dict(state)
    rest = [b["index"] for b in take(resumed, 3)]
    assert all(np.array_equal(x, y) for x, y in zip(full[12:], rest, strict=True))


def test_resume_refuses_another_setup(tiny_dataset_two_tasks: Path) -> None:
    state = tabular(tiny_dataset_two_tasks, seed=1).state_dict()
    with pytest.raises(LoaderStateError, match="seed=1"):
        tabular(tiny_dataset_two_tasks, seed=2).load_state_dict(state)


def test_num_epochs_bounds_iteration(tiny_dataset_two_tasks: Path) -> None:
    loader = tabular(tiny_dataset_two_tasks, num_epochs=2)
    assert len(list(loader)) == 2 * loader.steps_per_epoch


def test_episodes_restrict_the_loader(tiny_dataset_two_tasks: Path) -> None:
    """A train/val split: each side yields only its own episodes, every frame of them once."""
    lengths = {0: 12, 1: 16, 2: 8, 3: 10}
    for chosen in ((0, 2, 3), (1,)):
        loader = tabular(tiny_dataset_two_tasks, batch_size=4, episodes=chosen, num_epochs=1)
        batches = list(loader)
        eps = np.concatenate([b["episode_index"] for b in batches])
        assert set(eps.tolist()) == set(chosen)
        frames = sum(lengths[e] for e in chosen)
        assert loader.steps_per_epoch == frames // 4 == len(batches)
        assert loader.state_dict()["num_frames"] == frames and loader.state_dict()["num_episodes"] == len(chosen)
    # Images follow the selection too (only the chosen episode's video is decoded).
    (batch,) = take(TrainLoader(tiny_dataset_two_tasks, LoaderConfig(
        batch_size=8, action_horizon=2, image_size=(16, 16), episodes=(2,), shuffle=False)), 1)
    assert batch["episode_index"].tolist() == [2] * 8 and batch["images"]["cam_high"].shape == (8, 16, 16, 3)


def test_episodes_that_do_not_exist_are_a_clear_error(tiny_dataset_two_tasks: Path) -> None:
    with pytest.raises(DatasetError, match="no episode 7") as err:
        tabular(tiny_dataset_two_tasks, episodes=(1, 7))
    assert err.value.fix
    with pytest.raises(DatasetError, match="no episodes"):
        tabular(tiny_dataset_two_tasks, episodes=())
    with pytest.raises(DatasetError, match=r"8 frames \(in the selected episodes\): too few"):
        tabular(tiny_dataset_two_tasks, batch_size=10, episodes=(2,))


def test_resume_refuses_another_episode_selection(tiny_dataset_two_tasks: Path) -> None:
    state = tabular(tiny_dataset_two_tasks, episodes=(0, 1)).state_dict()
    with pytest.raises(LoaderStateError, match="num_frames=28"):
        tabular(tiny_dataset_two_tasks, episodes=(0, 3)).load_state_dict(state)


def test_image_features_are_decoded_too(tmp_path: Path) -> None:
    from recap_core.data.synthetic import make_dataset

    root = make_dataset(tmp_path / "img", episodes=2, frames=6, cameras=("cam_high",), use_videos=False)
    (batch,) = take(TrainLoader(root, LoaderConfig(batch_size=4, action_horizon=2, image_size=(16, 16))), 1)
    assert batch["images"]["cam_high"].shape == (4, 16, 16, 3) and batch["images"]["cam_high"].max() > 0


def test_unknown_camera_is_a_clear_error(tiny_dataset: Path) -> None:
    with pytest.raises(DatasetError, match="cam_nope") as exc:
        TrainLoader(tiny_dataset, LoaderConfig(batch_size=2, cameras=("cam_nope",)))
    assert "cam_high" in str(exc.value)


def test_missing_column_is_a_clear_error(tiny_dataset: Path) -> None:
    with pytest.raises(DatasetError, match=r"observation\.joints"):
        TrainLoader(tiny_dataset, LoaderConfig(batch_size=2, state_key="observation.joints"))


def test_batch_too_large_and_bad_sharding(tiny_dataset_two_tasks: Path) -> None:
    with pytest.raises(DatasetError, match="too few for one batch"):
        tabular(tiny_dataset_two_tasks, batch_size=1000)
    with pytest.raises(RecapError, match="multiple"):
        tabular(tiny_dataset_two_tasks, batch_size=5, process_count=2, process_index=0)


def test_missing_video_file_fails_when_read(tiny_dataset_two_tasks: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_dataset_two_tasks, tmp_path / "ds"))
    for mp4 in (root / "videos").rglob("*.mp4"):
        mp4.unlink()
    loader = TrainLoader(root, LoaderConfig(batch_size=4, action_horizon=2, image_size=(16, 16)))
    with pytest.raises(DatasetError, match=r"video file .*\.mp4 is missing"):
        take(loader, 1)


def test_resize_with_pad_geometry() -> None:
    assert fitted_size(480, 640, (224, 224)) == (168, 224, 28, 0)
    assert fitted_size(64, 32, (224, 224)) == (224, 112, 0, 56)
    img = np.full((480, 640, 3), 200, np.uint8)
    out = resize_with_pad(img, (224, 224))
    assert out.shape == (224, 224, 3)
    assert out[:28].max() == 0 and out[-28:].max() == 0 and out[28:196].min() == 200


def test_images_follow_their_frame_across_epochs(tiny_dataset_two_tasks: Path) -> None:
    """Two epochs with look-ahead decoding across the boundary: each index gets the same pixels."""
    loader = TrainLoader(
        tiny_dataset_two_tasks,
        LoaderConfig(batch_size=5, action_horizon=2, image_size=(16, 16), num_workers=2, shuffle_episodes=1, num_epochs=2),
    )
    batches = list(loader)
    assert len(batches) == 2 * loader.steps_per_epoch
    pixels: dict[int, np.ndarray] = {}
    for batch in batches:
        for index, image in zip(batch["index"].tolist(), batch["images"]["cam_high"], strict=True):
            if index in pixels:
                np.testing.assert_array_equal(pixels[index], image)
            pixels[index] = image
    assert len({p.tobytes() for p in pixels.values()}) > len(pixels) // 2  # frames differ from each other
    assert loader.state_dict()["epoch"] == 2


def test_a_loader_left_open_exits_the_interpreter_quietly(tiny_dataset: Path) -> None:
    """Abandoning a loader mid-epoch (a script that takes one batch and ends) prints no teardown noise."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import recap_core.train.jobs\n"  # what training imports; it decides the teardown order
        "from recap_core.data.loader import LoaderConfig, TrainLoader\n"
        "it = iter(TrainLoader(sys.argv[1], LoaderConfig(batch_size=2, action_horizon=3, load_images=False)))\n"
        "print(len(next(it)['state']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_dataset)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
