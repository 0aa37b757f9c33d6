"""Comparison table and plots across the cells of an experiment.

Cells are grouped by their grid coordinates other than the compared key (``policy`` by default)
and the seed; metrics are averaged over seeds and every row gets its change in percent against
the baseline (e.g. ``fcfs``) of the same group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

# (metric, higher is better) shown in the table, in this order, when present.
TABLE_METRICS: list[tuple[str, bool]] = [
    ("ttft_ms_p50", False),
    ("ttft_ms_p99", False),
    ("tpot_ms_p50", False),
    ("e2e_ms_p50", False),
    ("e2e_ms_p99", False),
    ("request_throughput", True),
    ("output_token_throughput", True),
    ("goodput", True),
    ("jain_fairness", True),
    ("deadline_met_fraction", True),
    ("server_num_preemptions", False),
    ("server_prefix_cache_hit_rate", True),
    ("num_failed", False),
]
SEED_KEYS = ("seed",)


@dataclass
class CellData:
    """What the report needs from one cell (freshly run or read back from MLflow)."""

    dims: dict[str, str]
    compared: str  # value of the compared key, e.g. "sjf"
    status: str
    summary: dict[str, float] = field(default_factory=dict)
    records: pd.DataFrame | None = None
    timeseries: pd.DataFrame | None = None

    def group(self, compare_by: str) -> str:
        rest = {k: v for k, v in self.dims.items() if k != compare_by and k not in SEED_KEYS}
        return " ".join(f"{k}={v}" for k, v in rest.items()) or "all"


def _save_figure(fig, path: Path, dpi: int = 110, **savefig_kw: Any) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, **savefig_kw)
    plt.close(fig)


def compared_value(cfg: DictConfig, compare_by: str) -> str:
    """``policy`` -> cfg.policy.name; any other dotted key -> its value."""
    node = OmegaConf.select(cfg, compare_by)
    if isinstance(node, DictConfig) and "name" in node:
        return str(node.name)
    if isinstance(node, DictConfig) and "loader" in node:
        return str(node.loader)
    return str(node)


def comparison_table(cells: list[CellData], compare_by: str, baseline: str) -> pd.DataFrame:
    """One row per (group, compared value): seed-averaged metrics and ``<metric>_delta_pct`` vs baseline."""
    rows = []
    for c in cells:
        if c.status != "FINISHED":
            continue
        rows.append({"group": c.group(compare_by), compare_by: c.compared, **c.summary})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    metrics = [m for m, _ in TABLE_METRICS if m in df.columns]
    agg = df.groupby(["group", compare_by], sort=False)[metrics].mean()
    agg.insert(0, "num_seeds", df.groupby(["group", compare_by], sort=False).size())
    agg = agg.reset_index()
    for m in metrics:
        base = agg[agg[compare_by] == baseline].set_index("group")[m]
        ref = agg["group"].map(base)
        agg[f"{m}_delta_pct"] = np.where(ref.abs() > 0, 100.0 * (agg[m] - ref) / ref.abs(), np.nan)
    return agg


def format_delta(value: float, delta: float, higher_better: bool, is_baseline: bool) -> tuple[str, str]:
    """Cell text and a color: green when the change vs baseline is an improvement."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-", ""
    text = f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if is_baseline or delta is None or np.isnan(delta):
        return text, ""
    better = delta > 0 if higher_better else delta < 0
    color = "green" if better and abs(delta) >= 1 else ("red" if abs(delta) >= 1 else "")
    return f"{text} ({delta:+.0f}%)", color


def _side_by_side(table: pd.DataFrame, compare_by: str, baseline: str):
    """Per group: (group, compared values, rows of (metric, [(text, color) per value]))."""
    for group, g in table.groupby("group", sort=False):
        names = [str(v) for v in g[compare_by]]
        rows = []
        for m, hb in TABLE_METRICS:
            if m not in g.columns or g[m].isna().all():
                continue
            rows.append((m, [format_delta(r[m], r.get(f"{m}_delta_pct"), hb, r[compare_by] == baseline)
                             for _, r in g.iterrows()]))  # fmt: skip
        yield group, names, rows, [int(n) for n in g["num_seeds"]]


