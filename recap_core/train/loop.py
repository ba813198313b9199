"""The training loop shared by `recap sft`, `recap finetune` and `recap value train`.

Read it top to bottom: resolve the run directory, build the mesh and the model (straight into
sharded device arrays), restore the last checkpoint when resuming, then step, log, validate and
checkpoint. Everything stage-specific lives in the `Task` and the data it is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from recap_core.config import RunConfig
from recap_core.errors import CheckpointError, OutputExistsError
from recap_core.fsutil import atomic_output_dir, check_output
from recap_core.rundir import BEST, RunRef
from recap_core.stack import stack_versions
from recap_core.train.checkpoint import BEST_METRIC, RunCheckpoints, checkpoint_bytes
from recap_core.train.init import TaskFactory, build_parts, check_base, init_run, parts_to_restore
from recap_core.train.memory import check_step
from recap_core.train.metrics import MetricsLog
from recap_core.train.sharding import (
    FSDP_AXIS,
    barrier,
    local_batch_size,
    make_mesh,
    maybe_initialize_distributed,
    process_info,
    to_global,
)
from recap_core.train.state import count_params
from recap_core.train.step import abstract_train_state, init_train_state, make_eval_loss, make_train_step
from recap_core.train.task import Batch, BatchSource, Task
from recap_core.train.validation import fit_verdict, run_validation


@dataclass
class TrainingJob:
    """A stage's task plus its data: the only stage-specific input to `train`."""

    task: Task
    task_factory: TaskFactory
    train_data: BatchSource
    val_batches: Callable[[], Iterable[Batch]] | None = None
    assets: dict[str, str | bytes] = field(default_factory=dict)
    """Files written under `<run>/assets/` (relative path -> text or bytes): norm_stats.json, tokenizer.model."""
    train_eval_batches: Callable[[], Iterable[Batch]] | None = None
    """The validation's evaluation on (a fixed sample of) training episodes: the value stage compares
    the two to tell memorising from learning (`fit` in the result)."""
    notes: list[str] = field(default_factory=list)
    """What the job decided for the user from the data (e.g. the action width), to be shown before training."""


@dataclass
class StepEvent:
    step: int
    total: int
    metrics: dict[str, float]
    steps_per_s: float
    kind: str = "train"


@dataclass
class TrainResult:
    run_dir: Path
    stage: str
    preset: str
    start_step: int
    final_step: int
    first_loss: float | None
    final_loss: float | None
    trainable_params: int
    frozen_params: int
    checkpoint_step: int | None
    checkpoint_bytes: int | None
    val: dict[str, float]
    seconds: float
    steps_per_s: float
    fit: dict[str, Any] | None = None
    """`validation.fit_verdict` at the last validation (value stage): overfit or not, and why."""
    best_step: int | None = None
    """With `checkpoint.keep_best`: the step whose held-out ranking was best (kept, in best.json)."""
    step_memory_bytes: int | None = None
    """XLA's per-device peak of the compiled train step (params, optimiser state, frozen base, batch,
    temporaries): what `recap doctor --batch-size` predicts. None when no step ran."""


