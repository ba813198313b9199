"""The `recap` command itself: help, version, settings provenance, doctor exit codes, error panel."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recap_core import __version__
from tests.conftest import run_recap, run_recap_json
from tests.spm_util import make_sentencepiece


def test_help_lists_commands_and_is_fast():
    proc = run_recap("--help")
    assert proc.returncode == 0
    for name in ("config", "doctor"):
        assert name in proc.stdout
    # `--help` must not import the heavy stack.
    import subprocess
    import sys

    probe = subprocess.run(
        [sys.executable, "-c", "import sys, recap_cli.main; "
         "print(any(m in sys.modules for m in ('jax', 'torch', 'lerobot', 'flax')))"],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == "False"


def test_piped_help_keeps_examples_on_one_line():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    proc = subprocess.run([sys.executable, "-m", "recap_cli.main", "value", "label", "--help"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    example = [line for line in proc.stdout.splitlines() if "Example:" in line]
    assert len(example) == 1 and example[0].rstrip().endswith("--report report/"), proc.stdout


def test_version():
    proc = run_recap("--version")
    # The first line is recap's own version (scripts read it); the stack follows (issue 27).
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == f"recap {__version__}"
    assert "  jax " in proc.stdout and "  orbax-checkpoint " in proc.stdout


def test_config_show_provenance(tmp_path):
    cfg = tmp_path / "recap.toml"
    cfg.write_text('cache_dir = "/tmp/from-file"\nwandb_project = "file-project"\n')
    code, data = run_recap_json("config", "show", "--config", cfg, "--json",
                                env={"RECAP_WANDB_PROJECT": "env-project", "OPENPI_VLM_CKPT_DIR": "/seed/vlm"})
    assert code == 0
    values = data["values"]
    assert values["cache_dir"] == {"value": "/tmp/from-file", "source": "file"}
    assert values["wandb_project"] == {"value": "env-project", "source": "env"}
    assert values["vlm_bundle_dir"] == {"value": "/seed/vlm", "source": "env"}
    assert values["wandb_mode"]["source"] == "default"


def test_recap_env_beats_seed_env():
    code, data = run_recap_json("config", "show", "--json",
                                env={"RECAP_VLM_BUNDLE_DIR": "/ours", "OPENPI_VLM_CKPT_DIR": "/seed"})
    assert code == 0
    assert data["values"]["vlm_bundle_dir"]["value"] == "/ours"


def test_bad_config_file_is_a_red_panel_exit_2(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('vlm_bundel_dir = "/typo"\n')
    proc = run_recap("config", "show", "--config", cfg)
    assert proc.returncode == 2
    assert "unknown setting(s) vlm_bundel_dir" in proc.stderr and "Fix" in proc.stderr
    assert "Traceback" not in proc.stderr
    verbose = run_recap("-v", "config", "show", "--config", cfg)
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr


def test_doctor_json_missing_bundle_fails(tmp_path):
    code, data = run_recap_json("doctor", "--stage", "value-label", "--json",
                                env={"RECAP_VLM_BUNDLE_DIR": str(tmp_path / "none")})
    assert code == 1 and data["ok"] is False
    names = {c["name"]: c for c in data["checks"]}
    for required in ("host_ram", "gpu", "protobuf", "gemma_gm_data", "vlm_bundle"):
        assert required in names
    assert names["vlm_bundle"]["status"] == "fail" and "hf download" in names["vlm_bundle"]["fix"]


def test_doctor_json_good_bundle_passes(tmp_path):
    import orbax.checkpoint as ocp

    root = tmp_path / "vlm"
    ocp.PyTreeCheckpointer().save((root / "gemma-3-270m" / "step_00020000").absolute(),
                                  {"params": {"w": np.zeros((2, 2), np.float32)}})
    (root / "siglip2-so400m-patch14-224-jax").mkdir()
    (root / "siglip2-so400m-patch14-224-jax" / "params.npz").write_bytes(b"x")
    make_sentencepiece(root / "tokenizer.model", 262_144)
    code, data = run_recap_json("doctor", "--stage", "value-label", "--json", env={"RECAP_VLM_BUNDLE_DIR": str(root)})
    statuses = {c["name"]: c["status"] for c in data["checks"]}
    assert statuses["vlm_bundle.gemma3"] == "ok" and statuses["vlm_bundle.tokenizer"] == "ok"
    assert code == 0 and data["counts"]["fail"] == 0
    strict_code, _ = run_recap_json("doctor", "--stage", "value-label", "--json", "--strict",
                                    env={"RECAP_VLM_BUNDLE_DIR": str(root)})
    # On a CPU-only machine the GPU check warns for the real value preset.
    assert strict_code == (1 if data["counts"]["warn"] else 0)


def test_doctor_unknown_stage_exit_2():
    proc = run_recap("doctor", "--stage", "bogus")
    assert proc.returncode == 2 and "unknown stage" in proc.stderr


def test_doctor_dataset_not_lerobot(tmp_path: Path):
    code, data = run_recap_json("doctor", "--stage", "serve", "--dataset", tmp_path, "--json")
    assert code == 1
    ds = next(c for c in data["checks"] if c["name"] == "dataset")
    assert ds["status"] == "fail" and "meta/info.json" in ds["message"]
