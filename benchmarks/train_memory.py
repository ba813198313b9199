"""Peak host RSS from process start to the end of training step 1, and steps/s, per preset (CPU).

Next to it: what the run predicted for its compiled step before running it (XLA's memory analysis,
`step_memory_bytes`, the figure `recap doctor --batch-size` gives) and the measured growth of the
process from just before the model was built to the end (on CPU the host is the device).

Each preset runs in a fresh subprocess (so ru_maxrss covers exactly that run): a generated
1-episode dataset at the model's image size, `--init random`, batch 1, one step (or --steps N
to also time steps/s). Prints one JSON list.

    python benchmarks/train_memory.py --presets value pi05-lora value-tiny [--steps 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    stage, preset, root, steps = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    from recap_core.config import resolve_run_config
    from recap_core.data.synthetic import make_dataset
    from recap_core.train.jobs import build_job, preset_model
    from recap_core.train.loop import train

    from recap_core.models.tokenizer import build_toy_tokenizer

    model = preset_model(stage, preset)
    # The toy tokenizer: token ids only, so the figures need no downloaded tokenizer file.
    tokenizer = str(build_toy_tokenizer(root / "tok.model"))
    size = 32 if preset.endswith("-tiny") else 224
    make_dataset(root / "ds", episodes=2, frames=max(4, steps + 2), image_size=size)
    config = resolve_run_config(stage, preset, root / "ds", environ={}, model=model, flags={
        "init": "random", "steps": steps, "batch_size": 1, "log_every": 1, "val.fraction": 0.0,
        "checkpoint.every": 10**9, "tokenizer": tokenizer})
    job = build_job(config, root / "run", resuming=False)
    import psutil
    before = psutil.Process().memory_info().rss  # the process before any model exists
    t0 = time.perf_counter()
    result = train(job, config, root / "run")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    import jax

    device = jax.devices()[0]
    stats = (device.memory_stats() or {}) if device.platform != "cpu" else {}
    device_peak = stats.get("peak_bytes_in_use")  # an accelerator's own peak (None on CPU: the host is the device)
    print(json.dumps({"stage": stage, "preset": preset, "platform": device.platform, "device": device.device_kind,
                      "device_peak_gib": None if device_peak is None else round(device_peak / 2**30, 3),
                      "peak_rss_bytes": peak,
                      "peak_rss_gib": round(peak / 2**30, 3), "rss_before_model_gib": round(before / 2**30, 3),
                      "model_and_step_gib": round((peak - before) / 2**30, 3),
                      "predicted_step_gib": round((result.step_memory_bytes or 0) / 2**30, 3), "steps": steps,
                      "steps_per_s": result.steps_per_s, "seconds": round(time.perf_counter() - t0, 1),
                      "trainable_params": result.trainable_params, "frozen_params": result.frozen_params,
                      "checkpoint_bytes": result.checkpoint_bytes}))
    """
)


def stage_of(preset: str) -> str:
    return "value" if preset.startswith("value") else ("finetune" if preset.startswith("pi06") else "sft")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="*", default=["value", "pi05-lora", "value-tiny", "pi05-tiny"])
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    results = []
    for preset in args.presets:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([sys.executable, "-c", CHILD, stage_of(preset), preset, tmp, str(args.steps)],
                                  capture_output=True, text=True, env={"JAX_PLATFORMS": "cpu", **_env()})
        if proc.returncode == 0:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:
            # A child killed by the kernel (out of memory) leaves no stderr: report the signal.
            results.append({"preset": preset, "returncode": proc.returncode,
                            "error": proc.stderr.strip().splitlines()[-1:]})
    print(json.dumps(results, indent=2))


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


if __name__ == "__main__":
    main()
