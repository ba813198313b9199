"""Device memory of one training step, known before the step runs.

XLA's own analysis of the compiled step (`jax.jit(...).lower(...).compile().memory_analysis()`) on
abstract inputs: nothing is allocated, so a 3B-parameter step is sized on a laptop. Per device it
gives the arguments (trainable params, EMA, optimiser state, frozen base, the batch), the outputs
that do not reuse a donated argument, and the temporaries (activations, gradients, XLA's scratch).
Two users of it: `recap doctor --preset P --batch-size B --devices N --fsdp K` (a mesh this machine
may not have is compiled on N fake CPU devices in a subprocess), and every training run, which
checks the step it compiled against its devices' memory before the first step, so a batch that
cannot fit fails with the fix instead of an out-of-memory crash minutes later.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.config import RunConfig
from recap_core.errors import ConfigError, PreflightError

GIB = 1024**3
# Runtime buffers, fragmentation and the allocator's own reserve: what XLA's static analysis does not
# see. The verdict keeps this share of the device free.
HEADROOM = 0.10


def parse_bytes(text: str) -> int:
    """'80GB', '24 GiB', '512MiB', '1.5e9' -> bytes (GB = 10^9, GiB = 2^30; a bare number is bytes)."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?i?b?)\s*", str(text).lower())
    units = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    if not match or match.group(2) not in units:
        raise ConfigError(f"--device-memory {text!r} is not a size", fix="write it like 80GB, 24GiB or 40000MB")
    try:
        value = float(match.group(1)) * units[match.group(2)]
    except ValueError:
        raise ConfigError(f"--device-memory {text!r} is not a size", fix="write it like 80GB, 24GiB or 40000MB") from None
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(f"--device-memory {text!r} must be positive", fix="write it like 80GB or 24GiB")
    return int(value)


def size_text(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def _per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (or arrays)."""
    import jax

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = tuple(leaf.shape)
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None:
            shape = tuple(sharding.shard_shape(shape))
        try:
            itemsize = np.dtype(leaf.dtype).itemsize
        except TypeError:  # PRNG keys: a few bytes
            itemsize = 8
        total += int(np.prod(shape, dtype=np.int64)) * itemsize
    return total


def abstract_inputs(config: RunConfig, batch_size: int, mesh: Any) -> tuple[Any, Any]:
    """(task, the step's inputs as sharded ShapeDtypeStructs with `batch_size` rows). The shapes come
    from one real batch of a generated one-episode dataset at the model's image size and the run's
    cameras, through the run's own loader and `make_inputs`; only the batch axis is then widened."""
    import jax

    from recap_core.data.synthetic import make_dataset
    from recap_core.models.tokenizer import build_toy_tokenizer
    from recap_core.train.jobs import build_job
    from recap_core.train.sharding import batch_sharding

    model = config.model
    image_size = int(model.get("image_size") or model.get("siglip", {}).get("image_size") or 224)
    action_dim = int(model.get("action_dim") or 14)
    with tempfile.TemporaryDirectory(prefix="recap-memory-") as tmp:
        root = Path(tmp)
        cams = tuple(config.cameras or ("cam_high", "cam_left_wrist", "cam_right_wrist"))
        make_dataset(root / "ds", episodes=1, frames=4, image_size=image_size, cameras=cams,
                     state_dim=action_dim, action_dim=action_dim)
        probe = config.model_copy(deep=True, update={
            "dataset": str(root / "ds"), "batch_size": 1, "val": config.val.model_copy(update={"fraction": 0.0}),
            # Token ids only matter by count (max_token_len), so the toy tokenizer sizes any preset.
            "tokenizer": str(build_toy_tokenizer(root / "tok.model")), "cameras": list(cams)})
        job = build_job(probe, root / "run", resuming=False)
        batch = next(iter(job.train_data))
        inputs = job.task.make_inputs(batch, np.random.default_rng(0), train=True)
    sharding = batch_sharding(mesh)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((batch_size, *np.shape(x)[1:]), np.asarray(x).dtype, sharding=sharding), inputs)
    return job.task, abstract


def analyse(config: RunConfig, *, batch_size: int | None = None) -> dict[str, Any]:
    """Compile `config`'s train step for this process's devices (the run's own mesh and batch rules,
    `make_mesh` and `local_batch_size`) and report per-device bytes."""
    import time

    import jax

    from recap_core.train.sharding import local_batch_size, make_mesh, param_shardings
    from recap_core.train.state import ModelParts, abstract_parts
    from recap_core.train.step import abstract_train_state, make_train_step

    batch_size = batch_size or config.batch_size
    local_batch_size(batch_size, config.grad_accum)  # the loop's rule: refused here as there
    mesh = make_mesh(config.fsdp_devices)
    devices, fsdp = list(mesh.devices.flat), config.fsdp_devices
    n = len(devices)
    t0 = time.perf_counter()
    task, inputs = abstract_inputs(config, batch_size, mesh)
    parts = abstract_parts(task, config.seed, config.frozen_dtype)

    def placed(tree: Any) -> Any:
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                            param_shardings(tree, mesh))

    parts = ModelParts(parts.graphdef, placed(parts.trainable), placed(parts.frozen))
    state = abstract_train_state(parts, config)
    compiled = make_train_step(task, parts, config).lower(state, parts.frozen, inputs).compile()
    report = step_report(compiled, state=state, frozen=parts.frozen, inputs=inputs)
    report.update(devices=n, fsdp=fsdp, batch_size=batch_size, platform=devices[0].platform,
                  compile_seconds=round(time.perf_counter() - t0, 1), preset=config.preset, stage=config.stage,
                  frozen_dtype=config.frozen_dtype)
    return report


