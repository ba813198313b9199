"""Bad inputs to `recap convert` and `recap data`: one table of malformed episodes, datasets and flags.

Every case copies a session fixture, breaks one thing (an HDF5 attribute or array with h5py, a parquet
column under data/ with pyarrow, meta/info.json as plain JSON, an mp4 under videos/ by truncation),
runs the command in this process (`invoke`) and checks: exit 2 with one error panel naming the file /
column / key and what was expected, no traceback, the input byte-identical, and no output or temp
directory next to the output path. `recap data inspect` reports bad column values and unreadable
videos as `problems` (exit 0, or 1 with --ready-for), its existing convention; those cases are a
second table. A hypothesis property covers the shared value check, `schema.check_column_values`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recap_core.data import schema
from recap_core.data.convert_aloha import scan_episode
from recap_core.errors import DatasetError
from tests.data.conftest import copy_dataset, tree_digest
from tests.data.test_output_safety import invoke, refused

DATA = Path("data/chunk-000/file-000.parquet")
CAM_HIGH = Path("videos/observation.images.cam_high/chunk-000/file-000.mp4")
# tiny_dataset: 3 episodes x 20 frames, so global row 25 is episode 1, frame 5.
ROW, EPISODE_FRAME = 25, "episode 1, frame 5"


# --------------------------------------------------------------------------- editors


def h5_attr(name: str, value: object, episode: int = 1) -> Callable[[Path], None]:
    def edit(raw: Path) -> None:
        with h5py.File(raw / f"episode_{episode}.hdf5", "a") as f:
            f.attrs[name] = value
    return edit


def h5_drop_attr(name: str, episodes: tuple[int, ...] = (0, 1)) -> Callable[[Path], None]:
    """Delete a root attribute (ACT's recorder writes no `success`)."""
    def edit(raw: Path) -> None:
        for episode in episodes:
            with h5py.File(raw / f"episode_{episode}.hdf5", "a") as f:
                del f.attrs[name]
    return edit


def h5_value(key: str, index: tuple, value: float, episode: int = 1) -> Callable[[Path], None]:
    def edit(raw: Path) -> None:
        with h5py.File(raw / f"episode_{episode}.hdf5", "a") as f:
            f[key][index] = value
    return edit


def h5_new(key: str, frame: int, value: float, dim: int = 14, episode: int = 1) -> Callable[[Path], None]:
    """Add a float dataset (e.g. /observations/effort, /reward) with one bad value at `frame`."""
    def edit(raw: Path) -> None:
        with h5py.File(raw / f"episode_{episode}.hdf5", "a") as f:
            data = np.zeros((f["/action"].shape[0], dim) if dim else f["/action"].shape[0], np.float32)
            data[frame] = value
            f.create_dataset(key, data=data)
    return edit


def cell(column: str, value: object, row: int = ROW, dim: int = 0) -> Callable[[Path], None]:
    """Set one value of a data/ parquet column (vectors: one dim of one row)."""
    def edit(root: Path) -> None:
        path = root / DATA
        table = pq.read_table(path)
        i = table.schema.get_field_index(column)
        field_ = table.schema.field(i)
        if pa.types.is_fixed_size_list(field_.type):
            values = np.asarray(table.column(column).to_pylist(), dtype=np.float32)
            values[row, dim] = value
            array = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), field_.type.value_type), values.shape[1])
        else:
            values = table.column(column).to_pylist()
            values[row] = value
            array = pa.array(values, field_.type)
        pq.write_table(table.set_column(i, field_, array), path)
    return edit


def info_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        path = root / "meta" / "info.json"
        info = json.loads(path.read_text())
        result = change(info)
        path.write_text(json.dumps(info if result is None else result, indent=4))
    return edit


def set_key(key: str, value: object) -> Callable[[Path], None]:
    return info_json(lambda info: info.__setitem__(key, value))