def check_run_dir(run_dir: Path, config: RunConfig, *, overwrite: bool) -> None:
    """A new run directory must not exist (unless --overwrite) and must neither hold nor lie inside
    the dataset or the --init run: replacing it would delete them, writing it would change them."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not overwrite:
        raise OutputExistsError(
            f"run directory {run_dir} already exists",
            fix="pass --resume to continue it, --overwrite to start over, or choose another --run-dir",
        )
    inputs = [Path(config.dataset)]
    if config.init not in ("random", "base") and Path(config.init).exists():
        inputs.append(Path(config.init))
    check_output(run_dir, True, inputs=tuple(inputs))


def record_paths(config: RunConfig, run_dir: Path) -> None:
    """What a run depends on, recorded so it works from any directory and after a move: the
    dataset and the --init path absolute, and the --init path relative to the run too."""
    config.dataset = str(Path(config.dataset).absolute()) if Path(config.dataset).exists() else config.dataset
    if config.init not in ("random", "base") and Path(config.init).exists():
        init = Path(config.init).absolute()
        config.init = str(init)
        config.init_from_run = os.path.relpath(init, Path(run_dir).absolute())


def prepare_run_dir(run_dir: Path, config: RunConfig, assets: dict[str, str | bytes], *, resume: bool, overwrite: bool) -> bool:
    """Create (or, with --resume, reuse) the run directory. Returns True when resuming.

    With several processes, every one decides (new or resumed, and the checks) before process 0
    creates the directory: a process that checked late saw its peer's new directory and stopped
    with "already exists", leaving the other waiting in its first collective."""
    run_dir = Path(run_dir)
    resuming = run_dir.exists() and resume
    if resuming:
        if not (run_dir / "config.json").is_file():
            raise CheckpointError(
                f"--resume: {run_dir} is not a recap run (no config.json)", fix="pass the run's --run-dir"
            )
    else:
        check_run_dir(run_dir, config, overwrite=overwrite)
        config.versions = stack_versions()
        record_paths(config, run_dir)
    barrier("run directory checked")
    if resuming or jax.process_index() != 0:
        return resuming
    with atomic_output_dir(run_dir, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
        for rel, content in assets.items():
            path = tmp / "assets" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        (tmp / "checkpoints").mkdir()
    return False


def _step_inputs(task: Task, batch: Batch, config: RunConfig, step: int, shards: tuple[int, ...]) -> Any:
    """The model inputs of this process's batch. Host-side randomness (prompt dropout) is drawn per
    data shard, keyed by (seed, step, shard), over that shard's rows: it resumes exactly and does not
    depend on how many processes serve the shards (one shard per process: the process index)."""
    if len(shards) == 1:
        return task.make_inputs(batch, np.random.default_rng([config.seed, step, shards[0]]), train=True)
    rows = len(next(iter(jax.tree.leaves(batch))))
    per = rows // len(shards)
    parts = [task.make_inputs(jax.tree.map(lambda x, i=i: x[i * per:(i + 1) * per], batch),
                              np.random.default_rng([config.seed, step, shard]), train=True)
             for i, shard in enumerate(shards)]
    return jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *parts)


def _batches(source: BatchSource) -> Iterator[Batch]:
    """Loop over the data forever; the source keeps its own position (epoch, offset)."""
    while True:
        empty = True
        for batch in source:
            empty = False
            yield batch
        if empty:
            raise CheckpointError("the training data yielded no batch", fix="check the dataset and --batch-size")


def train(
    job: TrainingJob,
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_event: Callable[[StepEvent], None] | None = None,
) -> TrainResult:
    t_start = time.perf_counter()
    maybe_initialize_distributed(config.distributed)
    run_dir = Path(run_dir).absolute()
    if not (resume and (run_dir / "config.json").is_file()):
        init_run(config)  # a bad --init fails before the run directory exists
    resuming = prepare_run_dir(run_dir, config, job.assets, resume=resume, overwrite=overwrite)
    try:
        return _train_in(job, config, run_dir, resuming, on_event, t_start)
    except BaseException:
        # A run that failed before its first checkpoint leaves nothing behind: the retry is not refused.
        if not resuming and jax.process_index() == 0 and not _has_checkpoint(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _has_checkpoint(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())


def _train_in(job: TrainingJob, config: RunConfig, run_dir: Path, resuming: bool,
              on_event: Callable[[StepEvent], None] | None, t_start: float) -> TrainResult:
    local_batch_size(config.batch_size, config.grad_accum)  # fail early on an impossible split
    mesh = make_mesh(config.fsdp_devices)
    task = job.task

    barrier("checkpoints")  # process 0 has written the directory; orbax syncs every process as it opens it
    ckpts = RunCheckpoints(run_dir / "checkpoints", config.checkpoint)
    start_step = ckpts.latest_step() if resuming else None
    if start_step is not None:
        parts, base = parts_to_restore(config, run_dir, task, mesh, job.task_factory)
        state, meta = ckpts.restore(start_step, abstract_train_state(parts, config))
        if "opt_state" not in state:
            raise CheckpointError(
                f"{run_dir / 'checkpoints' / str(start_step)} was written params-only (--no-keep-optimizer): "
                "it serves and exports, but holds no optimiser state to resume from",
                fix=f"start a new run from it: --init {run_dir} (weights carry over, the optimiser starts fresh)")
        check_base(base, meta.get("base", {}), run_dir / "checkpoints" / str(start_step))
        if meta.get("data") is not None:
            job.train_data.load_state_dict(meta["data"])
    else:
        parts, base = build_parts(config, task, mesh, job.task_factory)
        state = init_train_state(parts, config)
        start_step = 0

    train_step = make_train_step(task, parts, config)
    compiled_step = None
    step_memory: int | None = None
    eval_loss = make_eval_loss(task, parts)
    log = MetricsLog(run_dir, config, enabled=jax.process_index() == 0)
    batches = _batches(job.train_data)
    shards = tuple(getattr(job.train_data, "shards", (jax.process_index(),)))

    best = RunRef(run_dir).best() if resuming else None
    saved_at: int | None = None

    def save(step: int, metrics: dict[str, float] | None = None) -> None:
        nonlocal saved_at
        # The last step is params-only when asked (--no-keep-optimizer): for serving, not resuming.
        optimizer = config.checkpoint.final_optimizer or step < config.steps
        saved_at = step
        ckpts.save(step, state, optimizer=optimizer, metrics=metrics, meta={
            "stage": config.stage,
            "preset": config.preset,
            "data": job.train_data.state_dict(),
            "base": base,
            "ema": config.ema_decay is not None,
            "process": process_info(),
        })

    first_loss: float | None = None
    last_loss: float | None = None
    val_metrics: dict[str, float] = {}
    fit: dict[str, Any] | None = None
    step = start_step
    t_window, window_start = time.perf_counter(), step
    steps_per_s = 0.0
    try:
        while step < config.steps:
            batch = next(batches)
            inputs = to_global(_step_inputs(task, batch, config, step, shards), mesh)
            if compiled_step is None:  # compiled once, ahead of time, so its memory is checked before it runs
                compiled_step = train_step.lower(state, parts.frozen, inputs).compile()
                step_memory = check_step(compiled_step, state=state, frozen=parts.frozen, inputs=inputs,
                                         devices=list(mesh.devices.flat),
                                         fsdp=mesh.shape[FSDP_AXIS]).get("peak_bytes")
                barrier("first step")  # its collectives start together however long each compile took
            state, metrics = compiled_step(state, parts.frozen, inputs)
            step += 1
            if step == start_step + 1 or step % config.log_every == 0 or step == config.steps:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                steps_per_s = (step - window_start) / max(now - t_window, 1e-9)
                t_window, window_start = now, step
                first_loss = values["loss"] if first_loss is None else first_loss
                last_loss = values["loss"]
                log.write(step, values, steps_per_s=steps_per_s)
                if on_event:
                    on_event(StepEvent(step, config.steps, values, steps_per_s))
            if job.val_batches is not None and (step % config.val.every == 0 or step == config.steps):
                val_metrics = run_validation(task, parts, state, job.val_batches(), config, eval_loss, mesh)
                log.write(step, val_metrics, split="val")
                if on_event:
                    on_event(StepEvent(step, config.steps, val_metrics, steps_per_s, kind="val"))
                if job.train_eval_batches is not None and val_metrics:
                    seen = run_validation(task, parts, state, job.train_eval_batches(), config, eval_loss, mesh)
                    log.write(step, seen, split="train_eval")
                    fit = fit_verdict(val_metrics, seen)
                if config.checkpoint.keep_best and BEST_METRIC in val_metrics and (
                        best is None or val_metrics[BEST_METRIC] > best["value"]):
                    best = {"step": step, "metric": BEST_METRIC, "value": val_metrics[BEST_METRIC]}
                    save(step, metrics={BEST_METRIC: best["value"]})
                    ckpts.wait()  # best.json never names a step that is not on disk yet
                    _write_best(run_dir, best)
            if (step % config.checkpoint.every == 0 or step == config.steps) and saved_at != step:
                save(step)
    except KeyboardInterrupt:
        # Keep the work done so far: --resume continues from here.
        if step > start_step and ckpts.latest_step() != step:
            save(step)
        ckpts.wait()
        raise
    finally:
        with contextlib.suppress(Exception):
            ckpts.wait()
        log.close()

    last = ckpts.latest_step()
    ckpts.close()
    seconds = time.perf_counter() - t_start
    return TrainResult(
        run_dir=run_dir,
        stage=config.stage,
        preset=config.preset,
        start_step=start_step,
        final_step=step,
        first_loss=first_loss,
        final_loss=last_loss,
        trainable_params=count_params(parts.trainable),
        frozen_params=count_params(parts.frozen),
        checkpoint_step=last,
        checkpoint_bytes=checkpoint_bytes(run_dir / "checkpoints" / str(last)) if last is not None else None,
        val=val_metrics,
        seconds=seconds,
        steps_per_s=steps_per_s,
        fit=fit,
        step_memory_bytes=step_memory,
        best_step=best["step"] if best else None,
    )


def _write_best(run_dir: Path, best: dict[str, Any]) -> None:
    """`<run>/best.json`: the step `keep_best` keeps (written once the checkpoint is on disk)."""
    if jax.process_index() == 0:
        tmp = run_dir / f".{BEST}.tmp"
        tmp.write_text(json.dumps(best) + "\n")
        os.replace(tmp, run_dir / BEST)

