"""Plot `bench/scale_results.jsonl` (one `bench.scale --json` object per line, with a
`stage` name): CPU per request and Redis memory per request against N, per stage.

    python -m bench.scale_plot  ->  bench/scale.png
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    rows = [json.loads(x) for x in (HERE / "scale_results.jsonl").read_text().splitlines() if x]
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    fig, (cpu, mem) = plt.subplots(1, 2, figsize=(11, 4))
    for i, stage in enumerate(stages):
        mine = sorted((r for r in rows if r["stage"] == stage), key=lambda r: r["requests"])
        n = [r["requests"] for r in mine]
        c = plt.get_cmap("tab10")(i % 10)  # one colour per stage, past the default cycle
        cpu.plot(n, [r["cpu_ms_per_request"] for r in mine], "o-", c=c, label=f"{stage}: all")
        cpu.plot(
            n, [r["worker_cpu_ms_per_request"] for r in mine], "x--", c=c,
            label=f"{stage}: workers",
        )  # fmt: skip
        mem.plot(
            n, [r["redis_peak_bytes_per_request"] for r in mine], "o-", c=c, label=f"{stage}: peak"
        )
        mem.plot(
            n, [r["redis_bytes_per_request_after"] for r in mine], "x--", c=c,
            label=f"{stage}: after",
        )  # fmt: skip
    cpu.set(xscale="log", xlabel="requests (N)", ylabel="CPU ms per request", ylim=(0, None))
    mem.set(xscale="log", xlabel="requests (N)", ylabel="Redis bytes per request", ylim=(0, None))
    cpu.set_title("CPU per request (2-core host)")
    mem.set_title("Redis used_memory per request")
    for ax in (cpu, mem):
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE / "scale.png", dpi=110)


if __name__ == "__main__":
    main()