def info_text(text: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        (root / "meta" / "info.json").write_text(text)
    return edit


def truncate(rel: Path, size: int | None = None) -> Callable[[Path], None]:
    """Cut a file to `size` bytes (default: half)."""
    def edit(root: Path) -> None:
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: len(data) // 2 if size is None else size])
    return edit


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    command: str  # aloha | lerobot | merge | stats | inspect
    edit: Callable[[Path], None] | None
    words: tuple[str, ...]  # "<src>" stands for the edited input's path
    extra: tuple[object, ...] = field(default=())


FEATURES_LIST = info_json(lambda info: info.__setitem__("features", list(info["features"])))
PENALTY = "--failure-penalty"

CASES = [
    # convert aloha-hdf5: bool-like `success` attributes are parsed, never cast with bool()
    Case("aloha-success-no", "aloha", h5_attr("success", "no"), ("episode_1.hdf5", "'success'", "'no'", "expected a boolean")),
    Case("aloha-success-str-0", "aloha", h5_attr("success", "0"), ("episode_1.hdf5", "'success'", "'0'", "expected a boolean")),
    Case("aloha-success-bytes-no", "aloha", h5_attr("success", np.bytes_(b"no")), ("episode_1.hdf5", "'success'", "b'no'")),
    Case("aloha-success-empty", "aloha", h5_attr("success", ""), ("episode_1.hdf5", "'success'", "expected a boolean")),
    Case("aloha-success-int-2", "aloha", h5_attr("success", 2), ("episode_1.hdf5", "'success'", "2", "expected a boolean")),
    Case("aloha-success-float", "aloha", h5_attr("success", 0.5), ("episode_1.hdf5", "'success'", "0.5")),
    # convert aloha-hdf5: which episodes succeeded is never guessed (ACT files have no `success` attribute)
    Case("aloha-no-success-attr-no-flag", "aloha", h5_drop_attr("success"),
         ("2 of 2 episode files", "no root attribute 'success'", "episode_0.hdf5, episode_1.hdf5", "--success all|none|reward")),
    Case("aloha-one-success-attr-missing", "aloha", h5_drop_attr("success", (1,)),
         ("1 of 2 episode files", "(episode_1.hdf5)", "--success all|none|reward")),
    Case("aloha-success-attr-flag-missing", "aloha", h5_drop_attr("success", (1,)),
         ("episode_1.hdf5 has no root attribute 'success'", "--success attr", "--success all|none|reward"), ("--success", "attr")),
    Case("aloha-success-reward-no-reward", "aloha", None,
         ("episode_0.hdf5 has no /reward dataset", "--success reward", "2 files lack it"), ("--success", "reward")),
    Case("aloha-reward-not-per-step", "aloha", h5_new("/reward", 0, 4.0, dim=3),
         ("episode_1.hdf5", "/reward", "(12, 3)", "expected 12 numbers"), ("--success", "reward")),
    Case("aloha-success-unknown", "aloha", None, ("--success 'maybe'", "attr, all, none, reward"), ("--success", "maybe")),
    Case("aloha-success-reward-alone", "aloha", None, ("--success-reward 3", "--success reward"), ("--success-reward", "3")),
    # convert aloha-hdf5 --camera SRC=DST
    Case("aloha-camera-unknown", "aloha", None, ("--camera top=cam_high", "no camera 'top'", "cameras found: cam_high, cam_left_wrist"),
         ("--camera", "top=cam_high")),
    Case("aloha-camera-same-target", "aloha", None, ("cameras cam_high, cam_left_wrist", "'front'"),
         ("--camera", "cam_high=front", "--camera", "cam_left_wrist=front")),
    Case("aloha-camera-onto-kept", "aloha", None, ("cameras cam_high, cam_left_wrist", "'cam_high'"),
         ("--camera", "cam_left_wrist=cam_high")),
    Case("aloha-camera-twice", "aloha", None, ("--camera renames 'cam_high' twice",),
         ("--camera", "cam_high=top", "--camera", "cam_high=front")),
    Case("aloha-camera-no-equals", "aloha", None, ("--camera 'cam_high'", "SRC=DST"), ("--camera", "cam_high")),
    # convert aloha-hdf5: NaN/inf in ANY float array, named by key and first bad frame
    Case("aloha-nan-qpos", "aloha", h5_value("/observations/qpos", (5, 2), np.nan),
         ("episode_1.hdf5", "/observations/qpos", "NaN/inf", "frame 5, dim 2", "expected finite numbers")),
    Case("aloha-inf-qvel", "aloha", h5_value("/observations/qvel", (7, 0), np.inf),
         ("episode_1.hdf5", "/observations/qvel", "NaN/inf", "frame 7")),
    Case("aloha-nan-effort", "aloha", h5_new("/observations/effort", 3, np.nan),
         ("episode_1.hdf5", "/observations/effort", "NaN/inf", "frame 3")),
    Case("aloha-neg-inf-action", "aloha", h5_value("/action", (0, 13), -np.inf, episode=0),
         ("episode_0.hdf5", "/action", "NaN/inf", "frame 0, dim 13")),
    Case("aloha-nan-reward", "aloha", h5_new("/reward", 11, np.nan, dim=0),
         ("episode_1.hdf5", "/reward", "NaN/inf", "frame 11")),
    # convert aloha-hdf5: an empty task attribute (it overrides --task) is refused like --task ""
    Case("aloha-task-empty", "aloha", h5_attr("task", ""), ("episode_1.hdf5", "'task'", "is empty", "overrides --task")),
    Case("aloha-task-blank", "aloha", h5_attr("task", "  \t "), ("episode_1.hdf5", "'task'", "is empty")),
    Case("aloha-task-empty-bytes", "aloha", h5_attr("task", b"", episode=0), ("episode_0.hdf5", "'task'", "is empty")),
    # non-finite numeric flags
    Case("aloha-penalty-nan", "aloha", None, (PENALTY, "nan", "not a finite number"), (PENALTY, "nan")),
    Case("aloha-penalty-inf", "aloha", None, (PENALTY, "inf", "not a finite number"), (PENALTY, "inf")),
    Case("lerobot-penalty-nan", "lerobot", None, (PENALTY, "nan", "not a finite number"), (PENALTY, "nan")),
    Case("lerobot-penalty-inf", "lerobot", None, (PENALTY, "inf", "not a finite number"), (PENALTY, "inf")),
    # malformed meta/info.json of a convert lerobot input
    Case("lerobot-info-features-list", "lerobot", FEATURES_LIST, ("<src>/meta/info.json", "'features'", "list", "expected an object")),
    Case("lerobot-info-fps-string", "lerobot", set_key("fps", "fast"), ("<src>/meta/info.json", "'fps'", "'fast'", "positive whole number")),
    # data merge: the RECAP columns of every source are checked, naming dataset, column, episode and frame
    Case("merge-value-label-5", "merge", cell("value_label", 5.0), ("<src>", "'value_label'", "[-1, 0]", EPISODE_FRAME)),
    Case("merge-value-label-nan", "merge", cell("value_label", float("nan")), ("<src>", "'value_label'", "NaN/inf", EPISODE_FRAME)),
    Case("merge-intervention-7", "merge", cell("intervention", 7), ("<src>", "'intervention'", "[7]", "0 or 1", EPISODE_FRAME)),
    Case("merge-intervention-neg", "merge", cell("intervention", -1, row=2), ("<src>", "'intervention'", "[-1]", "episode 0, frame 2")),
    Case("merge-adv-ind-unknown", "merge", cell("adv_ind", "maybe"), ("<src>", "'adv_ind'", "'maybe'", EPISODE_FRAME, "'positive'")),
    Case("merge-reward-nan", "merge", cell("reward", float("nan"), row=59), ("<src>", "'reward'", "NaN/inf", "episode 2, frame 19", "expected finite numbers")),
    Case("merge-reward-label-inf", "merge", cell("reward_label", float("inf")), ("<src>", "'reward_label'", "NaN/inf", EPISODE_FRAME)),
    Case("merge-state-nan", "merge", cell("observation.state", float("nan"), dim=3), ("<src>", "'observation.state'", "NaN/inf", EPISODE_FRAME)),
    Case("merge-info-features-list", "merge", FEATURES_LIST, ("<src>/meta/info.json", "'features'", "expected an object")),
    Case("merge-info-fps-string", "merge", set_key("fps", "10"), ("<src>/meta/info.json", "'fps'", "'10'", "(str)")),
    Case("merge-info-not-json", "merge", info_text("fps: 10\n"), ("<src>/meta/info.json", "not valid JSON")),
    Case("merge-video-truncated", "merge", truncate(CAM_HIGH), ("<src>/" + str(CAM_HIGH), "truncated")),
    Case("merge-video-garbage", "merge", truncate(CAM_HIGH, 1000), ("<src>/" + str(CAM_HIGH), "cannot be decoded")),
    Case("v21-video-garbage", "v21", truncate(CAM_HIGH, 1000), ("<src>/" + str(CAM_HIGH), "cannot be decoded")),
    # data stats
    Case("stats-state-nan", "stats", cell("observation.state", float("nan"), dim=4), ("<src>", "'observation.state'", "NaN/inf", EPISODE_FRAME, "dim 4", "expected finite numbers")),
    Case("stats-action-inf", "stats", cell("action", float("-inf"), row=47, dim=1), ("'action'", "NaN/inf", "episode 2, frame 7")),
    Case("stats-info-features-list", "stats", FEATURES_LIST, ("<src>/meta/info.json", "'features'", "expected an object")),
    Case("stats-info-fps-string", "stats", set_key("fps", "ten"), ("<src>/meta/info.json", "'fps'", "'ten'")),
    Case("stats-info-top-level-list", "stats", info_text("[1, 2]"), ("<src>/meta/info.json", "JSON list", "expected an object")),
    Case("stats-info-feature-not-object", "stats", info_json(lambda i: i["features"].__setitem__("action", 14)),
         ("<src>/meta/info.json", "'features.action'", "14")),
    Case("stats-info-shape-string", "stats", info_json(lambda i: i["features"]["observation.state"].__setitem__("shape", "14")),
         ("<src>/meta/info.json", "'features.observation.state.shape'", "list of non-negative integers")),
    Case("stats-delta-other-columns", "stats", None, ("delta actions are taken from the columns observation.state and action", "observation.velocity", "--action-column"),
         ("--delta-actions", "--action-column", "observation.velocity")),
    Case("stats-horizon-without-delta", "stats", None, ("--action-horizon", "add --delta-actions"), ("--action-horizon", "8")),
    # data inspect: a dataset whose metadata cannot be read is an error, as for every command
    Case("inspect-info-features-list", "inspect", FEATURES_LIST, ("<src>/meta/info.json", "'features'", "expected an object")),
    Case("inspect-info-fps-string", "inspect", set_key("fps", "30"), ("<src>/meta/info.json", "'fps'", "'30'")),
    Case("inspect-info-not-json", "inspect", info_text("\x00garbage"), ("<src>/meta/info.json", "not valid JSON")),
    Case("inspect-info-total-frames", "inspect", set_key("total_frames", "many"), ("<src>/meta/info.json", "'total_frames'", "'many'")),
]


@pytest.fixture
def inputs(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], tuple[list[Path], Path]]:
    """For a command: (its input copies, the one to edit) under tmp_path/in; fixtures built lazily."""
    def make(command: str) -> tuple[list[Path], Path]:
        base = tmp_path / "in"
        if command == "aloha":
            raw = copy_dataset(request.getfixturevalue("tiny_aloha_raw"), base / "raw")
            return [raw], raw
        if command == "lerobot":
            src = copy_dataset(request.getfixturevalue("tiny_plain_dataset"), base / "src")
            return [src], src
        tiny = request.getfixturevalue("tiny_dataset")
        if command == "merge":
            a, b = copy_dataset(tiny, base / "a"), copy_dataset(tiny, base / "b")
            return [a, b], b
        ds = copy_dataset(tiny, base / "ds")
        return [ds], ds
    return make


