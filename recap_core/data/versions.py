"""LeRobot format versions: v3.0 -> v2.1 (ours) and v2.1 -> v3.0 (lerobot's converter).

openpi (and the seed's Stage 2) reads v2.1: one parquet and one mp4 per episode plus jsonl
metadata. lerobot ships only the v2.1 -> v3.0 direction, so v3.0 -> v2.1 is written here:
- data: each episode's rows of the shared parquet files go to `data/chunk-XXX/episode_NNNNNN.parquet`,
  unchanged (same columns, same values, same schema);
- videos: each episode's span of the shared mp4 is cut out by copying its packets (no re-encoding,
  so frames decode bit-identically; lerobot encodes every episode from a keyframe, so the cut is clean);
- meta: `tasks.jsonl`, `episodes.jsonl`, `episodes_stats.jsonl` (min/max/mean/std/count, the v2.1
  keys), and `info.json` with the v2.1 path templates, `total_chunks` and `total_videos`.
Both directions write a new directory; the input is never touched.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

from recap_core.data.dataset import (
    V21,
    V30,
    ProgressFn,
    data_files,
    open_dataset,
    read_episodes_meta,
    read_parquet,
    read_table,
    video_problems,
)
from recap_core.errors import DatasetError
from recap_core.fsutil import atomic_output_dir, check_output, link_or_copy

V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V21_STATS_KEYS = ("min", "max", "mean", "std", "count")


def _episode_stats(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{feature: {stat: value}} from the `stats/<feature>/<stat>` columns of an episodes row."""
    stats: dict[str, dict[str, Any]] = {}
    for key, value in row.items():
        if not key.startswith("stats/") or value is None:
            continue
        feature, stat = key[len("stats/") :].rsplit("/", 1)
        if stat in V21_STATS_KEYS:
            stats.setdefault(feature, {})[stat] = value
    return stats


def cut_episode_video(src: Path, dst: Path, start_s: float, end_s: float) -> int:
    """Copy the packets of `src` with timestamps in [start_s, end_s) into `dst`, shifted to start at 0."""
    import av

    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _cut(av, src, dst, start_s, end_s)
    except av.error.FFmpegError as exc:  # damage past what the up-front check reads
        raise DatasetError(f"video file {src} cannot be read: {exc}",
                           fix="restore the video file from a backup or re-create the dataset") from None


def _cut(av: Any, src: Path, dst: Path, start_s: float, end_s: float) -> int:
    count = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        stream = inp.streams.video[0]
        tb = stream.time_base
        half_frame = 0.5 / float(stream.average_rate or stream.guessed_rate or 30)
        ostream = out.add_stream_from_template(stream)
        offset = round(start_s / tb)
        inp.seek(max(offset - 1, 0), stream=stream, backward=True, any_frame=False)
        for packet in inp.demux(stream):
            if packet.pts is None:
                continue
            t = float(packet.pts * tb)
            if t < start_s - half_frame:
                continue
            if t >= end_s - half_frame:
                # Later packets in decode order may still belong to the episode (B-frames), but
                # not once we are a whole frame past its end.
                if t >= end_s + half_frame * 4:
                    break
                continue
            packet.pts -= offset
            if packet.dts is not None:
                packet.dts -= offset
            packet.stream = ostream
            out.mux(packet)
            count += 1
    return count


