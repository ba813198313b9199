"""Device memory of one training step, known before the step runs.

XLA's own analysis of the compiled step (`jax.jit(...).lower(...).compile().memory_analysis()`) on
abstract inputs: nothing is allocated, so a 3B-parameter step is sized on a laptop. Per device it
gives the arguments (trainable params, EMA, optimiser state, frozen base, the batch), the outputs
that do not reuse a donated argument, and the temporaries (activations, gradients, XLA's scratch).
Two users of it: every training run, which checks the step it compiled against its devices'
memory before the first step (`check_step`), so a batch that cannot fit fails with the fix instead
of an out-of-memory crash minutes later; and `recap doctor --preset P --batch-size B --devices N
--fsdp K`, which builds the step from a config first (`recap_core.train.estimate`).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

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
