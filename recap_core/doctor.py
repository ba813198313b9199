"""Preflight checks: find out before a long run what would kill it at step 0.

The seed pipeline dies at batch 0 with a silent SIGKILL (host RAM during XLA compilation),
a protobuf `MessageFactory.GetPrototype` error, a missing vendored `gemma.gm.data`, or a VLM
bundle in the wrong place. Each check here is a small function returning a `CheckResult`
(ok / warn / fail / skip, a message, and the fix). `run_checks` runs the ones a stage needs;
`preflight` is what every long-running command calls first.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from recap_core.errors import PreflightError, RecapError
from recap_core.models.tokenizer import GEMMA3_VOCAB_SIZE as GEMMA3_VOCAB
from recap_core.settings import Settings, get_settings
from recap_core.stack import installed
from recap_core.stages import STAGES as SPECS
from recap_core.stages import get_stage, preset_size
from recap_core.weights.layout import BUNDLE_GEMMA, BUNDLE_HINT, BUNDLE_SIGLIP, BUNDLE_TOKENIZER

Status = Literal["ok", "warn", "fail", "skip"]
STAGES = (*SPECS,)  # the stage table (recap_core.stages) is the one list
GIB = 1024**3



# CUDA architectures for which jaxlib's CUDA plugin wheels ship compiled kernels (SASS), by the
# first jaxlib release that added them. Anything else is JIT-compiled from PTX at start-up:
# slow, and it inflates host RAM during compilation (the seed's RTX 5090 / sm_120 trap).
SASS_ARCHS_SINCE: dict[int, tuple[int, int, int]] = {
    50: (0, 4, 0), 60: (0, 4, 0), 70: (0, 4, 0), 80: (0, 4, 0), 90: (0, 4, 0),
    100: (0, 6, 0), 120: (0, 6, 1),
}


@dataclass
class CheckResult:
    name: str
    status: Status
    message: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MemInfo:
    total_bytes: int
    available_bytes: int


def read_meminfo() -> MemInfo:
    import psutil

    vm = psutil.virtual_memory()
    return MemInfo(total_bytes=int(vm.total), available_bytes=int(vm.available))


# --------------------------------------------------------------------------- checks


def check_host_ram(stage: str, preset: str | None, mem: MemInfo | None = None) -> CheckResult:
    mem = mem or read_meminfo()
    size = preset_size(preset or SPECS[stage].default_preset)
    need = SPECS[stage].host_ram_gib[size]
    total, avail = mem.total_bytes / GIB, mem.available_bytes / GIB
    details = {"total_gib": round(total, 1), "available_gib": round(avail, 1), "required_gib": need,
               "preset": preset or SPECS[stage].default_preset}
    msg = f"{avail:.1f} GiB available of {total:.1f} GiB; {stage} with {details['preset']} needs ~{need:.0f} GiB"
    if total < need:
        return CheckResult("host_ram", "fail", msg, "use a machine with more RAM, a LoRA or tiny preset, "
                           "or a smaller batch", details)
    if avail < need:
        return CheckResult("host_ram", "warn", msg, "close other programs (IDE, browser) before the run: "
                           "running out of host RAM kills the process without a message", details)
    return CheckResult("host_ram", "ok", msg, details=details)


def _jaxlib_version() -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:3])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 0, 0)


def check_gpu(stage: str, preset: str | None, devices: list[Any] | None = None) -> CheckResult:
    xla_env = {k: v for k, v in os.environ.items() if k.startswith("XLA_PYTHON_CLIENT_")}
    if devices is None:
        import jax

        try:
            devices = jax.devices()
        except RuntimeError as exc:  # a broken CUDA install surfaces here
            return CheckResult("gpu", "fail", f"JAX could not initialise its backend: {exc}",
                               "reinstall jax for your CUDA version: RECAP_CUDA=12 bash scripts/setup.sh in a clone "
                               "(the tested CUDA 12 lock), or pip install -U 'recap[cuda12]'",
                               {"xla_env": xla_env})
    platform = devices[0].platform if devices else "none"
    details: dict[str, Any] = {"backend": platform, "device_count": len(devices), "xla_env": xla_env,
                               "jaxlib": ".".join(map(str, _jaxlib_version())), "devices": []}
    if platform != "gpu" and platform != "cuda":
        real = preset_size(preset or SPECS[stage].default_preset) != "tiny"
        msg = f"no GPU: JAX runs on {platform} ({len(devices)} device(s))"
        if real and stage != "serve":
            return CheckResult("gpu", "warn", msg + "; real-size presets are impractically slow on CPU",
                               "install jax with CUDA on a GPU machine (RECAP_CUDA=12 bash scripts/setup.sh, "
                               "or pip install 'recap[cuda12]'), "
                               "or use a -tiny preset", details)
        return CheckResult("gpu", "ok", msg, details=details)
    jaxlib = _jaxlib_version()
    jit_archs = []
    for d in devices:
        cc = str(getattr(d, "compute_capability", "") or "")
        stats = d.memory_stats() or {}
        details["devices"].append({"kind": d.device_kind, "compute_capability": cc,
                                   "memory_gib": round(stats.get("bytes_limit", 0) / GIB, 1)})
        if cc:
            arch = int(cc.replace(".", ""))
            since = SASS_ARCHS_SINCE.get(arch)
            if since is None or jaxlib < since:
                jit_archs.append(f"sm_{arch}")
    kinds = ", ".join(sorted({d["kind"] for d in details["devices"]}))
    msg = f"{len(devices)} GPU(s): {kinds}"
    if jit_archs:
        return CheckResult("gpu", "warn", msg + f"; jaxlib {details['jaxlib']} has no compiled kernels for "
                           f"{', '.join(sorted(set(jit_archs)))} (PTX JIT: slow start, more host RAM)",
                           "upgrade jax/jaxlib to a release built for this GPU", details)
    return CheckResult("gpu", "ok", msg, details=details)


def check_versions() -> CheckResult:
    """recap and its stack, as a run records them, against the versions this release was tested with
    (`details`: `installed`, `tested`, and `differs`, one line per package that is not the lock's)."""
    from recap_core.stack import lock_differences, stack_versions, tested_versions

    versions = stack_versions()
    differs = lock_differences(versions)
    text = ", ".join(f"{name} {version or 'not installed'}" for name, version in versions.items())
    details = {"installed": versions, "tested": tested_versions(), "differs": differs}
    if not differs:
        return CheckResult("versions", "ok", f"{text} (as tested)", details=details)
    return CheckResult("versions", "warn", f"{text}; not the tested versions: {', '.join(differs)}",
                       fix="install the tested versions: bash scripts/setup.sh in a clone (requirements/lock.txt), "
                           "or pip install the versions listed as tested", details=details)


def _major(version: str) -> int:
    return int(version.split(".")[0]) if version and version.split(".")[0].isdigit() else 0


def _wandb_key() -> str | None:
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    netrc = Path.home() / ".netrc"
    if netrc.is_file():
        words = netrc.read_text(errors="ignore").split()
        for i, word in enumerate(words[:-1]):
            if word == "password" and "api.wandb.ai" in " ".join(words[max(0, i - 4):i]):
                return words[i + 1]
    return None


def check_protobuf(versions: dict[str, str | None] | None = None, wandb_key: str | None = None) -> CheckResult:
    """Known protobuf conflicts, read from package metadata without importing anything."""
    versions = versions if versions is not None else {
        name: installed(name) for name in ("protobuf", "tensorflow", "wandb")
    }
    wandb_key = wandb_key if wandb_key is not None else _wandb_key()
    pb, tf, wb = versions.get("protobuf"), versions.get("tensorflow"), versions.get("wandb")
    details = {"protobuf": pb, "tensorflow": tf, "wandb": wb}
    problems, fixes = [], []
    if tf and pb and _major(pb) >= 5:
        problems.append(f"tensorflow {tf} with protobuf {pb}: TensorFlow code calling "
                        "MessageFactory.GetPrototype fails (removed in protobuf >= 5)")
        fixes.append("recap needs no TensorFlow: pip uninstall tensorflow")
    if wandb_key and wandb_key.startswith("wandb_v1_") and wb:
        parts = tuple(int(p) for p in wb.split(".")[:2] if p.isdigit())
        if parts < (0, 27):
            problems.append(f"your wandb API key is the new wandb_v1_ format but wandb {wb} predates it")
            fixes.append("pip install -U 'wandb>=0.27' (recap does not pin protobuf), or use --wandb disabled")
    if problems:
        return CheckResult("protobuf", "warn", "; ".join(problems), "; ".join(fixes), details)
    return CheckResult("protobuf", "ok", f"protobuf {pb or 'not installed'}; no known conflicts", details=details)


def check_gemma_gm_data() -> CheckResult:
    if importlib.util.find_spec("gemma") is None:
        return CheckResult("gemma_gm_data", "ok", "not needed: recap ships its own Gemma3 (no vendored "
                           "gemma library, no gemma.gm.data)")
    probe = subprocess.run([sys.executable, "-c", "import gemma.gm.data"], capture_output=True, text=True,
                           timeout=120)
    if probe.returncode == 0:
        return CheckResult("gemma_gm_data", "ok", "a gemma package is installed and gemma.gm.data imports "
                           "(recap does not need it)")
    last = (probe.stderr.strip().splitlines() or ["unknown error"])[-1]
    return CheckResult("gemma_gm_data", "warn", f"a gemma package is installed but gemma.gm.data fails: {last}",
                       "recap does not use it; for other tools: pip install --no-deps 'gemma==3.3.0' "
                       "(it contains gm/data) or pip uninstall gemma")


def _load_sentencepiece(path: Path) -> int:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.Load(str(path))
    return sp.GetPieceSize()


def check_tokenizer(path: Path | None, expected_vocab: int, name: str, what: str) -> CheckResult:
    if path is None:
        return CheckResult(name, "fail", f"no {what} tokenizer configured",
                           f"set RECAP_{name.upper()} or the config file entry to its tokenizer.model")
    if not path.is_file():
        return CheckResult(name, "fail", f"{what} tokenizer {path} does not exist",
                           "point the setting at the sentencepiece .model file")
    try:
        vocab = _load_sentencepiece(path)
    except (OSError, RuntimeError) as exc:
        return CheckResult(name, "fail", f"{path} is not a sentencepiece model: {exc}",
                           "replace it with the original tokenizer.model file")
    details = {"path": str(path), "vocab_size": vocab, "expected_vocab_size": expected_vocab}
    if vocab != expected_vocab:
        return CheckResult(name, "fail", f"{path} has {vocab} tokens, expected {expected_vocab} ({what})",
                           f"use the {what} tokenizer", details)
    return CheckResult(name, "ok", f"{path} loads ({vocab} tokens)", details=details)


def _orbax_metadata_ok(path: Path) -> str | None:
    """None if `path` is a readable orbax checkpoint, else the reason it is not."""
    if not path.is_dir():
        return f"{path} does not exist"
    try:
        import orbax.checkpoint as ocp

        meta = ocp.PyTreeCheckpointer().metadata(path)
        tree = getattr(meta, "item_metadata", meta)
        if tree is None or (hasattr(tree, "tree") and tree.tree is None):
            return f"{path} has no readable tree metadata"
    except Exception as exc:  # orbax raises many types for a broken directory
        return f"{path} is not a readable orbax checkpoint ({type(exc).__name__}: {exc})"
    return None


def check_vlm_bundle(settings: Settings) -> list[CheckResult]:
    root = settings.vlm_bundle_dir
    if not root.is_dir():
        return [CheckResult("vlm_bundle", "fail", f"VLM bundle directory {root} does not exist", BUNDLE_HINT,
                            {"path": str(root)})]
    results = []
    reason = _orbax_metadata_ok(root / BUNDLE_GEMMA)
    results.append(CheckResult(
        "vlm_bundle.gemma3", "fail" if reason else "ok",
        reason or f"{root / BUNDLE_GEMMA} is a readable orbax checkpoint",
        f"restore {BUNDLE_GEMMA}/ from the bundle ({BUNDLE_HINT})" if reason else None,
    ))
    siglip = root / BUNDLE_SIGLIP
    has_siglip = siglip.is_dir() and any(siglip.iterdir())
    results.append(CheckResult(
        "vlm_bundle.siglip2", "ok" if has_siglip else "fail",
        f"{siglip} is present" if has_siglip else f"{siglip} is missing or empty",
        None if has_siglip else f"restore {BUNDLE_SIGLIP}/ from the bundle ({BUNDLE_HINT})",
    ))
    tok = check_tokenizer(root / BUNDLE_TOKENIZER, GEMMA3_VOCAB, "vlm_bundle.tokenizer", "Gemma3")
    results.append(tok)
    return results


def check_pi05_base(settings: Settings) -> CheckResult:
    root = settings.pi05_base_dir
    hint = ("download openpi's pi05_base checkpoint (gsutil -m rsync -r gs://openpi-assets/checkpoints/pi05_base "
            "~/pi05_base) and set RECAP_PI05_BASE_DIR")
    reason = _orbax_metadata_ok(root / "params")
    if reason:
        return CheckResult("pi05_base", "fail", f"pi0.5 base weights: {reason}", hint, {"path": str(root)})
    return CheckResult("pi05_base", "ok", f"{root / 'params'} is a readable orbax checkpoint", details={"path": str(root)})


def check_disk(stage: str, preset: str | None, output_dir: Path | None) -> CheckResult:
    where = Path(output_dir) if output_dir else Path.cwd()
    probe = where
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free / GIB
    need = SPECS[stage].checkpoint_gib[preset_size(preset or SPECS[stage].default_preset)]
    # Keep room for keep-last-N checkpoints plus one being written.
    need_total = need * 3
    details = {"path": str(where), "free_gib": round(free, 1), "checkpoint_gib": need}
    msg = f"{free:.1f} GiB free at {probe}; a checkpoint is ~{need:g} GiB"
    if free < need:
        return CheckResult("disk", "fail", msg, "free disk space or choose another --run-dir/--output", details)
    if free < need_total:
        return CheckResult("disk", "warn", msg, "keep room for at least three checkpoints", details)
    return CheckResult("disk", "ok", msg, details=details)




def check_dataset(path: Path, stage: str, preset: str | None = None, cameras: list[str] | None = None) -> CheckResult:
    """Open the dataset, check the stage's columns, run the data layer's validation and, given the
    run's preset, whether the data fits its model (`stages.preset_fit`: action width, the cameras
    trained on: `cameras`, default all)."""
    from recap_core.data.dataset import open_dataset, require_columns, validate_dataset
    from recap_core.errors import DatasetError
    from recap_core.stages import preset_fit

    try:
        info = open_dataset(Path(path))
        details: dict[str, Any] = {"path": str(path), "version": info.version, "episodes": info.episodes,
                                   "frames": info.frames, "cameras": list(info.cameras)}
        require_columns(info, SPECS[stage].columns, stage=stage)
        validate_dataset(info, columns=SPECS[stage].columns)
    except DatasetError as exc:
        return CheckResult("dataset", "fail", exc.message, exc.fix, {"path": str(path)})
    msg = f"{path}: LeRobot {info.version}, {info.episodes} episodes, {info.frames} frames, " \
          f"cameras {', '.join(info.cameras) or 'none'}"
    if preset is not None:
        fit = preset_fit({"action_dim": info.action_dim, "cameras": list(cameras or info.cameras)}, preset)
        details["preset_fit"] = fit
        if fit["problems"]:
            first = fit["problems"][0]
            return CheckResult("dataset", "fail", f"{msg}; does not fit {preset}: {first['problem']}", first["fix"],
                               details)
        msg += "".join(f"; {note}" for note in fit["notes"])
    return CheckResult("dataset", "ok", msg, details=details)


# --------------------------------------------------------------------------- orchestration


def check_step_memory(stage: str, preset: str | None, *, batch_size: int | None, devices: int | None,
                      fsdp: int | None, device_memory: int | None, local_devices: list[Any] | None = None) -> CheckResult:
    """Device memory of `stage`'s training step with `preset`, compiled for a mesh of `devices` x
    `fsdp` (recap_core.train.estimate), against `device_memory` bytes per device (default: the local
    accelerator's)."""
    from recap_core.config import resolve_run_config
    from recap_core.train import estimate, memory
    from recap_core.train.jobs import preset_model

    spec = SPECS[stage]
    if spec.run_stage is None:
        return CheckResult("step_memory", "skip", f"{stage} trains nothing")
    preset = preset or spec.default_preset
    flags: dict[str, Any] = {"fsdp_devices": fsdp or 1}
    if batch_size:
        flags["batch_size"] = batch_size
    config = resolve_run_config(spec.run_stage, preset, "unused", flags=flags, environ={},
                                model=preset_model(spec.run_stage, preset))
    if devices is None:
        import jax

        devices = jax.device_count()
    if device_memory is None and local_devices is not None and len(local_devices) >= devices:
        device_memory = memory.device_memory_of(local_devices)
    result = memory.verdict(estimate.predict(config, devices=devices, batch_size=config.batch_size), device_memory)
    details = {k: result.get(k) for k in ("peak_bytes", "parts", "xla", "devices", "fsdp", "batch_size", "platform",
                                          "frozen_dtype", "device_memory_bytes", "fits", "verdict", "compile_seconds")}
    details["preset"] = preset
    where = f"{preset}, batch {config.batch_size}, {devices} device(s), fsdp {config.fsdp_devices}"
    if result.get("fits") is False:
        return CheckResult("step_memory", "fail", f"{where}: {result['message']}", result["fix"], details)
    if result.get("fits") is None:
        return CheckResult("step_memory", "warn", f"{where}: {result['message']}",
                           "pass --device-memory (e.g. 24GB, 80GB) for a verdict", details)
    return CheckResult("step_memory", "ok", f"{where}: {result['message']}", details=details)


def run_checks(
    stage: str = "all",
    *,
    preset: str | None = None,
    dataset: Path | None = None,
    output_dir: Path | None = None,
    init: str | None = None,
    settings: Settings | None = None,
    mem: MemInfo | None = None,
    devices: list[Any] | None = None,
    cameras: list[str] | None = None,
) -> list[CheckResult]:
    """Run the checks `stage` needs ("all": every check, host RAM for the most demanding stage).

    `init` is the training `--init`: weights dirs are only checked when it is "base" (or, for
    "all", always). `mem` and `devices` may be injected (tests, or a remote machine's figures).
    """
    if stage != "all":
        try:
            stage = get_stage(stage).name  # older spellings (value_train) are accepted
        except RecapError as exc:
            raise type(exc)(exc.message, fix=f"use one of: all, {', '.join(STAGES)}") from None
    settings = settings or get_settings()
    ram_stage = "sft" if stage == "all" else stage
    tiny = preset_size(preset) == "tiny"
    results = [check_versions(), check_host_ram(ram_stage, preset, mem), check_gpu(ram_stage, preset, devices),
               check_protobuf(), check_gemma_gm_data()]
    spec = SPECS.get(stage)
    need_bundle = spec is None or spec.bundle == "always" or (spec.bundle == "init-base" and init == "base")
    need_base = spec is None or (spec.base_weights and init == "base")
    if need_bundle and not tiny:
        results += check_vlm_bundle(settings)
    else:
        results.append(CheckResult("vlm_bundle", "skip", "not needed for this stage/preset/init"))
    if need_base and not tiny:
        results.append(check_pi05_base(settings))
    else:
        results.append(CheckResult("pi05_base", "skip", "not needed for this stage/preset/init"))
    if stage != "serve":
        results.append(check_disk(ram_stage, preset, output_dir))
    if dataset is not None:
        results.append(check_dataset(dataset, ram_stage if stage != "all" else "sft", preset, cameras))
    return results


def summarize(results: list[CheckResult], strict: bool = False) -> dict[str, Any]:
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "warn", "fail", "skip")}
    failed = counts["fail"] > 0 or (strict and counts["warn"] > 0)
    return {"ok": not failed, "exit_code": 1 if failed else 0, "counts": counts,
            "checks": [asdict(r) for r in results]}


def preflight(stage: str, *, warn: Callable[[str], None] | None = None, **kwargs: Any) -> list[CheckResult]:
    """Run `stage`'s checks before a long run: raise PreflightError on a failure, report warnings."""
    results = run_checks(stage, **kwargs)
    for r in results:
        if r.status == "warn" and warn is not None:
            warn(f"{r.name}: {r.message}" + (f" (fix: {r.fix})" if r.fix else ""))
    failed = [r for r in results if r.status == "fail"]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more failed check(s); run `recap doctor --stage {stage}`)" if len(failed) > 1 else ""
        raise PreflightError(f"preflight check {first.name} failed: {first.message}{more}",
                             fix=(first.fix or "see `recap doctor`") + "; or pass --no-preflight to skip the checks")
    return results