def step_report(compiled: Any, *, state: Any, frozen: Any, inputs: Any) -> dict[str, Any]:
    """Per-device bytes of a compiled train step: its parts (from the shapes and shardings) and XLA's
    totals. `peak_bytes` = arguments + outputs not aliased to a donated argument + temporaries."""
    ma = compiled.memory_analysis()
    if ma is None:  # some backends do not analyse
        return {"analysed": False}
    args, out, alias, temp = (int(getattr(ma, f"{k}_size_in_bytes", 0) or 0)
                              for k in ("argument", "output", "alias", "temp"))
    peak = args + max(out - alias, 0) + temp
    return {
        "analysed": True,
        "peak_bytes": peak,
        "parts": {
            "params": _per_device_bytes(state["params"]),
            "ema": _per_device_bytes(state.get("ema", {})),
            "optimizer": _per_device_bytes(state["opt_state"]),
            "frozen": _per_device_bytes(frozen),
            "batch": _per_device_bytes(inputs),
            "temporaries": temp,
            "outputs_not_donated": max(out - alias, 0),
        },
        "xla": {"argument": args, "output": out, "alias": alias, "temp": temp,
                "generated_code": int(getattr(ma, "generated_code_size_in_bytes", 0) or 0)},
    }


def verdict(report: dict[str, Any], device_memory: int | None) -> dict[str, Any]:
    """fits / does not fit / unknown, against `device_memory` bytes per device, with the fix."""
    out = dict(report, device_memory_bytes=device_memory)
    if not report.get("analysed"):
        return dict(out, fits=None, verdict="unknown", message="this backend gives no memory analysis")
    peak = report["peak_bytes"]
    if device_memory is None:
        return dict(out, fits=None, verdict="unknown",
                    message=f"needs {size_text(peak)} per device; device memory unknown (pass --device-memory)")
    usable = device_memory * (1 - HEADROOM)
    fits = peak <= usable
    msg = (f"needs {size_text(peak)} per device of {size_text(device_memory)} "
           f"({peak / device_memory:.0%}; {HEADROOM:.0%} kept free)")
    out.update(fits=fits, verdict="fits" if fits else "does not fit", message=msg)
    if not fits:
        out["fix"] = fixes(report)
    return out


def fixes(report: dict[str, Any]) -> str:
    parts = report["parts"]
    tips = []
    if report.get("batch_size", 1) > report.get("devices", 1):
        tips.append("a smaller --batch-size (or --set grad_accum=K: the same batch in K passes)")
    if report.get("fsdp", 1) < report.get("devices", 1):
        tips.append(f"more fsdp (--fsdp-devices up to {report['devices']}) to split params and optimiser state")
    if parts["optimizer"] > parts["frozen"]:
        tips.append("a LoRA preset (pi05-lora / pi06-lora): only adapters get optimiser state")
    tips.append("more devices, or devices with more memory")
    return "; ".join(tips)


def predict(config: RunConfig, *, devices: int, batch_size: int | None = None, timeout_s: float = 1800) -> dict[str, Any]:
    """`analyse` for a mesh of `devices`: in this process when it sees exactly that many devices, else in a
    subprocess with that many fake CPU devices (the CPU compiler's figures stand in for the accelerator's)."""
    import jax

    if jax.device_count() == devices and jax.process_count() == 1:
        return analyse(config, batch_size=batch_size)
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()}
    request = json.dumps({"config": config.model_dump(mode="json"), "batch_size": batch_size})
    proc = subprocess.run([sys.executable, "-m", "recap_core.train.memory"], input=request, capture_output=True,
                          text=True, env=env, timeout=timeout_s)
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if proc.returncode != 0 or "error" in result:
        message = result.get("error") or (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise PreflightError(f"the memory estimate on {devices} fake CPU device(s) failed: {message}",
                             fix=result.get("fix") or "run `recap doctor -v` for the traceback, or check the preset/batch")
    return result


def device_memory_of(devices: list[Any]) -> int | None:
    """Per-device memory the runtime reports (GPU/TPU: bytes_limit); None on CPU."""
    stats = devices[0].memory_stats() if devices and devices[0].platform != "cpu" else None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


def check_step(compiled: Any, *, state: Any, frozen: Any, inputs: Any, devices: list[Any], fsdp: int = 1) -> dict[str, Any]:
    """A run's own check before its first step: its compiled step's per-device report, and a
    PreflightError when that needs more than its devices have (CPU has no fixed device memory: no verdict)."""
    import jax

    report = step_report(compiled, state=state, frozen=frozen, inputs=inputs)
    batch = max((leaf.shape[0] for leaf in jax.tree.leaves(inputs) if leaf.ndim), default=1)
    report.update(devices=len(devices), fsdp=fsdp, batch_size=batch)
    result = verdict(report, device_memory_of(devices))
    if result.get("fits") is False:
        raise PreflightError(f"the training step {result['message']}", fix=fixes(result))
    return result


def _main() -> None:
    """Subprocess entry (`predict`): one JSON request on stdin, one JSON line on stdout."""
    from recap_core.config import validate_run_config
    from recap_core.errors import RecapError

    request = json.loads(sys.stdin.read())
    try:
        config = validate_run_config(request["config"], origin="memory request")
        print(json.dumps(analyse(config, batch_size=request.get("batch_size"))))
    except RecapError as exc:
        print(json.dumps({"error": exc.message, "fix": exc.fix}))
        raise SystemExit(2) from None


if __name__ == "__main__":
    _main()
