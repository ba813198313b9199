"""`recap demo`: the whole RECAP loop on the built-in toy task, on CPU, in minutes.

Every stage runs through the real `recap` command line, exactly as an operator would chain
them in a shell script (see `examples/recap_round.sh`):

    demos (scripted expert) -> convert -> sft -> serve + DAgger rollouts -> convert -> merge
    -> finetune (Stage 3) -> value train -> value label -> label audit -> finetune (Stage 6) -> eval x3
    (+ Stage 6 asked for "negative": the indicator check)

Rollouts go through `recap serve` and the openpi websocket protocol. Each finished stage is
recorded in `<workdir>/demo_state.json`, so rerunning the demo continues where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recap_core.errors import OutputExistsError, RecapError

TASK = "handover"
STAGES = ("sft", "stage3", "stage6")
CONDITIONED = ("stage3", "stage6")  # the pi0.6 stages, which read the advantage indicator
INDICATOR_STATES = 32  # expert-visited states for `recap eval --indicator-effect`


def operator_rule():
    """How the demo's "operator" corrects the robot: when it drifts or stops making progress.

    The sim's default rule steps in at 0.1 rad of drift, which with a young policy means the
    expert drives ~85% of every rollout and all of them succeed: nothing for a value function to
    tell apart. Stepping in much later (0.35 rad, 40 frames without progress) left 81% autonomous
    frames but only 8% successful rollouts. This one gave ~70% autonomous frames and ~28% successes.
    """
    from recap_core.sim.rollout import InterventionRule

    return InterventionRule(joint_threshold=0.2, drift_patience=5, stall_steps=25, takeover_steps=20)


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run. `fast` is the CI smoke run; `default` the README's main job."""

    demos: int
    rollouts: int
    eval_episodes: int
    sft_steps: int
    finetune_steps: int
    value_steps: int
    batch_size: int
    top_percent: float = 30.0
    lookahead: int = 10


PLANS = {
    "fast": DemoPlan(demos=4, rollouts=3, eval_episodes=3, sft_steps=4, finetune_steps=4, value_steps=4,
                     batch_size=4),
    "default": DemoPlan(demos=50, rollouts=40, eval_episodes=100, sft_steps=800, finetune_steps=400,
                        value_steps=600, batch_size=32),
}


class DemoStageError(RecapError):
    """A stage of the demo failed; the message carries the command and its last output."""


def _recap_cmd(*args: Any) -> list[str]:
    return [sys.executable, "-m", "recap_cli.main", *map(str, args)]