def _args(case: Case, sources: list[Path], out: Path) -> tuple[object, ...]:
    if case.command == "aloha":
        return ("convert", "aloha-hdf5", sources[0], out, "--fps", 50, "--task", "move the cube", *case.extra)
    if case.command == "lerobot":
        return ("convert", "lerobot", sources[0], out, *case.extra)
    if case.command == "merge":
        return ("data", "merge", *sources, "--output", out, *case.extra)
    if case.command == "stats":
        return ("data", "stats", sources[0], "--output", out, *case.extra)
    if case.command == "v21":
        return ("convert", "v30-to-v21", sources[0], out, *case.extra)
    return ("data", "inspect", sources[0], *case.extra)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_panel_and_touches_nothing(case: Case, inputs, tmp_path: Path) -> None:
    sources, edited = inputs(case.command)
    if case.edit is not None:
        case.edit(edited)
    before = [tree_digest(s) for s in sources]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / ("norm_stats.json" if case.command == "stats" else "ds")
    code, stdout, err = invoke(*_args(case, sources, out))
    refused(code, err, *(w.replace("<src>", str(edited)) for w in case.words))
    assert stdout == ""
    assert [tree_digest(s) for s in sources] == before, "the input changed"
    assert list(out_dir.iterdir()) == [], "an output or temp was left next to the output path"


