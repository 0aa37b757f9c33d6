"""Comparison table and plots across the cells of an experiment.

Cells are labelled by their grid coordinates (the override values, plus command-line overrides
that change the cell): the columns are the values of the compared key (``policy`` by default,
with any ``policy.*`` sub-keys that vary, so two configs of one policy class are two columns);
the rows' groups are the other coordinates that vary. Cells that differ only in ``seed`` are one
series: the table shows its mean over seeds with a 95% interval, and per series its change
against the baseline (e.g. ``fcfs``) of the same group with a significance test
(``orchestrator.stats``; docs/metrics.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from orchestrator import stats  # noqa: E402

# (metric, higher is better) shown in the table, in this order, when present.
TABLE_METRICS: list[tuple[str, bool]] = [
    ("ttft_ms_p50", False),
    ("ttft_ms_p99", False),
    ("tpot_ms_p50", False),
    ("e2e_ms_mean", False),
    ("e2e_ms_p50", False),
    ("e2e_ms_p99", False),
    ("norm_latency_ms_mean", False),
    ("itl_ms_p99", False),
    ("qoe_mean", True),
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
LEGEND = ("[low, high]: 95% interval of the mean (t across seeds; one seed: bootstrap over its requests); "
          "* = the change vs the baseline is distinguishable from noise at 95% (paired t-test by seed, Welch "
          "t-test, or a bootstrap over requests with one seed), n.s. = it is not (or cannot be tested)")  # fmt: skip


@dataclass
class CellData:
    """What the report needs from one cell (freshly run or read back from MLflow)."""

    label: str  # the cell's grid coordinates, e.g. "policy=sjf workload=azure_sample seed=0"
    status: str  # FINISHED | FAILED | KILLED | RUNNING
    coords: dict[str, str] = field(default_factory=dict)  # override key -> value (grid + command line)
    config: dict[str, str] = field(default_factory=dict)  # flattened identity config (tells series apart)
    summary: dict[str, float] = field(default_factory=dict)
    records: pd.DataFrame | None = None
    timeseries: pd.DataFrame | None = None
    run_id: str | None = None
    key: str = ""  # cell key
    reasons: list[str] = field(default_factory=list)  # why the cell is invalid; [] = valid
    in_table: bool = False  # FINISHED and (valid or invalid_ok): set by the experiment
    compared: str = ""  # column label (label_cells)
    group: str = ""  # row-group label (label_cells)
    attempts: int = 1  # runs of this cell in MLflow (disturbed, failed or killed ones and re-runs included)

    @property
    def valid(self) -> bool:
        return not self.reasons

    @property
    def seed(self) -> str:
        return str(self.coords.get("seed", self.config.get("seed", "")))

    def value(self, key: str) -> str:
        return str(self.coords[key]) if key in self.coords else str(self.config.get(key, "-"))

    def series(self) -> str:
        """Identity of the config without its seed: the cells averaged into one table entry."""
        rest = {k: v for k, v in self.config.items() if k not in SEED_KEYS}
        return hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:12]


def _save_figure(fig, path: Path, dpi: int = 110, **savefig_kw: Any) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, **savefig_kw)
    plt.close(fig)


def _compared_key(key: str, compare_by: str) -> bool:
    return key == compare_by or key.startswith(compare_by + ".")


def label_cells(cells: list[CellData], compare_by: str) -> None:
    """Set ``compared`` and ``group`` of the table's cells from the coordinates that vary among them.

    Full values, never truncated; two series that would still share a label (e.g. the same
    overrides after a config file or the plugin's source changed) get the differing config keys.
    """
    shown = [c for c in cells if c.in_table]
    keys = list(dict.fromkeys(k for c in shown for k in c.coords))
    varying = [k for k in keys if k not in SEED_KEYS and len({c.value(k) for c in shown}) > 1]
    for c in shown:
        sub = [f"{k[len(compare_by) + 1:]}={c.value(k)}" for k in varying
               if k.startswith(compare_by + ".") and c.value(k) != "-"]  # fmt: skip
        c.compared = " ".join([c.value(compare_by), *sub])
        c.group = " ".join(f"{k}={c.value(k)}" for k in varying if not _compared_key(k, compare_by)) or "all"
    by_label: dict[tuple[str, str], dict[str, CellData]] = {}
    for c in shown:
        by_label.setdefault((c.group, c.compared), {}).setdefault(c.series(), c)
    for series in by_label.values():
        if len(series) < 2:
            continue
        firsts = list(series.values())
        diff = sorted(k for k in set().union(*(s.config for s in firsts)) if k not in SEED_KEYS
                      and len({s.config.get(k) for s in firsts}) > 1)  # fmt: skip
        tags = {sid: " ".join(f"{k}={s.config.get(k, '-')}" for k in diff) for sid, s in series.items()}
        for c in shown:
            if c.series() in tags and (c.group, c.compared) in by_label and by_label[(c.group, c.compared)] is series:
                c.compared = f"{c.compared} [{tags[c.series()]}]"


def _entries(cells: list[CellData]) -> dict[tuple[str, str], list[CellData]]:
    out: dict[tuple[str, str], list[CellData]] = {}
    for c in cells:
        if c.in_table:
            out.setdefault((c.group, c.compared), []).append(c)
    return out


def _samples(cs: list[CellData], metric: str) -> list[stats.Sample]:
    return [stats.Sample(c.seed, c.summary.get(metric, np.nan), c.records, c.summary.get("duration_s"))
            for c in cs if metric in c.summary]  # fmt: skip


def _baseline_of(entries: dict[tuple[str, str], list[CellData]], group: str, compare_by: str, baseline: str):
    names = [n for g, n in entries if g == group]
    exact = [n for n in names if n == baseline]
    loose = [n for n in names if entries[(group, n)][0].value(compare_by) == str(baseline)]
    return (exact or loose or [None])[0]


def comparison_table(cells: list[CellData], compare_by: str, baseline: str) -> pd.DataFrame:
    """One row per (group, compared value): per metric the mean over seeds, its 95% interval
    (``<m>_ci95_low/high``) and vs the group's baseline ``<m>_delta_pct`` with its interval,
    p-value and ``<m>_significant`` (empty where not testable)."""
    if any(c.in_table and not c.compared for c in cells):
        label_cells(cells, compare_by)
    entries = _entries(cells)
    if not entries:
        return pd.DataFrame()
    present = {k for cs in entries.values() for c in cs for k in c.summary}
    metrics = [m for m, _ in TABLE_METRICS if m in present]
    rows = []
    for (group, name), cs in entries.items():
        row: dict[str, Any] = {"group": group, compare_by: name, "n_seeds": len(cs),
                               "seeds": ",".join(sorted({c.seed for c in cs}))}  # fmt: skip
        base_name = _baseline_of(entries, group, compare_by, baseline)
        for m in metrics:
            iv = stats.interval(_samples(cs, m), m)
            row.update({m: iv.mean, f"{m}_ci95_low": iv.low, f"{m}_ci95_high": iv.high})
            if base_name is None:
                continue
            if name == base_name:
                row.update({f"{m}_delta_pct": 0.0, f"{m}_significant": None})
                continue
            d = stats.delta(_samples(entries[(group, base_name)], m), _samples(cs, m), m)
            row.update({f"{m}_delta_pct": d.pct, f"{m}_delta_ci95_low": d.low_pct, f"{m}_delta_ci95_high": d.high_pct,
                        f"{m}_delta_p": d.p_value, f"{m}_delta_test": d.method, f"{m}_significant": d.significant})  # fmt: skip
        rows.append(row)
    groups = list(dict.fromkeys(g for g, _ in entries))
    bases = {g: _baseline_of(entries, g, compare_by, baseline) for g in groups}
    rows.sort(key=lambda r: (groups.index(r["group"]), r[compare_by] != bases[r["group"]]))  # baseline first
    return pd.DataFrame(rows)


def _num(v: float) -> str:
    return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def format_cell(row: pd.Series, m: str, higher_better: bool, is_baseline: bool) -> tuple[str, str]:
    """``mean [low, high]`` and, off the baseline, ``+12% *`` / ``+3% n.s.``; green/red only when significant."""
    value = row.get(m)
    if value is None or pd.isna(value):
        return "-", ""
    lo, hi = row.get(f"{m}_ci95_low"), row.get(f"{m}_ci95_high")
    text = _num(value) + (f" [{_num(lo)}, {_num(hi)}]" if pd.notna(lo) and pd.notna(hi) else " [no interval]")
    d = row.get(f"{m}_delta_pct")
    if is_baseline or d is None or pd.isna(d):
        return text, ""
    sig = row.get(f"{m}_significant")
    if sig is True or sig == 1:
        better = d > 0 if higher_better else d < 0
        return f"{text} {d:+.0f}% *", "green" if better else "red"
    return f"{text} {d:+.0f}% n.s.", ""


def side_by_side(table: pd.DataFrame, compare_by: str, baseline: str):
    """Per group: (group, compared values, rows of (metric, [(text, color) per value]), seeds)."""
    for group, g in table.groupby("group", sort=False):
        names = [str(v) for v in g[compare_by]]
        base = [n for n in names if n == str(baseline)] or [
            n for n in names if n.split(" ")[0] == str(baseline)]  # fmt: skip
        rows = []
        for m, hb in TABLE_METRICS:
            if m not in g.columns or g[m].isna().all():
                continue
            rows.append((m, [format_cell(r, m, hb, base[:1] == [str(r[compare_by])]) for _, r in g.iterrows()]))
        label = group if base else f"{group} (no valid {compare_by}={baseline} cell here: no deltas)"
        yield label, names, rows, [int(n) for n in g["n_seeds"]]


def print_table(table: pd.DataFrame, compare_by: str, baseline: str, title: str, console=None) -> None:
    """Compared values side by side, one table per group: mean [95% interval], change vs baseline."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    if table.empty:
        console.print(f"[yellow]{title}: no valid finished cells to compare[/]")
        return
    for group, names, rows, seeds in side_by_side(table, compare_by, baseline):
        t = Table(title=escape(f"{title}: {group}  (mean over seeds [95% interval]; change vs {compare_by}={baseline})"))
        t.add_column("metric", no_wrap=True)
        for name, n in zip(names, seeds):
            t.add_column(escape(f"{name} ({n} seed{'s' if n != 1 else ''})"), justify="right", overflow="fold")
        for m, vals in rows:
            t.add_row(m, *[f"[{c}]{escape(x)}[/]" if c else escape(x) for x, c in vals])
        console.print(t)
    console.print(LEGEND, style="dim", markup=False)


def save_table_png(table: pd.DataFrame, compare_by: str, baseline: str, path: Path, title: str) -> Path:
    blocks = list(side_by_side(table, compare_by, baseline))
    height = sum(0.5 + 0.3 * (len(rows) + 1) for _, _, rows, _ in blocks)
    width = 2.5 + 2.6 * max(len(names) for _, names, _, _ in blocks)
    fig, axes = plt.subplots(len(blocks), 1, figsize=(width, height + 0.8), squeeze=False)
    shade = {"green": "#d5f5d5", "red": "#f9d6d5"}
    for ax, (group, names, rows, seeds) in zip(axes[:, 0], blocks):
        ax.axis("off")
        tab = ax.table(
            cellText=[[m] + [x for x, _ in vals] for m, vals in rows],
            cellColours=[["white"] + [shade.get(c, "white") for _, c in vals] for _, vals in rows],
            colLabels=["metric", *[f"{n} ({k} seed{'s' if k != 1 else ''})" for n, k in zip(names, seeds)]],
            loc="center", cellLoc="right",
        )  # fmt: skip
        tab.auto_set_font_size(False)
        tab.set_fontsize(8)
        tab.auto_set_column_width(list(range(len(names) + 1)))
        ax.set_title(f"{title}: {group} (mean [95% interval], change vs {compare_by}={baseline})", fontsize=9)
    fig.text(0.01, 0.005, LEGEND.replace("; *", ";\n*"), fontsize=6, va="bottom")
    _save_figure(fig, path, dpi=120, bbox_inches="tight")
    return path


def _groups(cells: list[CellData]) -> dict[str, dict[str, list[CellData]]]:
    """group -> compared value -> the series' cells (one per seed)."""
    out: dict[str, dict[str, list[CellData]]] = {}
    for (group, name), cs in _entries(cells).items():
        out.setdefault(group, {})[name] = cs
    return out


def _colors(names) -> dict[str, Any]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {n: cycle[i % len(cycle)] for i, n in enumerate(names)}


def plot_ttft_cdf(cells: list[CellData], compare_by: str, path: Path) -> Path | None:
    """CDF of TTFT per compared value, one line per seed (the spread between seeds), one panel per group."""
    groups = _groups(cells)
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    for ax, (group, series) in zip(axes[0], groups.items()):
        color = _colors(series)
        for name, cs in series.items():
            for i, c in enumerate(cs):
                if c.records is None or "ttft_s" not in c.records:
                    continue
                ok = c.records[c.records["ok"] & ~c.records["warmup"]] if "ok" in c.records else c.records
                x = np.sort(ok["ttft_s"].dropna().to_numpy() * 1e3)
                ax.step(x, np.arange(1, len(x) + 1) / max(len(x), 1), where="post", color=color[name], alpha=0.8,
                        lw=1.2, label=f"{name} ({len(cs)} seed{'s' if len(cs) != 1 else ''})" if i == 0 else None)  # fmt: skip
        ax.set(title=group, xlabel="TTFT (ms)", ylabel="fraction of requests")
        ax.set_xscale("symlog", linthresh=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("one line per seed", fontsize=9)
    _save_figure(fig, path)
    return path


def plot_latency_percentiles(cells: list[CellData], compare_by: str, path: Path) -> Path | None:
    """Bars of TTFT/E2E p50/p90/p99 per compared value: mean over seeds, 95% interval as error bar,
    each seed's value as a dot; one panel per group."""
    groups = _groups(cells)
    metrics = ["ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99", "e2e_ms_p50", "e2e_ms_p90", "e2e_ms_p99"]
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 3.8), squeeze=False)
    for ax, (group, series) in zip(axes[0], groups.items()):
        width = 0.8 / len(series)
        for i, (name, cs) in enumerate(series.items()):
            x = np.arange(len(metrics)) + i * width
            ivs = [stats.interval(_samples(cs, m), m) for m in metrics]
            mean = np.array([iv.mean for iv in ivs])
            err = np.array([[iv.mean - iv.low, iv.high - iv.mean] for iv in ivs]).T
            ax.bar(x, mean, width, label=name, alpha=0.75)
            ax.errorbar(x, mean, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=2, lw=0.8)
            for c in cs:
                ax.plot(x, [c.summary.get(m, np.nan) for m in metrics], "k.", ms=3)
        ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, [m.replace("_ms_", "\n") for m in metrics])
        ax.set(title=group, ylabel="ms")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle("bars: mean over seeds, whiskers: 95% interval, dots: each seed", fontsize=9)
    _save_figure(fig, path)
    return path