def print_table(table: pd.DataFrame, compare_by: str, baseline: str, title: str, console=None) -> None:
    """Policies (or whatever ``compare_by`` is) side by side, one table per group, deltas in %."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if table.empty:
        console.print(f"[yellow]{title}: no finished cells to compare[/]")
        return
    for group, names, rows, seeds in _side_by_side(table, compare_by, baseline):
        t = Table(title=f"{title}: {group}  (mean over seeds; change vs {compare_by}={baseline})")
        t.add_column("metric")
        for name, n in zip(names, seeds):
            t.add_column(f"{name} ({n} seed{'s' if n != 1 else ''})", justify="right")
        for m, vals in rows:
            t.add_row(m, *[f"[{c}]{x}[/]" if c else x for x, c in vals])
        console.print(t)


def save_table_png(table: pd.DataFrame, compare_by: str, baseline: str, path: Path, title: str) -> Path:
    blocks = list(_side_by_side(table, compare_by, baseline))
    height = sum(0.5 + 0.3 * (len(rows) + 1) for _, _, rows, _ in blocks)
    width = 2.5 + 1.9 * max(len(names) for _, names, _, _ in blocks)
    fig, axes = plt.subplots(len(blocks), 1, figsize=(width, height + 0.4), squeeze=False)
    shade = {"green": "#d5f5d5", "red": "#f9d6d5"}
    for ax, (group, names, rows, _) in zip(axes[:, 0], blocks):
        ax.axis("off")
        tab = ax.table(
            cellText=[[m] + [x for x, _ in vals] for m, vals in rows],
            cellColours=[["white"] + [shade.get(c, "white") for _, c in vals] for _, vals in rows],
            colLabels=["metric", *names], loc="center", cellLoc="right",
        )  # fmt: skip
        tab.auto_set_font_size(False)
        tab.set_fontsize(8)
        tab.auto_set_column_width(list(range(len(names) + 1)))
        ax.set_title(f"{title}: {group} (change vs {compare_by}={baseline})", fontsize=9)
    _save_figure(fig, path, dpi=120, bbox_inches="tight")
    return path


def _groups(cells: list[CellData], compare_by: str) -> dict[str, list[CellData]]:
    out: dict[str, list[CellData]] = {}
    for c in cells:
        if c.status == "FINISHED":
            out.setdefault(c.group(compare_by), []).append(c)
    return out


def plot_ttft_cdf(cells: list[CellData], compare_by: str, path: Path) -> Path | None:
    """CDF of TTFT per compared value (requests pooled over seeds), one panel per group."""
    groups = _groups(cells, compare_by)
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    for ax, (group, cs) in zip(axes[0], groups.items()):
        by: dict[str, list[float]] = {}
        for c in cs:
            if c.records is not None and "ttft_s" in c.records:
                ok = c.records[c.records["ok"] & ~c.records["warmup"]] if "ok" in c.records else c.records
                by.setdefault(c.compared, []).extend((ok["ttft_s"].dropna() * 1e3).tolist())
        for name, vals in by.items():
            x = np.sort(vals)
            ax.step(x, np.arange(1, len(x) + 1) / max(len(x), 1), where="post", label=name)
        ax.set(title=group, xlabel="TTFT (ms)", ylabel="fraction of requests")
        ax.grid(alpha=0.3)
        ax.legend()
    _save_figure(fig, path)
    return path


def plot_latency_percentiles(cells: list[CellData], compare_by: str, path: Path) -> Path | None:
    """Bars of TTFT/TPOT/E2E p50/p90/p99 per compared value (mean over seeds), one panel per group."""
    groups = _groups(cells, compare_by)
    metrics = ["ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99", "e2e_ms_p50", "e2e_ms_p90", "e2e_ms_p99"]
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 3.8), squeeze=False)
    for ax, (group, cs) in zip(axes[0], groups.items()):
        names = list(dict.fromkeys(c.compared for c in cs))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            vals = [np.nanmean([c.summary.get(m, np.nan) for c in cs if c.compared == name]) for m in metrics]
            ax.bar(np.arange(len(metrics)) + i * width, vals, width, label=name)
        ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, [m.replace("_ms_", "\n") for m in metrics])
        ax.set(title=group, ylabel="ms")
        ax.set_yscale("log")
        ax.legend()
    _save_figure(fig, path)
    return path


def plot_timeseries(cells: list[CellData], compare_by: str, path: Path) -> Path | None:
    """KV-cache usage and waiting-queue length over time per compared value (first seed), per group."""
    groups = _groups(cells, compare_by)
    groups = {g: [c for c in cs if c.timeseries is not None and len(c.timeseries)] for g, cs in groups.items()}
    groups = {g: cs for g, cs in groups.items() if cs}
    if not groups:
        return None
    fig, axes = plt.subplots(2, len(groups), figsize=(5 * len(groups), 5.5), squeeze=False, sharex="col")
    for j, (group, cs) in enumerate(groups.items()):
        seen = set()
        for c in cs:
            if c.compared in seen:
                continue
            seen.add(c.compared)
            ts = c.timeseries
            axes[0][j].plot(ts["t_s"], ts["kv_cache_usage"] * 100, label=c.compared)
            axes[1][j].plot(ts["t_s"], ts["num_waiting"], label=c.compared)
        axes[0][j].set(title=group, ylabel="KV cache usage (%)")
        axes[1][j].set(xlabel="time (s)", ylabel="waiting requests")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
            ax.legend()
    _save_figure(fig, path)
    return path


def plot_cell_timeseries(ts: pd.DataFrame, title: str, path: Path) -> Path | None:
    if ts is None or not len(ts):
        return None
    fig, (a, b) = plt.subplots(2, 1, figsize=(6, 4.5), sharex=True)
    a.plot(ts["t_s"], ts["kv_cache_usage"] * 100)
    a.set(title=title, ylabel="KV cache usage (%)")
    b.plot(ts["t_s"], ts["num_running"], label="running")
    b.plot(ts["t_s"], ts["num_waiting"], label="waiting")
    b.set(xlabel="time (s)", ylabel="requests")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    _save_figure(fig, path)
    return path
