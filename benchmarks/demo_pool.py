"""Pool finished `recap demo` workdirs (one per seed) into the README's "Does RECAP help?" table.

    python benchmarks/demo_pool.py recap-demo-0 recap-demo-1 recap-demo-2 --plot docs/demo_success.png

Prints one JSON document (pooled rows with Wilson 95% intervals, throughput, label quality per
seed) and, with --markdown, the table rows as the README shows them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recap_core.demo import ROW_LABELS, plot_success, pool_summaries


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def markdown(pooled: dict, per_seed: list[dict]) -> str:
    seeds = ", ".join(map(str, pooled["seeds"]))
    lines = [f"| policy | seeds {seeds} pooled: success (Wilson 95%) | per seed | successes / 1,000 steps | "
             "mean steps to success | episodes with a drop / an idle stretch |", "|---|---|---|---|---|---|"]
    for name, r in pooled["rows"].items():
        each = " · ".join(f"{s['rows'][name]['successes']}/{s['rows'][name]['episodes']}" for s in per_seed
                          if name in s["rows"])
        steps = "" if r["mean_steps_to_success"] is None else f"{r['mean_steps_to_success']:.0f}"
        m = r["mistake_rates"]
        lines.append(f"| {ROW_LABELS.get(name, name)} | **{r['successes']}/{r['episodes']} ({_pct(r['success_rate'])}, "
                     f"{_pct(r['ci_low'])}–{_pct(r['ci_high'])})** | {each} | {r['successes_per_1000_steps']:.1f} | "
                     f"{steps} | {_pct(m.get('drop', 0))} / {_pct(m.get('idle', 0))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="+", type=Path)
    parser.add_argument("--plot", type=Path, help="Save the pooled bar chart here.")
    parser.add_argument("--markdown", action="store_true", help="Also print the README table.")
    args = parser.parse_args()
    per_seed = [json.loads((w / "demo_summary.json").read_text()) for w in args.workdirs]
    pooled = pool_summaries(per_seed)
    if args.plot:
        plot_success(pooled["rows"], args.plot,
                     title=f"toy task '{pooled['task']}', seeds {', '.join(map(str, pooled['seeds']))} pooled")
    print(json.dumps(pooled, indent=2))
    if args.markdown:
        print(markdown(pooled, per_seed))


if __name__ == "__main__":
    main()
