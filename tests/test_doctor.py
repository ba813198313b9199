"""Every doctor check, driven by small real fixtures (bundle dirs, orbax checkpoints, sentencepiece)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from recap_core import doctor
from recap_core.doctor import GIB, MemInfo
from recap_core.errors import PreflightError
from recap_core.settings import Settings
from tests.spm_util import make_sentencepiece


def _orbax_save(path: Path, tree: dict) -> None:
    import orbax.checkpoint as ocp

    ocp.PyTreeCheckpointer().save(path.absolute(), tree)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vlm_ckpt")
    _orbax_save(root / "gemma-3-270m" / "step_00020000",
                {"params": {"embedder": {"input_embedding": np.ones((8, 4), np.float32)}}})
    (root / "siglip2-so400m-patch14-224-jax").mkdir()
    (root / "siglip2-so400m-patch14-224-jax" / "params.npz").write_bytes(b"x")
    make_sentencepiece(root / "tokenizer.model", doctor.GEMMA3_VOCAB)
    return root


def _status(results, name):
    return next(r for r in results if r.name == name).status


def test_host_ram_thresholds():
    plenty = MemInfo(64 * GIB, 60 * GIB)
    assert doctor.check_host_ram("value-train", "value", plenty).status == "ok"
    busy = MemInfo(30 * GIB, 5 * GIB)
    res = doctor.check_host_ram("value-train", "value", busy)
    assert res.status == "warn" and "close other programs" in res.fix
    small = MemInfo(6 * GIB, 6 * GIB)
    res = doctor.check_host_ram("sft", "pi05", small)
    assert res.status == "fail" and res.details["required_gib"] == 16.0
    assert doctor.check_host_ram("sft", "pi05-tiny", small).status == "ok"


def test_gpu_cpu_only_warns_for_real_presets():
    cpu = [SimpleNamespace(platform="cpu", device_kind="cpu")]
    assert doctor.check_gpu("sft", "pi05", cpu).status == "warn"
    assert doctor.check_gpu("sft", "pi05-tiny", cpu).status == "ok"


def _gpu(cc: str):
    return SimpleNamespace(platform="gpu", device_kind="NVIDIA GeForce RTX 5090", compute_capability=cc,
                           memory_stats=lambda: {"bytes_limit": 32 * GIB})


def test_gpu_arch_without_compiled_kernels_warns(monkeypatch):
    monkeypatch.setattr(doctor, "_jaxlib_version", lambda: (0, 5, 3))
    res = doctor.check_gpu("value-train", "value", [_gpu("12.0")])
    assert res.status == "warn" and "sm_120" in res.message and "PTX" in res.message
    assert doctor.check_gpu("value-train", "value", [_gpu("9.0")]).status == "ok"
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    res = doctor.check_gpu("value-train", "value", [_gpu("8.0")])
    assert res.details["xla_env"] == {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9"}
    assert res.details["devices"][0]["memory_gib"] == 32.0


def test_protobuf_conflicts():
    ok = doctor.check_protobuf({"protobuf": "6.33.6", "tensorflow": None, "wandb": "0.24.2"}, wandb_key="")
    assert ok.status == "ok"
    tf = doctor.check_protobuf({"protobuf": "5.29.0", "tensorflow": "2.18.0", "wandb": None}, wandb_key="")
    assert tf.status == "warn" and "GetPrototype" in tf.message
    old_tf = doctor.check_protobuf({"protobuf": "4.25.8", "tensorflow": "2.15.0", "wandb": None}, wandb_key="")
    assert old_tf.status == "ok"
    key = "wandb_v1_" + "x" * 77
    wb = doctor.check_protobuf({"protobuf": "4.25.8", "tensorflow": None, "wandb": "0.19.1"}, wandb_key=key)
    assert wb.status == "warn" and "wandb_v1_" in wb.message
    assert doctor.check_protobuf({"protobuf": "6.0", "tensorflow": None, "wandb": "0.27.0"}, wandb_key=key).status == "ok"


def test_gemma_gm_data_not_needed():
    res = doctor.check_gemma_gm_data()
    assert res.status == "ok" and "recap" in res.message


def test_gemma_gm_data_broken_package(tmp_path, monkeypatch):
    pkg = tmp_path / "gemma" / "gm"
    pkg.mkdir(parents=True)
    (tmp_path / "gemma" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    res = doctor.check_gemma_gm_data()
    assert res.status == "warn" and "gemma.gm.data" in res.message and "3.3.0" in res.fix


def test_vlm_bundle_ok(bundle):
    results = doctor.check_vlm_bundle(Settings(vlm_bundle_dir=bundle))
    assert [r.status for r in results] == ["ok", "ok", "ok"], [r.message for r in results]


def test_vlm_bundle_missing_dir(tmp_path):
    (res,) = doctor.check_vlm_bundle(Settings(vlm_bundle_dir=tmp_path / "nope"))
    assert res.status == "fail" and "OPENPI_VLM_CKPT_DIR" in res.fix


def test_vlm_bundle_broken_pieces(tmp_path):
    root = tmp_path / "bundle"
    (root / "gemma-3-270m" / "step_00020000").mkdir(parents=True)
    (root / "gemma-3-270m" / "step_00020000" / "garbage").write_text("not orbax")
    (root / "tokenizer.model").write_bytes(b"\x00not a sentencepiece model")
    results = {r.name: r for r in doctor.check_vlm_bundle(Settings(vlm_bundle_dir=root))}
    assert results["vlm_bundle.gemma3"].status == "fail"
    assert results["vlm_bundle.siglip2"].status == "fail" and "siglip2" in results["vlm_bundle.siglip2"].fix
    assert results["vlm_bundle.tokenizer"].status == "fail"


def test_tokenizer_wrong_vocab(tmp_path):
    path = make_sentencepiece(tmp_path / "small.model", 100)
    res = doctor.check_tokenizer(path, doctor.GEMMA3_VOCAB, "tok", "Gemma3")
    assert res.status == "fail" and "100 tokens, expected 262144" in res.message


def test_pi05_base(tmp_path):
    assert doctor.check_pi05_base(Settings(pi05_base_dir=tmp_path)).status == "fail"
    _orbax_save(tmp_path / "params", {"params": {"x": np.zeros(3, np.float32)}})
    assert doctor.check_pi05_base(Settings(pi05_base_dir=tmp_path)).status == "ok"


def test_disk(tmp_path):
    assert doctor.check_disk("value-train", "value-tiny", tmp_path / "run").status == "ok"
    res = doctor.check_disk("sft", "pi05", tmp_path)
    assert res.details["checkpoint_gib"] == 53.0


def test_dataset_checks(tmp_path):
    from recap_core.data.synthetic import make_dataset

    res = doctor.check_dataset(tmp_path, "sft")
    assert res.status == "fail" and "not a LeRobot dataset" in res.message
    plain = make_dataset(tmp_path / "plain", episodes=2, frames=6, with_recap=False)
    assert doctor.check_dataset(plain, "sft").status == "ok"
    res = doctor.check_dataset(plain, "value-train")
    assert res.status == "fail" and "value_label" in res.message and "recap convert lerobot" in res.fix
    info = plain / "meta" / "info.json"
    info.write_text(info.read_text().replace('"v3.0"', '"v2.1"'))
    res = doctor.check_dataset(plain, "sft")
    assert res.status == "fail" and "v21-to-v30" in res.fix


def test_run_checks_stage_selection(bundle, tmp_path):
    settings = Settings(vlm_bundle_dir=bundle, pi05_base_dir=tmp_path / "none")
    mem = MemInfo(64 * GIB, 60 * GIB)
    cpu = [SimpleNamespace(platform="cpu", device_kind="cpu")]
    tiny = doctor.run_checks("value-train", preset="value-tiny", init="random", settings=settings, mem=mem, devices=cpu)
    assert _status(tiny, "vlm_bundle") == "skip" and _status(tiny, "pi05_base") == "skip"
    label = doctor.run_checks("value-label", preset="value", settings=settings, mem=mem, devices=cpu)
    assert _status(label, "vlm_bundle.tokenizer") == "ok"
    every = doctor.run_checks("all", settings=settings, mem=mem, devices=cpu)
    assert _status(every, "pi05_base") == "fail"
    summary = doctor.summarize(every)
    assert summary["exit_code"] == 1 and summary["counts"]["fail"] >= 1


def test_summarize_strict():
    warn = [doctor.CheckResult("x", "warn", "m")]
    assert doctor.summarize(warn)["exit_code"] == 0
    assert doctor.summarize(warn, strict=True)["exit_code"] == 1


def test_preflight_raises_with_fix(tmp_path):
    settings = Settings(vlm_bundle_dir=tmp_path / "missing")
    warnings: list[str] = []
    with pytest.raises(PreflightError) as exc:
        doctor.preflight("value-label", preset="value", settings=settings, warn=warnings.append,
                         mem=MemInfo(64 * GIB, 60 * GIB), devices=[SimpleNamespace(platform="cpu", device_kind="cpu")])
    assert "vlm_bundle" in exc.value.message and "--no-preflight" in exc.value.fix
    assert any("gpu" in w for w in warnings)