def test_the_table_is_wide_enough() -> None:
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
    assert {c.command for c in CASES} == {"aloha", "lerobot", "merge", "stats", "inspect", "v21"}


# --------------------------------------------------------------------------- data inspect's convention


INSPECT_CASES = [
    pytest.param(truncate(CAM_HIGH), ("video file <src>/" + str(CAM_HIGH), "truncated"), id="video-truncated-half"),
    pytest.param(truncate(CAM_HIGH, 1000), ("video file <src>/" + str(CAM_HIGH), "cannot be decoded"), id="video-garbage"),
    pytest.param(truncate(CAM_HIGH, 0), ("video file <src>/" + str(CAM_HIGH), "cannot be decoded"), id="video-empty"),
    pytest.param(cell("intervention", 7), ("'intervention'", "[7]", EPISODE_FRAME), id="intervention-7"),
    pytest.param(cell("reward", float("inf")), ("'reward'", "NaN/inf", EPISODE_FRAME), id="reward-inf"),
    pytest.param(cell("value_label", float("nan")), ("'value_label'", "NaN/inf", EPISODE_FRAME), id="value-label-nan"),
]


@pytest.mark.parametrize(("edit", "words"), INSPECT_CASES)
def test_inspect_reports_bad_values_and_unreadable_videos(edit, words: tuple[str, ...], inputs) -> None:
    """`data inspect` lists problems and calls the dataset not ready (exit 0; exit 1 with --ready-for)."""
    (ds,), _ = inputs("inspect")
    edit(ds)
    before = tree_digest(ds)
    words = tuple(w.replace("<src>", str(ds)) for w in words)
    code, stdout, err = invoke("data", "inspect", ds, "--json", "--ready-for", "sft")
    assert code == 1 and "Traceback" not in err, err
    report = json.loads(stdout)
    problems = " ".join(report["problems"])
    assert all(w in problems for w in words), (words, report["problems"])
    assert not any(stage["ready"] for stage in report["ready"].values()), report["ready"]
    assert "fails validation" in report["ready"]["sft"]["why"]
    code, _, err = invoke("data", "inspect", ds)  # the human report: the problem on stderr, exit 0
    flat = " ".join(err.split())
    assert code == 0 and "problem:" in flat and all(w in flat for w in words), err
    assert tree_digest(ds) == before


