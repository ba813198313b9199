"""`meta/recap_source.json`: how a converter decided what it could not read off the data.

Both converters (`convert_aloha`, `convert_lerobot`) write it into the dataset they create, and
`recap data inspect` shows it, so whoever trains on a dataset can see which rule made an episode
"successful" (the `reward` column is derived from it) and which cameras were renamed. Layout
(keys absent when they do not apply):

    converter            str      "aloha-hdf5" | "lerobot"
    success_rule         str      aloha-hdf5: "attr" | "all" | "none" | "reward";
                                  lerobot: "all" | "column" | "file"
    success_from         str      lerobot: the column or file name the rule read
    success_reward       float    aloha-hdf5 --success reward: success = max(/reward) >= this
    successful_episodes  int
    failed_episodes      int
    cameras              {str: str}   source camera -> the dataset's camera, where renamed

A copy with other labels (`recap value label`) keeps it (the success labels are the same); a merge
writes a new dataset without one (its sources may have used different rules).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recap_core.data.dataset import meta_record_bytes, read_meta_record

SOURCE_RECORD = Path("meta/recap_source.json")


def success_counts(successes: Sequence[bool]) -> dict[str, int]:
    """The record's (and the converters' summaries') episode counts."""
    won = sum(bool(s) for s in successes)
    return {"successful_episodes": won, "failed_episodes": len(successes) - won}


def write_source_record(root: Path, record: dict[str, Any]) -> Path:
    """Write `record` as `root/meta/recap_source.json` (root: a converter's output before its rename)."""
    path = Path(root) / SOURCE_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(meta_record_bytes(record))
    return path


def read_source_record(root: Path) -> dict[str, Any] | None:
    """The dataset's `meta/recap_source.json`; None when it has none (not made by a recap converter)."""
    return read_meta_record(root, SOURCE_RECORD, key="success_rule", kind=str, writer="recap convert",
                            fix="delete it (the dataset then shows no conversion record) or convert the raw episodes again")
