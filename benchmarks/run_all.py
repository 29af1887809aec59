"""Run every benchmark, print one table, write JSON and a PNG chart (``make bench``).

    .venv/bin/python benchmarks/run_all.py            # full sizes (~5 minutes)
    BENCH_QUICK=1 .venv/bin/python benchmarks/run_all.py   # smaller samples
    BENCH_ONLY=hook,history ...                        # a subset

Results: benchmarks/results/bench-<time>.json and latest.json (every number, every
sample), latency.png (distributions), ingest-daemon.prof (the daemon's cProfile).
"""

from __future__ import annotations

import os
import platform
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import bench_fleet  # noqa: E402
import bench_history  # noqa: E402
import bench_hook  # noqa: E402
import bench_hotpath  # noqa: E402
import bench_http_hook  # noqa: E402
import bench_ingest  # noqa: E402
import bench_latency  # noqa: E402
import bench_redis_ingest  # noqa: E402
import bench_usage_hook  # noqa: E402

BENCHES = [
    ("hotpath", bench_hotpath),
    ("hook", bench_hook),
    ("http_hook", bench_http_hook),
    ("usage_hook", bench_usage_hook),
    ("ingest", bench_ingest),
    ("latency", bench_latency),
    ("history", bench_history),
    ("redis_ingest", bench_redis_ingest),
    ("fleet", bench_fleet),
]


def chart(results: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: no chart; `make bench` installs it)")
        return False
    panels = {}
    hook = results.get("hook")
    if hook and "samples" in hook:
        panels["1 hook cost: process spawn -> exit"] = hook["samples"]
    for name in ("hotpath", "latency", "history"):
        panels.update((results.get(name) or {}).get("charts", {}))
    panels = {t: {k: v for k, v in s.items() if v} for t, s in panels.items()}
    panels = {t: s for t, s in panels.items() if s}
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (title, series) in zip(axes, panels.items(), strict=False):
        for label, xs in series.items():
            xs = sorted(x * 1000 for x in xs)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step(xs, ys, where="post", label=f"{label} (p50 {C.pct(xs, 50):.1f}, p99 {C.pct(xs, 99):.1f} ms)")
        ax.set_title(title)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction <= x")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        if max(max(v) for v in series.values()) / max(min(min(v) for v in series.values()), 1e-9) > 50:
            ax.set_xscale("log")
    fig.suptitle("contextuate-trio latency distributions (empirical CDFs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> int:
    C.check_env()
    only = {x for x in os.environ.get("BENCH_ONLY", "").split(",") if x}
    started = time.time()
    results: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "quick": C.QUICK,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python_hook": C.real_python(),
            "python_daemon": sys.executable,
        },
    }
    rows = []
    for name, mod in BENCHES:
        if only and name not in only:
            continue
        t0 = time.time()
        print(f"[bench] {name} ...", flush=True)
        try:
            res = mod.run()
        except Exception as exc:
            traceback.print_exc()
            res = {
                "name": name,
                "error": f"{type(exc).__name__}: {exc}",
                "rows": [C.row(name, "error", f"{type(exc).__name__}: {exc}"[:80], "", "ERROR")],
            }
        res["seconds"] = time.time() - t0
        results[name] = res
        rows += res["rows"]
        print(f"[bench] {name} done in {res['seconds']:.0f} s", flush=True)
    results["seconds"] = time.time() - started
    results["rows"] = rows
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = C.write_json(f"bench-{stamp}.json", results)
    C.write_json("latest.json", results)
    png = os.path.join(C.RESULTS, "latency.png")
    has_chart = chart(results, png)
    print()
    print(C.format_table(rows))
    if "ingest" in results and "profile" in results["ingest"]:
        bench_ingest.print_profile(results["ingest"])
    print(
        f"\n{'quick' if C.QUICK else 'full'} run, {results['seconds']:.0f} s; results: {path}"
        + (f", chart: {png}" if has_chart else "")
    )
    return 1 if any(r["status"] == "ERROR" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