def v30_to_v21(src: Path, out: Path, *, overwrite: bool = False, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Write a LeRobot v2.1 copy of the v3.0 dataset `src` at `out`."""
    import pyarrow.parquet as pq

    check_output(Path(out), overwrite, inputs=(Path(src),))  # fail fast, before reading anything
    info = open_dataset(src, version=V30)
    table = read_table(info)
    for path in data_files(info):  # every file must read before we start writing
        read_parquet(path, ["index"])
    broken = video_problems(info)  # so must every video (first frame and last packets)
    if broken:
        raise DatasetError(f"{broken[0]}" + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""),
                           fix="restore the video file from a backup or re-create the dataset; "
                               "`recap data inspect` lists every unreadable file")
    episodes = read_episodes_meta(info, with_stats=True).to_pylist()
    chunks_size = int(info.info.get("chunks_size", 1000))
    video_template = info.info.get("video_path")
    schema_metadata = pq.read_schema(data_files(info)[0]).metadata
    with atomic_output_dir(out, overwrite, inputs=(Path(src),)) as tmp:
        (tmp / "meta").mkdir()
        episode_lines, stats_lines = [], []
        for i, row in enumerate(episodes):
            ep = int(row["episode_index"])
            chunk = ep // chunks_size
            rows = table.slice(int(row["dataset_from_index"]), int(row["dataset_to_index"]) - int(row["dataset_from_index"]))
            if rows.num_rows != row["length"] or rows.column("episode_index")[0].as_py() != ep:
                raise DatasetError(
                    f"episode {ep} of {info.root}: meta/episodes rows {row['dataset_from_index']}..{row['dataset_to_index']} do not match data/",
                    fix="the dataset is inconsistent; re-create it",
                )
            path = tmp / V21_DATA_PATH.format(episode_chunk=chunk, episode_index=ep)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(rows.replace_schema_metadata(schema_metadata), path)
            for key in info.video_keys:
                video = info.root / video_template.format(
                    video_key=key, chunk_index=row[f"videos/{key}/chunk_index"], file_index=row[f"videos/{key}/file_index"]
                )
                if not video.is_file():
                    raise DatasetError(f"video file {video} (camera {key}, episode {ep}) is missing", fix="restore the videos/ folder")
                dst = tmp / V21_VIDEO_PATH.format(episode_chunk=chunk, video_key=key, episode_index=ep)
                n = cut_episode_video(video, dst, row[f"videos/{key}/from_timestamp"], row[f"videos/{key}/to_timestamp"])
                if n != row["length"]:
                    raise DatasetError(
                        f"{video}: found {n} frames for episode {ep} of camera {key}, expected {row['length']}",
                        fix="the video does not match meta/episodes; re-create the dataset",
                    )
            episode_lines.append({"episode_index": ep, "tasks": list(row["tasks"]), "length": int(row["length"])})
            stats_lines.append({"episode_index": ep, "stats": _episode_stats(row)})
            if progress is not None:
                progress(i + 1, len(episodes))
        _write_jsonl(tmp / "meta" / "episodes.jsonl", episode_lines)
        _write_jsonl(tmp / "meta" / "episodes_stats.jsonl", stats_lines)
        _write_jsonl(tmp / "meta" / "tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(info.tasks)])
        v21_info = {k: v for k, v in info.info.items() if k not in ("data_files_size_in_mb", "video_files_size_in_mb")}
        v21_info.update(
            codebase_version=V21,
            total_chunks=max(1, math.ceil(info.episodes / chunks_size)),
            total_videos=info.episodes * len(info.video_keys),
            data_path=V21_DATA_PATH,
            video_path=V21_VIDEO_PATH if info.video_keys else None,
        )
        (tmp / "meta" / "info.json").write_text(json.dumps(v21_info, indent=4))
        for extra in ("README.md",):
            if (info.root / extra).is_file():
                shutil.copy2(info.root / extra, tmp / extra)
    return {"output": str(out), "version": V21, "episodes": info.episodes, "frames": info.frames, "cameras": list(info.cameras)}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def v21_to_v30(src: Path, out: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write a LeRobot v3.0 copy of the v2.1 dataset `src` at `out` with lerobot's converter.

    The converter works in place on `<root>/<repo_id>`, so it runs on a staged copy inside the
    output's temporary directory: metadata is copied, data and videos are hard links (the
    converter only reads them and writes new concatenated files).
    """
    src = Path(src)
    check_output(Path(out), overwrite, inputs=(src,))
    info = open_dataset(src, version=V21)
    # Slow import: only after the input checks passed.
    from lerobot.datasets.v30.convert_dataset_v21_to_v30 import convert_dataset

    with atomic_output_dir(out, overwrite, inputs=(src,)) as tmp:
        work = tmp / ".work"
        staged = work / "local" / "dataset"
        for path in sorted(src.rglob("*")):
            if path.is_file():
                rel = path.relative_to(src)
                if rel.parts[0] in ("data", "videos"):
                    link_or_copy(path, staged / rel)
                else:
                    (staged / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, staged / rel)
        # The converter prints to stdout; keep stdout for our one JSON document.
        with contextlib.redirect_stdout(sys.stderr):
            try:
                convert_dataset(repo_id="local/dataset", root=work, push_to_hub=False)
            except (KeyError, ValueError, FileNotFoundError) as exc:
                raise DatasetError(
                    f"lerobot's v2.1 -> v3.0 converter failed on {src}: {exc!r}",
                    fix="check that meta/episodes.jsonl, episodes_stats.jsonl and tasks.jsonl are complete",
                ) from exc
        for child in staged.iterdir():
            shutil.move(str(child), str(tmp / child.name))
        shutil.rmtree(work)
        open_dataset(tmp, version=V30)
    return {"output": str(out), "version": V30, "episodes": info.episodes, "frames": info.frames, "cameras": list(info.cameras)}
