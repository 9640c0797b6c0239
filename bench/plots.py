"""The benchmark's plots: per policy, 429 share and utilization against workers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.measures import run_order  # noqa: E402
from bench.report import TITLES  # noqa: E402

if TYPE_CHECKING:
    from bench.measures import Context, RunResult

BENCH = Path(__file__).resolve().parent
_STYLE = {
    "quotaflow": ("tab:green", "o"),
    "naive": ("tab:red", "s"),
    "ratelimit": ("tab:orange", "^"),
    "article": ("tab:purple", "D"),
    "litellm": ("tab:brown", "v"),
    "pacer": ("tab:blue", ""),
}
_LINESTYLES = ("-", "--", ":", "-.")


def plot_strategies(ctx: Context) -> list[str]:
    """One PNG per policy (429 share and utilization against workers); returns names."""
    names = []
    workers = ctx.scale.workers
    for policy in ctx.scale.policies:
        series: dict[str, list[RunResult]] = {}
        for r in sorted(ctx.results, key=run_order):
            if r.policy == policy:
                series.setdefault(r.label, []).append(r)
        if not series:
            continue
        fig, (ax429, axutil) = plt.subplots(1, 2, figsize=(12, 4.8))
        seen: dict[str, int] = {}
        for label, runs in series.items():
            strategy = runs[0].strategy
            color, marker = _STYLE[strategy]
            style = _LINESTYLES[seen.get(strategy, 0) % len(_LINESTYLES)]
            seen[strategy] = seen.get(strategy, 0) + 1
            if runs[0].workers is None:  # the pacer: one process, one run
                for ax, y in ((ax429, 100 * runs[0].share_429), (axutil, runs[0].utilization)):
                    ax.axhline(y, color=color, linestyle="--", label=f"{label} (1 process)")
                continue
            xs = [r.workers for r in runs]
            kw = {"color": color, "marker": marker, "linestyle": style, "label": label}
            ax429.plot(xs, [100 * r.share_429 for r in runs], **kw)
            axutil.plot(xs, [r.utilization for r in runs], **kw)
        ax429.set_title(f"{TITLES[policy]}: provider 429s")
        ax429.set_ylabel("429s, % of provider calls")
        axutil.set_title(f"{TITLES[policy]}: utilization")
        axutil.set_ylabel("tokens admitted ÷ provider capacity")
        axutil.axhline(0.95, color="gray", linewidth=0.8, linestyle=":")
        for ax in (ax429, axutil):
            ax.set_xlabel("worker processes (16 threads each)")
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(workers), [str(w) for w in workers])
            ax.minorticks_off()
            ax.grid(True, alpha=0.3)
        ax429.set_ylim(bottom=0)
        axutil.set_ylim(0, max(1.05, axutil.get_ylim()[1]))
        handles, labels = axutil.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.16, 1, 1))
        name = f"strategies_{policy}.png"
        fig.savefig(BENCH / name, dpi=100)
        plt.close(fig)
        names.append(name)
    return names
