"""Analyses of the ``repro_*`` experiments: the paper's headline number computed from our cells.

Each function is an experiment's ``analysis:`` (see ``orchestrator.experiment.run_analysis``):
it gets the finished cells, reduces every seed to the paper's metric, and writes
``reproduction.csv`` / ``.png`` (logged to the parent MLflow run). Ratios are paired by seed (the
same workload sample under both policies) and summarized by their geometric mean with a 95%
t-interval over seeds on the log scale. docs/reproductions.md holds the papers' numbers beside these.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from scipy import stats  # noqa: E402

from orchestrator.report import CellData  # noqa: E402
from orchestrator.stats import t_interval  # noqa: E402


def ratio_ci(ratios: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Geometric mean of per-seed ratios and its t-interval (log scale); NaN bounds with one seed."""
    m, lo, hi = mean_ci([math.log(r) for r in ratios if r > 0 and math.isfinite(r)], level)
    return math.exp(m), math.exp(lo), math.exp(hi)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its t-interval over seeds."""
    a = [v for v in values if math.isfinite(v)]
    if not a:
        return math.nan, math.nan, math.nan
    if len(a) < 2:
        return float(a[0]), math.nan, math.nan
    return (float(np.mean(a)), *t_interval(a, level))


def coord(c: CellData, key: str, default: str = "") -> str:
    """A cell's value of an override key (grid coordinate or config), ``default`` when it has none."""
    v = c.value(key)
    return default if v == "-" else v


def by_seed(cells: Sequence[CellData], label: Callable[[CellData], str]) -> dict[str, dict[str, CellData]]:
    """label -> seed -> finished cell."""
    out: dict[str, dict[str, CellData]] = defaultdict(dict)
    for c in cells:
        if c.status == "FINISHED":
            out[label(c)][c.seed] = c
    return out


def paired_ratios(groups: dict[str, dict[str, CellData]], base: str, metric: str, higher_better: bool) -> dict[str, list[float]]:
    """label -> per-seed improvement factor over ``base`` (> 1 = better than the baseline)."""
    out = {}
    for label, seeds in groups.items():
        if label == base:
            continue
        rs = []
        for seed, c in seeds.items():
            b = groups.get(base, {}).get(seed)
            if b is None:
                continue
            x, y = c.summary.get(metric, math.nan), b.summary.get(metric, math.nan)
            rs.append(x / y if higher_better else y / x)
        out[label] = rs
    return out


def _fmt(m: float, lo: float, hi: float) -> str:
    return f"{m:.2f}" if math.isnan(lo) else f"{m:.2f} [{lo:.2f}, {hi:.2f}]"