def test_inspect_lists_every_unreadable_video(inputs) -> None:
    (ds,), _ = inputs("inspect")
    for cam in ("cam_high", "cam_left_wrist"):
        truncate(Path(f"videos/observation.images.{cam}/chunk-000/file-000.mp4"), 500)(ds)
    code, stdout, _ = invoke("data", "inspect", ds, "--json")
    assert code == 0
    problems = json.loads(stdout)["problems"]
    assert [p for p in problems if "cam_high" in p] and [p for p in problems if "cam_left_wrist" in p], problems


# --------------------------------------------------------------------------- accepted spellings


@pytest.mark.parametrize(("value", "expected"), [
    (True, True), (False, False), (np.bool_(False), False), (1, True), (0, False), (np.int64(0), False),
    ("true", True), ("False", False), ("FALSE", False), (b"False", False), (np.bytes_(b"False"), False),
    (np.bytes_(b"TRUE"), True), (" true ", True), (np.array([b"false"]), False), (np.array([True]), True),
])
def test_success_attribute_is_parsed_explicitly(value: object, expected: bool, tiny_aloha_raw: Path, tmp_path: Path) -> None:
    raw = copy_dataset(tiny_aloha_raw, tmp_path / "raw")
    h5_attr("success", value, episode=0)(raw)
    assert scan_episode(raw / "episode_0.hdf5", "t").success is expected


