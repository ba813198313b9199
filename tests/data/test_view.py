"""`recap data view`: the page's embedded data equals the dataset, the CLI's contract and refusals, and a
headless Chromium run of the page's script (skipped only when Chromium is not installed)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recap_core.data.dataset import open_dataset, read_columns
from recap_core.label.report import spearman
from tests.data.conftest import copy_dataset, tree_digest
from tests.data.test_output_safety import invoke, refused

COLUMNS = ("value_label", "adv_ind", "intervention", "reward")
AUDIT = ("value_pred", "advantage")


@pytest.fixture(scope="module")
def labelled(tiny_dataset_two_tasks: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_dataset_two_tasks labelled per task by the label tests' stand-in critic (no model trained)."""
    from recap_core.label.pipeline import LabelOptions, label_dataset
    from tests.label.conftest import tabular_predictor

    tmp = tmp_path_factory.mktemp("view")
    label_dataset(tiny_dataset_two_tasks, "stand-in", tabular_predictor,
                  LabelOptions(output=tmp / "labelled", cache_dir=tmp / "cache", per_task=True, top_percent=40))
    return tmp / "labelled"


def embedded(page: str, element: str = "recap-data") -> dict:
    match = re.search(rf'<script type="application/json" id="{element}">(.*?)</script>', page, re.S)
    assert match, f"no {element} element"
    return json.loads(match.group(1))


def view(dataset: Path, out: Path, *flags: str) -> dict:
    code, stdout, err = invoke("data", "view", dataset, "-o", out, "--json", *flags)
    assert code == 0, err
    return json.loads(stdout)


