"""Device memory of a stage's training step from its config alone, before any run exists:
`recap doctor --preset P --batch-size B --devices N --fsdp K`.

The job is built on a generated one-episode dataset, the step compiled on abstract inputs and sized
by `recap_core.train.memory` (XLA's own analysis). A mesh this machine lacks is compiled on N fake
CPU devices in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from recap_core.config import RunConfig
from recap_core.errors import PreflightError
from recap_core.train.memory import step_report


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
    parts = abstract_parts(task, config.seed, config.frozen_dtype, config.init_rng)

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


def predict(config: RunConfig, *, devices: int, batch_size: int | None = None, timeout_s: float = 1800) -> dict[str, Any]:
    """`analyse` for a mesh of `devices`: in this process when it sees exactly that many devices, else in a
    subprocess with that many fake CPU devices (the CPU compiler's figures stand in for the accelerator's)."""
    import jax

    if jax.device_count() == devices and jax.process_count() == 1:
        return analyse(config, batch_size=batch_size)
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()}
    request = json.dumps({"config": config.model_dump(mode="json"), "batch_size": batch_size})
    proc = subprocess.run([sys.executable, "-m", "recap_core.train.estimate"], input=request, capture_output=True,
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
