"""Norm stats: against direct numpy, openpi's file layout both ways, (un)normalise formulas, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recap_core.data.stats import (
    NormStats,
    NormStatsError,
    compute_norm_stats,
    load_norm_stats,
    normalize,
    run_norm_stats,
    save_norm_stats,
    unnormalize,
)
from recap_core.errors import ConfigError, DatasetError


def _parquet_matrix(root: Path, column: str) -> np.ndarray:
    files = sorted((root / "data").rglob("*.parquet"))
    rows = [np.asarray(v, dtype=np.float64) for f in files for v in pq.read_table(f, columns=[column])[column].to_pylist()]
    return np.stack(rows)


def test_stats_match_direct_numpy(tiny_dataset_two_tasks: Path) -> None:
    stats = compute_norm_stats(tiny_dataset_two_tasks)
    for key, column, dim in (("state", "observation.state", 6), ("actions", "action", 7)):
        x = _parquet_matrix(tiny_dataset_two_tasks, column)
        assert x.shape == (46, dim)
        np.testing.assert_allclose(stats[key].mean, x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats[key].std, x.std(0), rtol=1e-12)
        np.testing.assert_allclose(stats[key].q01, np.quantile(x, 0.01, axis=0), rtol=1e-12)
        np.testing.assert_allclose(stats[key].q99, np.quantile(x, 0.99, axis=0), rtol=1e-12)
        assert (stats[key].q01 < stats[key].q99).all()


def test_written_file_has_openpi_layout_and_round_trips(tiny_dataset_two_tasks: Path, tmp_path: Path) -> None:
    stats = compute_norm_stats(tiny_dataset_two_tasks)
    path = save_norm_stats(tmp_path / "assets", stats)
    assert path == tmp_path / "assets" / "norm_stats.json"
    doc = json.loads(path.read_text())
    assert list(doc) == ["norm_stats"]
    assert set(doc["norm_stats"]) == {"state", "actions"}
    for entry in doc["norm_stats"].values():
        assert list(entry) == ["mean", "std", "q01", "q99"]
        assert all(isinstance(v, float) for values in entry.values() for v in values)
    again = load_norm_stats(path)
    for key in stats:
        for name in ("mean", "std", "q01", "q99"):
            np.testing.assert_array_equal(getattr(again[key], name), getattr(stats[key], name))


def test_reads_a_file_written_by_openpi(tmp_path: Path) -> None:
    # What openpi's `normalize.save` writes (pydantic model_dump, indent 2), including a z-score-only key.
    doc = {
        "norm_stats": {
            "state": {"mean": [0.5, -1.0], "std": [2.0, 0.25], "q01": [-3.0, -1.5], "q99": [4.0, -0.5]},
            "actions": {"mean": [1.0], "std": [3.0], "q01": None, "q99": None},
        }
    }
    (tmp_path / "norm_stats.json").write_text(json.dumps(doc, indent=2))
    stats = load_norm_stats(tmp_path)
    np.testing.assert_array_equal(stats["state"].q99, [4.0, -0.5])
    assert stats["actions"].q01 is None and stats["actions"].std.tolist() == [3.0]


def test_quantile_and_zscore_formulas() -> None:
    s = NormStats(mean=np.array([1.0, 2.0]), std=np.array([2.0, 4.0]), q01=np.array([-1.0, 0.0]), q99=np.array([1.0, 10.0]))
    x = np.array([[0.0, 5.0], [1.0, 10.0]], dtype=np.float32)
    q = normalize(x, s, use_quantiles=True)
    np.testing.assert_allclose(q, [[0.0, 0.0], [1.0, 1.0]], atol=1e-5)
    np.testing.assert_allclose(normalize(np.array([2.0]), s, use_quantiles=True), [(2.0 + 1) / (2 + 1e-6) * 2 - 1], rtol=1e-6)
    z = normalize(x, s, use_quantiles=False)
    np.testing.assert_allclose(z, [[-0.5, 0.75], [0.0, 2.0]], atol=1e-5)
    assert q.dtype == np.float32
    for use_quantiles in (True, False):
        back = unnormalize(normalize(x, s, use_quantiles=use_quantiles), s, use_quantiles=use_quantiles)
        np.testing.assert_allclose(back, x, atol=1e-5)


def test_extra_dims_pass_through_and_fewer_dims_slice() -> None:
    s = NormStats(mean=np.array([1.0, 2.0]), std=np.array([2.0, 4.0]), q01=np.array([-1.0, 0.0]), q99=np.array([1.0, 10.0]))
    padded = np.array([0.0, 5.0, 7.0, -7.0], dtype=np.float32)  # a model padding 2 dims to 4
    out = normalize(padded, s, use_quantiles=True)
    np.testing.assert_allclose(out, [0.0, 0.0, 7.0, -7.0], atol=1e-5)
    np.testing.assert_allclose(unnormalize(out, s, use_quantiles=False)[2:], [7.0, -7.0])
    np.testing.assert_allclose(normalize(np.array([3.0]), s, use_quantiles=False), [1.0], atol=1e-5)


def test_works_on_jax_arrays() -> None:
    import jax
    import jax.numpy as jnp

    s = NormStats(mean=np.zeros(2), std=np.ones(2), q01=np.array([-1.0, -2.0]), q99=np.array([1.0, 2.0]))
    x = jnp.array([[0.5, 1.0, 9.0]], dtype=jnp.float32)
    out = jax.jit(lambda v: normalize(v, s, use_quantiles=True))(x)
    assert isinstance(out, jax.Array)
    np.testing.assert_allclose(np.asarray(out), [[0.5, 0.5, 9.0]], atol=1e-5)


def test_quantile_norm_without_quantiles_is_an_error() -> None:
    s = NormStats(mean=np.zeros(2), std=np.ones(2))
    with pytest.raises(NormStatsError, match="q01/q99"):
        normalize(np.zeros(2), s, use_quantiles=True)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"state": {}}', 'no top-level "norm_stats"'),
        ('{"norm_stats": {"state": {"std": [1.0]}}}', "norm_stats.state .* has no 'mean'"),
        ('{"norm_stats": {"state": {"mean": [1.0, 2.0], "std": [1.0]}}}', "different lengths"),
        ('{"norm_stats": {"state": {"mean": ["a"], "std": [1.0]}}}', "not a list of numbers"),
        ('{"norm_stats": {"state": {"mean": [1.0], "std": [1.0], "q01": [0.0]}}}', "only one of q01/q99"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "norm_stats.json"
    path.write_text(content)
    with pytest.raises(NormStatsError, match=match) as exc:
        load_norm_stats(path)
    assert str(path) in exc.value.message and exc.value.fix


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NormStatsError, match="does not exist") as exc:
        load_norm_stats(tmp_path / "nope.json")
    assert "recap data stats" in exc.value.fix


def test_nan_in_dataset_is_named(tiny_dataset_two_tasks: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_dataset_two_tasks, tmp_path / "ds"))
    path = next((root / "data").rglob("*.parquet"))
    table = pq.read_table(path)
    state = np.stack(table["observation.state"].to_numpy(zero_copy_only=False)).astype(np.float32)
    state[3, 2] = np.nan
    column = pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), state.shape[1])
    table = table.set_column(table.schema.get_field_index("observation.state"), "observation.state", column)
    pq.write_table(table, path)
    with pytest.raises(DatasetError, match=r"'observation\.state'.*NaN/inf.*row 3, dim 2"):
        compute_norm_stats(root)


def test_v21_dataset_gives_the_same_stats(tiny_dataset_two_tasks: Path, tmp_path: Path) -> None:
    from recap_core.data.versions import v30_to_v21

    v21 = tmp_path / "v21"
    v30_to_v21(tiny_dataset_two_tasks, v21)
    ours, theirs = compute_norm_stats(tiny_dataset_two_tasks), compute_norm_stats(v21)
    for key in ours:
        np.testing.assert_allclose(theirs[key].q99, ours[key].q99, rtol=1e-12)
        np.testing.assert_allclose(theirs[key].mean, ours[key].mean, rtol=1e-12)


def test_run_norm_stats_say_their_convention(tiny_dataset: Path, tiny_dataset_two_tasks: Path) -> None:
    # tiny_dataset: 14-D state and actions named q0.. / a0..: no gripper, so every dim is a delta.
    absolute, convention = run_norm_stats(tiny_dataset, horizon=5)
    assert convention == {"actions": "absolute", "delta_mask": None, "action_horizon": None}
    np.testing.assert_array_equal(absolute["actions"].q99, compute_norm_stats(tiny_dataset)["actions"].q99)
    delta, convention = run_norm_stats(tiny_dataset, delta_actions=True, horizon=5)
    assert convention == {"actions": "delta", "delta_mask": [True] * 14, "action_horizon": 5}
    want = compute_norm_stats(tiny_dataset, delta_mask=[True] * 14, horizon=5)
    for name in ("mean", "std", "q01", "q99"):
        np.testing.assert_array_equal(getattr(delta["actions"], name), getattr(want["actions"], name))
    np.testing.assert_array_equal(delta["state"].mean, absolute["state"].mean)  # state is never a delta
    assert not np.allclose(delta["actions"].mean, absolute["actions"].mean)
    with pytest.raises(ConfigError, match="beyond the state's 6 dims"):  # 7-D actions, 6-D state
        run_norm_stats(tiny_dataset_two_tasks, delta_actions=True, horizon=5)