def as_float(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def test_page_embeds_the_dataset_columns_exactly(labelled: Path, tmp_path: Path):
    before = tree_digest(labelled)
    result = view(labelled, tmp_path / "page.html", "--stride", "3")
    assert tree_digest(labelled) == before
    page = (tmp_path / "page.html").read_text()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page  # nothing fetched
    doc, images = embedded(page), embedded(page, "recap-images")
    info = open_dataset(labelled)
    cols = read_columns(info, ["task_index", *COLUMNS, *AUDIT])
    record = json.loads((labelled / "meta" / "recap_label.json").read_text())
    assert doc["has_predictions"] and doc["label"] == record
    assert [ep["episode_index"] for ep in doc["episodes"]] == sorted(cols) == [0, 1, 2, 3]
    for ep in doc["episodes"]:
        want = cols[ep["episode_index"]]
        got = ep["columns"]
        assert got["adv_ind"] == list(want["adv_ind"]) and got["intervention"] == want["intervention"].tolist()
        for name in ("value_label", "reward", *AUDIT):
            column = want[name].reshape(-1)
            np.testing.assert_array_equal(as_float(got[name]).astype(column.dtype), column, err_msg=name)
        assert ep["length"] == len(want["value_label"])
        task = int(want["task_index"][0])
        assert ep["task_index"] == task and ep["threshold"] == record["thresholds"][str(task)]
        assert ep["outcome"] == ("success" if want["value_label"][-1] == 0 else "failure")
        assert ep["intervention_share"] == pytest.approx(want["intervention"].mean())
        assert ep["image_frames"] == sorted({*range(0, ep["length"], 3), ep["length"] - 1})
        uris = images[str(ep["episode_index"])]["cam_high"]
        assert len(uris) == len(ep["image_frames"]) and all(u.startswith("data:image/jpeg;base64,") for u in uris)
    from PIL import Image

    shot = Image.open(io.BytesIO(base64.b64decode(uris[0].split(",", 1)[1])))
    assert shot.format == "JPEG" and shot.size == (32, 32)  # the fixture's size (under --image-width)

    s = doc["summary"]
    every = {c: np.concatenate([cols[e][c].reshape(-1) for e in sorted(cols)]) for c in ("task_index", *COLUMNS, *AUDIT)}
    assert s["episodes"] == 4 and s["frames"] == every["value_label"].size == result["frames"]
    for share in s["label_shares"]:
        adv = every["adv_ind"][every["task_index"] == share["task_index"]]
        assert share["frames"] == adv.size
        assert [share[k] for k in ("positive", "negative", "none")] == [np.mean(adv == k) for k in ("positive", "negative", "none")]
    assert s["spearman"] == spearman(every["value_pred"], every["value_label"])
    finite = np.isfinite(every["value_pred"])
    assert sum(b["frames"] for b in s["calibration"]) == s["spearman_frames"] == finite.sum()
    assert result["path"] == str(tmp_path / "page.html") and result["bytes"] == len(page.encode())
    assert (result["episodes_shown"], result["episodes_total"], result["episodes_left_out"]) == (4, 4, 0)
    assert result["stride"] == 3 and result["thresholds"] == record["thresholds"]


def test_unlabelled_dataset_has_no_prediction_tracks(tiny_dataset_two_tasks: Path, tmp_path: Path):
    result = view(tiny_dataset_two_tasks, tmp_path / "page.html", "--max-episodes", "2", "--image-width", "16")
    doc = embedded((tmp_path / "page.html").read_text())
    assert not doc["has_predictions"] and doc["label"] is None
    assert doc["summary"]["spearman"] is None and doc["summary"]["calibration"] is None
    # Two of four episodes, spread evenly: the first and the last.
    assert [ep["episode_index"] for ep in doc["episodes"]] == [0, 3]
    assert (result["episodes_shown"], result["episodes_total"], result["episodes_left_out"]) == (2, 4, 2)
    assert all(set(ep["columns"]) == set(COLUMNS) and ep["threshold"] is None for ep in doc["episodes"])
    images = embedded((tmp_path / "page.html").read_text(), "recap-images")
    from PIL import Image

    uri = images["0"]["cam_high"][0]
    assert Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size == (16, 16)
    code, out, err = invoke("data", "view", tiny_dataset_two_tasks, "-o", tmp_path / "page.html", "--overwrite",
                            "--max-episodes", "3")
    assert code == 0, err
    assert "3 of 4 episodes; 1 left out" in out, out


def test_default_output_is_beside_the_dataset_and_never_overwritten(tiny_dataset_two_tasks: Path, tmp_path: Path):
    ds = copy_dataset(tiny_dataset_two_tasks, tmp_path / "towels")
    before = tree_digest(ds)
    code, out, err = invoke("data", "view", ds, "--json")
    assert code == 0, err
    doc = json.loads(out)
    page = tmp_path / "towels.view.html"
    assert doc["path"] == str(page) and page.stat().st_size == doc["bytes"]
    assert {"episodes_shown", "episodes_total", "frames", "stride"} <= set(doc)
    first = page.read_bytes()
    code, _, err = invoke("data", "view", ds)
    refused(code, err, "already exists", "--overwrite")
    assert page.read_bytes() == first
    code, _, err = invoke("data", "view", ds, "--overwrite", "--stride", "2")
    assert code == 0, err
    assert page.read_bytes() != first and tree_digest(ds) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def _empty(root: Path) -> None:
    for path in (root / "data").rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.slice(0, 0), path)


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing path", ("does not exist",)),
        ("not a dataset", ("is not a LeRobot dataset",)),
        ("no RECAP columns", ("lacks the RECAP column", "recap convert lerobot")),
        ("empty dataset", ("has no frames",)),
        ("output inside the dataset", ("lies inside the input",)),
        ("output is a directory", ("is a directory",)),
        ("unknown camera", ("camera 'cam_nope'",)),
        ("bad stride", ("--stride 0",)),
        ("bad jpeg quality", ("--jpeg-quality 100",)),
        ("bad max episodes", ("--max-episodes 0",)),
    ],
)
def test_bad_input_exits_2_and_leaves_the_input(case: str, words: tuple[str, ...], tiny_dataset_two_tasks: Path,
                                                 tiny_plain_dataset: Path, tmp_path: Path):
    ds = copy_dataset(tiny_dataset_two_tasks, tmp_path / "ds")
    out = tmp_path / "page.html"
    args: list[object] = [ds, "-o", out]
    if case == "missing path":
        args = [tmp_path / "nope", "-o", out]
    elif case == "not a dataset":
        (tmp_path / "folder").mkdir()
        args = [tmp_path / "folder", "-o", out]
    elif case == "no RECAP columns":
        ds = copy_dataset(tiny_plain_dataset, tmp_path / "plain")
        args = [ds, "-o", out]
    elif case == "empty dataset":
        _empty(ds)
    elif case == "output inside the dataset":
        out = ds / "meta" / "page.html"
        args = [ds, "-o", out, "--overwrite"]
    elif case == "output is a directory":
        out = tmp_path / "reports"
        out.mkdir()
        args = [ds, "-o", out, "--overwrite"]
    elif case == "unknown camera":
        args += ["--cameras", "cam_nope"]
    else:
        flag, value = words[0].split()
        args += [flag, value]
    before = tree_digest(ds) if ds.exists() else None
    code, _, err = invoke("data", "view", *args)
    refused(code, err, *words)
    if before is not None:
        assert tree_digest(ds) == before
    assert not out.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- headless Chromium