def test_string_false_converts_as_a_failed_episode(tiny_aloha_raw: Path, tmp_path: Path) -> None:
    raw = copy_dataset(tiny_aloha_raw, tmp_path / "raw")
    h5_attr("success", np.bytes_(b"False"), episode=0)(raw)  # bool(b"False") is True: the old reading
    h5_attr("success", "True", episode=1)(raw)
    h5_attr("task", "stack the cups", episode=1)(raw)
    code, stdout, err = invoke("convert", "aloha-hdf5", raw, tmp_path / "ds", "--fps", 50, "--task", "move the cube", "--json")
    assert code == 0, err
    assert json.loads(stdout)["tasks"] == ["move the cube", "stack the cups"]
    from recap_core.data.dataset import column_array, open_dataset, read_table

    table = read_table(open_dataset(tmp_path / "ds"), ["frame_index", "reward"])
    success = schema.episode_success(column_array(table, "episode_index"), column_array(table, "frame_index"),
                                     column_array(table, "reward"))
    assert success == {0: False, 1: True}


# --------------------------------------------------------------------------- the shared value check


@st.composite
def clean_columns(draw) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    lengths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))
    episode = np.repeat(np.arange(len(lengths)), lengths)
    frame = np.concatenate([np.arange(n) for n in lengths])
    n = len(episode)
    finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)

    def floats(strategy, shape) -> np.ndarray:
        return np.asarray(draw(st.lists(strategy, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                          np.float32).reshape(shape)

    columns = {
        schema.INTERVENTION: np.asarray(draw(st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n)), np.int64),
        schema.REWARD: floats(finite, (n,)),
        schema.REWARD_LABEL: floats(finite, (n,)),
        schema.VALUE_LABEL: floats(st.floats(-1.0, 0.0, width=32), (n,)),
        schema.ADV_IND: np.asarray(draw(st.lists(st.sampled_from(schema.ADV_VALUES), min_size=n, max_size=n)), object),
        "observation.state": floats(finite, (n, 3)),
    }
    return columns, episode, frame


BAD_VALUES = {
    schema.INTERVENTION: st.sampled_from([2, -1, 7, 0.5, float("nan")]),
    schema.REWARD: st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    schema.REWARD_LABEL: st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    schema.VALUE_LABEL: st.one_of(st.floats(1e-3, 1e6), st.floats(-1e6, -1.001), st.sampled_from([float("nan"), float("inf")])),
    schema.ADV_IND: st.one_of(st.text(max_size=8).filter(lambda s: s not in schema.ADV_VALUES), st.none()),
    "observation.state": st.sampled_from([float("nan"), float("inf"), float("-inf")]),
}


@settings(max_examples=150, deadline=None)
@given(data=clean_columns(), column=st.sampled_from(sorted(BAD_VALUES)), where=st.data())
def test_injected_bad_values_are_always_refused(data, column: str, where) -> None:
    columns, episode, frame = data
    row = where.draw(st.integers(0, len(episode) - 1))
    value = where.draw(BAD_VALUES[column])
    bad = dict(columns)
    array = columns[column].astype({schema.ADV_IND: object, schema.INTERVENTION: np.float64}.get(column, np.float32))
    if array.ndim == 2:
        array[row, where.draw(st.integers(0, array.shape[1] - 1))] = value
    else:
        array[row] = value
    bad[column] = array
    with pytest.raises(DatasetError) as exc:
        schema.check_column_values(bad, episode, frame, where="DS")
    message = exc.value.message
    assert message.startswith("DS: ") and repr(column) in message, message
    assert f"episode {episode[row]}, frame {frame[row]}" in message, message
    assert exc.value.fix


@settings(max_examples=100, deadline=None)
@given(data=clean_columns())
def test_clean_values_always_pass(data) -> None:
    columns, episode, frame = data
    schema.check_column_values(columns, episode, frame, where="DS")
    schema.check_column_values({k: v.reshape(-1, 1) for k, v in columns.items() if k != "observation.state"}, episode, frame,
                               where="DS")  # shape-(1,) features read as [N, 1]