def plot_timeseries(cells: list[CellData], compare_by: str, path: Path) -> Path | None:
    """KV-cache usage and waiting-queue length over time per compared value, every seed, per group."""
    groups = {g: {n: [c for c in cs if c.timeseries is not None and len(c.timeseries)] for n, cs in s.items()}
              for g, s in _groups(cells).items()}  # fmt: skip
    groups = {g: {n: cs for n, cs in s.items() if cs} for g, s in groups.items()}
    groups = {g: s for g, s in groups.items() if s}
    if not groups:
        return None
    fig, axes = plt.subplots(2, len(groups), figsize=(5 * len(groups), 5.5), squeeze=False, sharex="col")
    for j, (group, series) in enumerate(groups.items()):
        color = _colors(series)
        for name, cs in series.items():
            for i, c in enumerate(cs):
                ts, lab = c.timeseries, name if i == 0 else None
                axes[0][j].plot(ts["t_s"], ts["kv_cache_usage"] * 100, color=color[name], alpha=0.7, lw=1, label=lab)
                axes[1][j].plot(ts["t_s"], ts["num_waiting"], color=color[name], alpha=0.7, lw=1, label=lab)
        axes[0][j].set(title=group, ylabel="KV cache usage (%)")
        axes[1][j].set(xlabel="time (s)", ylabel="waiting requests")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("one line per seed", fontsize=9)
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