def dump_dom(page: Path) -> tuple[str, str]:
    """The DOM after the page's script ran, and Chromium's log (console messages appear as CONSOLE lines)."""
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs it with apt-get when run as root)")
    proc = subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def test_page_script_runs_in_chromium_without_errors(labelled: Path, tmp_path: Path):
    page = tmp_path / "page.html"
    view(labelled, page)
    html = page.read_text()
    assert "data-episode=" not in html  # the cards are drawn by the script, so the DOM below proves it ran
    dom, log = dump_dom(page)
    assert [line for line in log.splitlines() if ":CONSOLE" in line] == []
    errors = re.search(r'<div id="errors"[^>]*>(.*?)</div>', dom, re.S)
    assert errors is not None and errors.group(1) == "", errors
    status = re.search(r'<p id="status" data-rendered="(\d+)"', dom)
    assert status is not None and int(status.group(1)) == 4, dom[-500:]
    assert sorted(int(e) for e in re.findall(r'<article class="episode" data-episode="(\d+)"', dom)) == [0, 1, 2, 3]
    assert dom.count('class="tracks"') == 4 and dom.count('class="adv_ind"') >= 4
    doc = embedded(dom)
    with_threshold = [ep for ep in doc["episodes"] if ep["threshold"] is not None
                      and any(v is not None for v in ep["columns"]["advantage"])]
    assert with_threshold and dom.count('class="threshold"') == len(with_threshold)
    assert dom.count('class="calibration-bin"') == len(doc["summary"]["calibration"])
    cols = read_columns(open_dataset(labelled), ["value_pred"])
    for ep in doc["episodes"]:
        np.testing.assert_array_equal(as_float(ep["columns"]["value_pred"]).astype(np.float32),
                                      cols[ep["episode_index"]]["value_pred"].reshape(-1))

    # Without meta/recap_label.json nothing is derived: no threshold line.
    bare = copy_dataset(labelled, tmp_path / "bare")
    (bare / "meta" / "recap_label.json").unlink()
    view(bare, tmp_path / "bare.html")
    dom, log = dump_dom(tmp_path / "bare.html")
    assert [line for line in log.splitlines() if ":CONSOLE" in line] == []
    assert 'data-rendered="4"' in dom and 'class="threshold"' not in dom and 'class="advantage"' in dom
    assert embedded(dom)["label"] is None


def test_image_features_are_shown_like_videos(tmp_path: Path):
    from PIL import Image

    from recap_core.data.synthetic import make_dataset

    ds = make_dataset(tmp_path / "stills", episodes=2, frames=[5, 7], cameras=("cam_high",), image_size=(12, 24),
                      state_dim=2, action_dim=2, use_videos=False)
    result = view(ds, tmp_path / "page.html", "--stride", "4", "--image-width", "16")
    page = (tmp_path / "page.html").read_text()
    doc, images = embedded(page), embedded(page, "recap-images")
    assert [ep["image_frames"] for ep in doc["episodes"]] == [[0, 4], [0, 4, 6]] and result["images"] == 5
    shot = Image.open(io.BytesIO(base64.b64decode(images["1"]["cam_high"][2].split(",", 1)[1])))
    assert shot.size == (16, 8)  # 24 x 12 scaled to 16 wide, aspect kept
