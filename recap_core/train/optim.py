"""The optimiser: AdamW + warmup/cosine + global-norm clipping, built from `OptimConfig`.

The schedule is openpi's `CosineDecaySchedule`: `optax.warmup_cosine_decay_schedule` with
`init_value = peak / (warmup + 1)` and `decay_steps` counting the warmup too.
"""

from __future__ import annotations

import optax

from recap_core.config import RunConfig


def make_schedule(config: RunConfig) -> optax.Schedule:
    warmup = config.warmup_steps
    peak = config.optim.peak_lr
    return optax.warmup_cosine_decay_schedule(
        init_value=peak / (warmup + 1),
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(config.decay_steps, warmup + 1),
        end_value=config.optim.end_lr,
    )


def make_optimizer(config: RunConfig) -> optax.GradientTransformation:
    opt = config.optim
    adamw = optax.adamw(
        make_schedule(config), b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay
    )
    if opt.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(opt.clip_norm), adamw)
