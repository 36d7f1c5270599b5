"""The PNG of `make bench`: throughput over time, latency percentiles and CPU per saga by rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROCESS_COLOURS = {
    "order": "#1f77b4",
    "payment": "#ff7f0e",
    "shipping": "#2ca02c",
    "query": "#9467bd",
    "kafka": "#8c564b",
    "postgres": "#e377c2",
    "bench_client": "#7f7f7f",
}


def _per_second(times: list[float], origin: float, end: float) -> tuple[list[float], list[int]]:
    bins = [0] * (int(end - origin) + 1)
    for t in times:
        i = int(t - origin)
        if 0 <= i < len(bins):
            bins[i] += 1
    return [i + 0.5 for i in range(len(bins))], bins


def render(result: dict[str, Any], timeline: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["steps"]
    origin = timeline["origin"][0]
    end = max([origin + 1.0] + [t for k in ("accepted", "completed", "confirmed_write") for t in timeline[k]])
    fig, (ax_t, ax_l, ax_c) = plt.subplots(3, 1, figsize=(12, 13), gridspec_kw={"height_ratios": [3, 3, 2]})
    title = (
        f"make bench ({result['mode']}): whole system on {result['machine']['cpus']} cores, "
        f"load avg at start {result['machine']['loadavg_at_start'][0]:.2f}; "
        f"saturation {result['saturation_sagas_per_s']} sagas/s"
    )
    fig.suptitle(title, fontsize=11)

    # 1. throughput over time
    for key, label, style in (
        ("accepted", "accepted orders/s (202)", "-"),
        ("completed", "completed sagas/s (final status in query view)", "-"),
        ("confirmed_write", "order.confirmed recorded/s (write side)", ":"),
    ):
        xs, ys = _per_second(timeline[key], origin, end)
        ax_t.plot(xs, ys, style, label=label, linewidth=1.3)
    for i, step in enumerate(steps):
        s0, s1 = step["window"]["start"] - origin, step["window"]["end"] - origin
        ax_t.hlines(
            step["rate_per_s"],
            s0,
            s1,
            colors="black",
            linestyles="--",
            linewidth=0.8,
            label="offered rate" if i == 0 else None,
        )
        ax_t.axvspan(s0, s1, color="green" if step["keeps_up"] else "red", alpha=0.06)
        ax_t.text((s0 + s1) / 2, step["rate_per_s"], f"{step['rate_per_s']:g}/s", ha="center", va="bottom", fontsize=8)
    ax_t.set_xlabel("seconds since the first step")
    ax_t.set_ylabel("per second")
    ax_t.set_title("throughput over time (green: keeps up, red: saturated)", fontsize=10)
    ax_t.legend(fontsize=8, loc="upper left")
    ax_t.grid(alpha=0.3)

    # 2. latency percentiles per rate
    rates: list[float] = [float(s["rate_per_s"]) for s in steps]
    for side, marker, label in (
        ("write", "o", "placed→CONFIRMED recorded (order service)"),
        ("query", "s", "placed→CONFIRMED visible (query view)"),
    ):
        key = "placed_to_confirmed_write_ms" if side == "write" else "placed_to_confirmed_query_ms"
        for pname, ls in (("p50", ":"), ("p95", "-."), ("p99", "-"), ("max", "--")):
            values = [(s["latency"][key] or {}).get(pname) for s in steps]
            pts = [(r, y) for r, y in zip(rates, values) if y is not None]
            if pts:
                ax_l.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    ls,
                    marker=marker,
                    markersize=4,
                    color="#1f77b4" if side == "write" else "#d62728",
                    label=f"{pname} {label}",
                )
    ax_l.axhline(100, color="grey", linewidth=0.8, linestyle=":")
    ax_l.axhline(1000, color="grey", linewidth=0.8, linestyle="--")
    ax_l.set_xscale("log", base=2)
    ax_l.set_yscale("log")
    ax_l.set_xticks(rates, [f"{r:g}" for r in rates])
    ax_l.set_xlabel("offered orders/s")
    ax_l.set_ylabel("ms")
    ax_l.set_title("latency percentiles per rate (100 ms goal at 50/s; 1 s saturation bound)", fontsize=10)
    ax_l.legend(fontsize=7, ncol=2)
    ax_l.grid(alpha=0.3, which="both")

    # 3. CPU seconds per completed saga, by process
    names = [n for n in PROCESS_COLOURS if any(n in (s.get("cpu_s_per_saga") or {}) for s in steps)]
    bottoms = [0.0] * len(steps)
    xs_idx = list(range(len(steps)))
    for name in names:
        vals = [((s.get("cpu_s_per_saga") or {}).get(name) or 0.0) * 1000 for s in steps]
        ax_c.bar(xs_idx, vals, bottom=bottoms, color=PROCESS_COLOURS[name], label=name)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    ax_c.set_xticks(xs_idx, [f"{r:g}/s" for r in rates])
    ax_c.set_ylabel("CPU ms per completed saga")
    ax_c.set_title("CPU per completed saga by process (incl. PostgreSQL backends)", fontsize=10)
    ax_c.legend(fontsize=8, ncol=4)
    ax_c.grid(alpha=0.3, axis="y")

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