class DemoRunner:
    def __init__(self, workdir: Path, plan: DemoPlan, seed: int, log: Callable[[str], None]) -> None:
        self.work = Path(workdir)
        self.plan = plan
        self.seed = seed
        self.log = log
        self.state_path = self.work / "demo_state.json"
        self.state: dict[str, Any] = (
            json.loads(self.state_path.read_text()) if self.state_path.is_file() else {"done": {}}
        )
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
        self.env.setdefault("JAX_PLATFORMS", "cpu")

    @property
    def rollout_seed(self) -> int:
        return self.seed + 10_000

    # ------------------------------------------------------------------ bookkeeping
    def _save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        os.replace(tmp, self.state_path)

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        if name in self.state["done"]:
            self.log(f"[dim]✓ {name} (done earlier)[/dim]")
            return self.state["done"][name]["result"]
        self.log(f"[bold]→ {name}[/bold]")
        start = time.perf_counter()
        result = fn()
        self.state["done"][name] = {"seconds": round(time.perf_counter() - start, 1), "result": result}
        self._save()
        self.log(f"[green]✓ {name}[/green] ({self.state['done'][name]['seconds']} s)")
        return result

    def recap(self, *args: Any, json_out: bool = False) -> Any:
        cmd = _recap_cmd(*args, *(["--json"] if json_out else []))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, cwd=self.work)
        if proc.returncode != 0:
            tail = "\n".join(_unboxed(proc.stderr or proc.stdout).splitlines()[-25:])
            raise DemoStageError(f"`recap {' '.join(map(str, args))}` failed (exit {proc.returncode}):\n{tail}",
                                 fix=f"rerun `recap demo --workdir {self.work}` to continue after fixing it")
        return json.loads(proc.stdout) if json_out else None

    # ------------------------------------------------------------------ stages
    def collect_demos(self) -> dict[str, Any]:
        from recap_core.sim.collect import collect_demos

        res = collect_demos(TASK, self.plan.demos, self.seed, self.work / "raw" / "demos", overwrite=True)
        return {"episodes": self.plan.demos, "success_rate": res.success_rate}

    def convert(self, raw: str, out: str) -> dict[str, Any]:
        from recap_core.sim.task import get_task

        fps = get_task(TASK).fps
        return self.recap("convert", "aloha-hdf5", f"raw/{raw}", f"data/{out}", "--fps", fps, "--task", TASK,
                          "--overwrite", json_out=True)

    def train(self, command: tuple[str, ...], dataset: str, run: str, preset: str, steps: int,
              init: str = "random", extra: tuple[str, ...] = ()) -> dict[str, Any]:
        return self.recap(*command, f"data/{dataset}", "--preset", preset, "--init", init, "--run-dir", f"runs/{run}",
                          "--steps", steps, "--batch-size", self.plan.batch_size, "--overwrite", *extra,
                          json_out=True)

    def collect_rollouts(self) -> dict[str, Any]:
        """Serve the SFT policy with `recap serve` and collect DAgger rollouts through the websocket."""
        from recap_core.sim.collect import collect
        from recap_core.sim.remote import remote_policy

        cmd = _recap_cmd("serve", "runs/sft", "--port", "0", "--json", "--no-preflight")
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
                                  cwd=self.work)
        try:
            url = _read_ready(server)
            with remote_policy(url) as policy_fn:
                res = collect(policy_fn, TASK, self.plan.rollouts, self.rollout_seed,
                              self.work / "raw" / "rollouts", rule=operator_rule(), overwrite=True)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        return {"episodes": self.plan.rollouts, "success_rate": res.success_rate,
                "intervention_fraction": round(res.intervention_frames / max(res.frames, 1), 3)}

    def evaluate(self, run: str, adv_ind: str | None = None) -> dict[str, Any]:
        """Closed-loop success; `adv_ind` None sends the server's default ("positive" for pi0.6).
        pi0.6 runs also get the open-loop indicator effect (Stage 3, which never saw a negative
        label, is the baseline for Stage 6)."""
        extra = ("--adv-ind", adv_ind) if adv_ind else ()
        if run in CONDITIONED and not adv_ind:
            extra = (*extra, "--indicator-effect", INDICATOR_STATES)
        return self.recap("eval", f"runs/{run}", "--task", TASK, "--episodes", self.plan.eval_episodes,
                          "--seed", self.seed + 20_000, *extra, json_out=True)

    def run(self) -> dict[str, Any]:
        from recap_core.sim.audit import label_audit

        p = self.plan
        self.stage("demos", self.collect_demos)
        self.stage("convert demos", lambda: self.convert("demos", "demos"))
        # Joint deltas (openpi's ALOHA recipe): the finetunes inherit the convention from runs/sft.
        self.stage("sft (Stage 2)", lambda: self.train(("sft",), "demos", "sft", "pi05-tiny", p.sft_steps,
                                                       extra=("--delta-actions",)))
        self.stage("rollouts via recap serve", self.collect_rollouts)
        self.stage("convert rollouts", lambda: self.convert("rollouts", "rollouts"))
        self.stage("merge", lambda: self.recap("data", "merge", "data/demos", "data/rollouts", "--output",
                                               "data/round1", "--overwrite", json_out=True))
        self.stage("finetune (Stage 3)", lambda: self.train(("finetune",), "round1", "stage3", "pi06-tiny",
                                                            p.finetune_steps, init="runs/sft"))
        # Random-init backbones must train: frozen random features cannot predict progress.
        self.stage("value train (Stage 4)", lambda: self.train(("value", "train"), "round1", "value", "value-tiny",
                                                              p.value_steps, extra=("--freeze-mode", "none")))
        self.stage("value label (Stage 5)", lambda: self.recap(
            "value", "label", "data/round1", "--checkpoint", "runs/value", "--output", "data/round1_labeled",
            "--top-percent", p.top_percent, "--lookahead", p.lookahead, "--report", "reports/label",
            "--overwrite", "--no-preflight", json_out=True))
        # Replays the rollouts in the sim: do the labels point at the actions closer to the expert's?
        audit = self.stage("label audit", lambda: label_audit(self.work / "data" / "round1_labeled", TASK,
                                                              self.rollout_seed, p.demos).as_dict())
        self.stage("finetune (Stage 6)", lambda: self.train(("finetune",), "round1_labeled", "stage6", "pi06-tiny",
                                                            p.finetune_steps, init="runs/sft"))
        results = {name: self.stage(f"eval {name}", lambda name=name: self.evaluate(name)) for name in STAGES}
        # Indicator check: a policy that learned the clause does worse when asked for "negative".
        negative = self.stage("eval stage6 asked for negative", lambda: self.evaluate("stage6", "negative"))
        summary = {"workdir": str(self.work), "seed": self.seed, "plan": asdict(p), "task": TASK,
                   "success": {name: _success(results[name]) for name in STAGES},
                   "stage6_negative": _success(negative),
                   "label_audit": audit,
                   "seconds": {k: v["seconds"] for k, v in self.state["done"].items()}}
        plot = self.work / "success_rates.png"
        plot_success(summary["success"], plot, title=f"toy task '{TASK}', seed {self.seed}")
        summary["plot"] = str(plot)
        (self.work / "demo_summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def _read_ready(server: subprocess.Popen) -> str:
    """Read `recap serve --json`'s ready document from its stdout; return the URL."""
    text = ""
    for line in server.stdout or ():
        text += line
        try:
            return json.loads(text)["url"]
        except json.JSONDecodeError:
            continue
    err = server.stderr.read() if server.stderr else ""
    raise DemoStageError(f"`recap serve runs/sft` did not start:\n{_unboxed(err)[-2000:]}")


def _unboxed(text: str) -> str:
    """The text of a rich error panel without its frame, so it can be nested in our own panel."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip().strip("│").strip()
        if stripped and not set(stripped) <= set("╭╮╰╯─ ") and not stripped.startswith(("╭", "╰")):
            lines.append(stripped)
    return "\n".join(lines)


def _success(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("success_rate", "ci_low", "ci_high", "episodes", "successes", "milestone_rates", "indicator_effect")
    return {k: result[k] for k in keys if k in result}


def plot_success(success: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(success)
    rates = [success[n]["success_rate"] for n in names]
    low = [r - success[n].get("ci_low", r) for n, r in zip(names, rates, strict=True)]
    high = [success[n].get("ci_high", r) - r for n, r in zip(names, rates, strict=True)]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(names, rates, yerr=[low, high], capsize=6, color=["#888888", "#4a90d9", "#2e7d32"][: len(names)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("closed-loop success rate (95% CI)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(workdir: Path, *, fast: bool = False, seed: int = 0, overwrite: bool = False,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or continue) the demo in `workdir`; returns the summary with success rates per stage."""
    workdir = Path(workdir)
    plan = PLANS["fast" if fast else "default"]
    state = workdir / "demo_state.json"
    if workdir.exists() and any(workdir.iterdir()):
        if overwrite:
            shutil.rmtree(workdir)
        elif not state.is_file():
            raise OutputExistsError(f"{workdir} exists and is not a recap demo workdir",
                                    fix="choose another --workdir or pass --overwrite")
        else:
            previous = json.loads(state.read_text())
            if previous.get("plan") not in (None, asdict(plan)) or previous.get("seed", seed) != seed:
                raise OutputExistsError(f"{workdir} holds a demo with another plan or seed",
                                        fix="pass the same --fast/--seed, another --workdir, or --overwrite")
    workdir.mkdir(parents=True, exist_ok=True)
    runner = DemoRunner(workdir, plan, seed, log)
    runner.state.setdefault("plan", asdict(plan))
    runner.state.setdefault("seed", seed)
    runner._save()
    return runner.run()