def write_rows(rows: list[dict], exp_dir: Path, title: str, console: Console) -> list[Path]:
    """reproduction.csv + a bar chart of the ratios with their intervals; prints the rows."""
    df = pd.DataFrame(rows, columns=["comparison", "metric", "ratio", "ci_low", "ci_high", "seeds", "paper"])
    csv = exp_dir / "reproduction.csv"
    df.to_csv(csv, index=False)
    if not rows:
        console.print(f"{title}: no comparison (a baseline or a swept dimension is missing)")
        return [csv]
    table = Table(title=f"{title}: ours (geometric mean over seeds, 95% interval)")
    for col in ("comparison", "metric", "ratio", "seeds", "paper"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["comparison"], r["metric"], _fmt(r["ratio"], r["ci_low"], r["ci_high"]), str(r["seeds"]), str(r.get("paper", "")))
    console.print(table)
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(rows)))
    y = np.arange(len(rows))
    err = np.array([[r["ratio"] - r["ci_low"], r["ci_high"] - r["ratio"]] for r in rows]).T
    ax.barh(y, df["ratio"], xerr=np.nan_to_num(err), color="#4c72b0", capsize=3)
    ax.axvline(1.0, color="grey", lw=1)
    ax.set_yticks(y, [f"{r['comparison']}: {r['metric']}" for r in rows], fontsize=8)
    ax.set_xlabel("improvement factor over the baseline (>1 = better)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    png = exp_dir / "reproduction.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [csv, png]


def _ratio_rows(groups, base: str, metrics: Sequence[tuple[str, bool]], paper: dict[str, str] | None = None) -> list[dict]:
    rows = []
    for metric, hb in metrics:
        for label, rs in paired_ratios(groups, base, metric, hb).items():
            m, lo, hi = ratio_ci(rs)
            rows.append({"comparison": f"{label} vs {base}", "metric": metric, "ratio": m, "ci_low": lo,
                         "ci_high": hi, "seeds": len(rs), "paper": (paper or {}).get(metric, "")})  # fmt: skip
    return rows


def per_rate(cells: Sequence[CellData], rows_of: Callable[[dict], list[dict]]) -> list[dict]:
    """``rows_of(policy -> seed -> cell)`` at every swept ``workload.rate``, comparisons tagged with the rate."""
    rows = []
    for rate in sorted({coord(c, "workload.rate") for c in cells}, key=lambda r: float(r or 0)):
        groups = by_seed([c for c in cells if coord(c, "workload.rate") == rate], lambda c: coord(c, "policy"))
        for r in rows_of(groups):
            if rate:
                r["comparison"] = f"{r['comparison']} @ {rate} req/s"
            rows.append(r)
    return rows


# ---- 1. Fu et al., NeurIPS'24: SJF on exact and noisy output-length hints vs FCFS ----

def hint_tau(cfg: DictConfig, hint_noise: float, seed: int) -> float:
    """Kendall's tau between the workload's hints and its true output lengths (the predictor's quality)."""
    from orchestrator.workload import load_requests

    w = OmegaConf.merge(cfg.workload, {"args": {"hint_noise": hint_noise}})
    reqs = load_requests(w, seed, None, cfg.engine.max_model_len or 8192)
    return float(stats.kendalltau([r.output_len for r in reqs], [r.output_len_hint for r in reqs]).statistic)


def sjf_ranking(cells: Sequence[CellData], cfg: DictConfig, exp_dir: Path, console: Console) -> list[Path]:
    rows = []
    noises = sorted({coord(c, "workload.args.hint_noise", "0") for c in cells}, key=float)
    for noise in noises:
        sub = [c for c in cells if coord(c, "workload.args.hint_noise", "0") == noise]
        groups = by_seed(sub, lambda c: coord(c, "policy"))
        taus = [hint_tau(cfg, float(noise), int(s)) for s in groups.get("sjf", {})]
        tau = float(np.mean(taus)) if taus else math.nan
        for r in _ratio_rows(groups, "fcfs", [("norm_latency_ms_mean", False), ("e2e_ms_mean", False), ("e2e_ms_p90", False)],
                             {"norm_latency_ms_mean": "2.05x per-token (Table 1); mean up to 6.9x (Fig. 3)"}):  # fmt: skip
            r["comparison"] = f"{r['comparison']} (hint tau {tau:.2f})"
            rows.append(r)
    return write_rows(rows, exp_dir, "Fu et al. NeurIPS'24: SJF on output-length hints vs FCFS", console)


# ---- 3. Sarathi-Serve, OSDI'24: chunked prefills, capacity under a P99 TBT SLO ----

def engine_label(c: CellData) -> str:
    if coord(c, "engine.enable_chunked_prefill").lower() == "false":
        return "no chunking"
    label = f"chunked, budget {coord(c, 'engine.max_num_batched_tokens', '?')}"
    chunk = coord(c, "engine.long_prefill_token_threshold")
    chunk = "" if chunk in ("None", "null", "0") else chunk  # 0: no per-request cap (vLLM's default)
    return f"{label}, chunk {chunk}" if chunk else label


def capacity(points: dict[float, dict], tbt_slo_ms: float, ttft_slo_ms: float) -> float:
    """Highest swept rate at which this and every lower rate met p99 TBT <= SLO and median TTFT <= SLO."""
    best = 0.0
    for rate in sorted(points):
        s = points[rate]
        if s.get("itl_ms_p99", math.inf) <= tbt_slo_ms and s.get("ttft_ms_p50", math.inf) <= ttft_slo_ms:
            best = rate
        else:
            break
    return best


def sarathi(cells: Sequence[CellData], cfg: DictConfig, exp_dir: Path, console: Console) -> list[Path]:
    tbt_slo, ttft_slo = float(cfg.slo_tpot_ms), float(cfg.slo_ttft_ms)
    # label -> seed -> rate -> summary
    curves: dict[str, dict[str, dict[float, dict]]] = defaultdict(lambda: defaultdict(dict))
    for c in cells:
        if c.status == "FINISHED" and coord(c, "workload.rate") not in ("", "None"):
            curves[engine_label(c)][c.seed][float(coord(c, "workload.rate"))] = c.summary
    swept = {label: seeds for label, seeds in curves.items() if min(len(p) for p in seeds.values()) >= 3}
    caps = {label: {seed: capacity(pts, tbt_slo, ttft_slo) for seed, pts in seeds.items()} for label, seeds in swept.items()}
    rows = []
    base = "no chunking"
    for label, seeds in caps.items():
        if label == base:
            continue
        rs = [seeds[s] / caps[base][s] for s in seeds if caps.get(base, {}).get(s)]
        m, lo, hi = ratio_ci(rs)
        rows.append({"comparison": f"{label} vs {base}", "metric": f"capacity (p99 TBT<={tbt_slo:g} ms, TTFT p50<={ttft_slo:g} ms)",
                     "ratio": m, "ci_low": lo, "ci_high": hi, "seeds": len(rs), "paper": "2.6x (Mistral-7B, 1 A100, strict SLO)"})  # fmt: skip
    for label, seeds in caps.items():
        m, lo, hi = mean_ci(list(seeds.values()))
        console.print(f"capacity {label}: {_fmt(m, lo, hi)} req/s over {len(seeds)} seeds")
    out = write_rows(rows, exp_dir, "Sarathi-Serve OSDI'24: serving capacity under a tail TBT SLO", console)
    pd.DataFrame([{"engine": k, "seed": s, "capacity_req_s": v} for k, d in caps.items() for s, v in d.items()]).to_csv(
        exp_dir / "capacity.csv", index=False)
    out += [exp_dir / "capacity.csv", _plot_curves(swept, tbt_slo, ttft_slo, exp_dir / "tbt_ttft_vs_rate.png")]
    return out + [_budget_sweep(curves, exp_dir, console)]


def _budget_sweep(curves, exp_dir: Path, console: Console) -> Path:
    """p99 TBT and median TTFT per engine setting at the rates every setting ran (mean, 95% interval)."""
    common = set.intersection(*({r for pts in seeds.values() for r in pts} for seeds in curves.values()))
    rows = []
    for rate in sorted(common):
        for label, seeds in sorted(curves.items()):
            for metric in ("itl_ms_p99", "ttft_ms_p50"):
                m, lo, hi = mean_ci([pts[rate][metric] for pts in seeds.values() if rate in pts])
                rows.append({"rate": rate, "engine": label, "metric": metric, "mean": m, "ci_low": lo, "ci_high": hi})
                console.print(f"{rate:g} req/s  {label:22s} {metric}: {_fmt(m, lo, hi)} ms")
    path = exp_dir / "budget_sweep.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _plot_curves(curves, tbt_slo: float, ttft_slo: float, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, seeds in sorted(curves.items()):
        rates = sorted({r for pts in seeds.values() for r in pts})
        for ax, metric in zip(axes, ("itl_ms_p99", "ttft_ms_p50")):
            ys = [np.mean([pts[r][metric] for pts in seeds.values() if r in pts]) for r in rates]
            ax.plot(rates, ys, marker="o", label=label)
    for ax, slo, name in zip(axes, (tbt_slo, ttft_slo), ("p99 TBT (ms)", "median TTFT (ms)")):
        ax.axhline(slo, color="red", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(name)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- 4. Andes: QoE-aware scheduling vs FCFS under bursty load ----

def andes(cells: Sequence[CellData], cfg: DictConfig, exp_dir: Path, console: Console) -> list[Path]:
    metrics = [("qoe_mean", True), ("qoe_p10", True), ("ttft_ms_p90", False)]
    paper = {"qoe_mean": "up to 3.2x (v1) / 4.7x (v2) average QoE"}
    rows = per_rate(cells, lambda groups: _ratio_rows(groups, "fcfs", metrics, paper))
    return write_rows(rows, exp_dir, "Andes: average QoE vs FCFS under bursty load", console)


# ---- 2. FastServe: skip-join MLFQ with proactive preemption vs FCFS and vs MLFQ without it ----

def fastserve(cells: Sequence[CellData], cfg: DictConfig, exp_dir: Path, console: Console) -> list[Path]:
    """Mean and P99 JCT ratios vs FCFS, and fastserve vs mlfq, at every swept rate."""
    metrics = [("e2e_ms_mean", False), ("e2e_ms_p99", False)]
    paper = {"e2e_ms_mean": "up to 5.1x (average JCT)", "e2e_ms_p99": "up to 6.4x (tail JCT)"}

    def rows_at(groups):
        rows = _ratio_rows(groups, "fcfs", metrics, paper)
        if "mlfq" in groups and "fastserve" in groups:
            rows += _ratio_rows({k: groups[k] for k in ("mlfq", "fastserve")}, "mlfq", metrics)
        return rows

    return write_rows(per_rate(cells, rows_at), exp_dir,
                      "FastServe: job completion time vs FCFS and vs MLFQ without proactive preemption", console)  # fmt: skip


# ---- 5. Cache-aware ordering (SGLang's LPM) and eviction policies ----

def cache(cells: Sequence[CellData], cfg: DictConfig, exp_dir: Path, console: Console) -> list[Path]:
    rows = []
    metrics = [("server_prefix_cache_hit_rate", True), ("ttft_ms_p50", False), ("request_throughput", True)]
    for workload in sorted({coord(c, "workload") for c in cells}):
        sub = [c for c in cells if coord(c, "workload") == workload]
        groups = by_seed(sub, lambda c: f"{coord(c, 'policy')}+{coord(c, 'allocator.args.eviction')}")
        for r in _ratio_rows(groups, "fcfs+lru", metrics, {"server_prefix_cache_hit_rate": "higher (SGLang: LPM > FCFS)"}):
            r["paper"] = r["paper"] if r["comparison"].startswith("lpm") else ""  # eviction: no paper number
            r["comparison"] = f"{workload}: {r['comparison']}"
            rows.append(r)
    return write_rows(rows, exp_dir, "Cache-aware ordering and eviction vs FCFS + LRU", console)
