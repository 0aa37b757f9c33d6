"""``results/<exp>/report.html``: one self-contained page per experiment (plots inlined as base64).

The comparison with its 95% intervals and significance marks (the same cells as the terminal
table), the plots, and every cell of the experiment found in MLflow with its validity verdict and
a link to its MLflow run.
"""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, select_autoescape
from omegaconf import DictConfig

from orchestrator.report import LEGEND, CellData, side_by_side

PLOTS = (
    ("latency_percentiles.png", "Latency percentiles (bars: mean over seeds, whiskers: 95% interval, dots: seeds)"),
    ("ttft_cdf.png", "TTFT distribution (one line per seed)"),
    ("kv_usage_queue_length.png", "KV-cache usage and waiting queue over time (one line per seed)"),
)
MLFLOW_UI = "http://127.0.0.1:5000"  # `mlflow ui --backend-store-uri <tracking uri>`

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ name }}: schedlab report</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
 table { border-collapse: collapse; margin: 8px 0 18px; font-size: 13px; }
 th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: top; }
 th { background: #f2f2f2; } td.l, th.l { text-align: left; }
 td.green { background: #d5f5d5; } td.red { background: #f9d6d5; }
 tr.invalid td { background: #fff4d6; } tr.failed td { background: #fde2e1; }
 .legend, .meta { color: #555; font-size: 12px; } img { max-width: 100%; border: 1px solid #eee; }
 code { font-size: 12px; }
</style></head><body>
<h1>{{ name }}</h1>
<p class="meta">Generated {{ now }} &middot; {{ n_cells }} cells in MLflow ({{ n_table }} in the comparison)
 &middot; tracking URI <code>{{ tracking_uri }}</code> &middot; parent run <code>{{ parent_id }}</code></p>
<h2 id="comparison">Comparison</h2>
{% if not blocks %}<p><b>No valid finished cells to compare.</b></p>{% endif %}
{% for group, names, rows, seeds in blocks %}
<h3>{{ group }} <small>(mean over seeds [95% interval]; change vs {{ compare_by }}={{ baseline }})</small></h3>
<table><tr><th class="l">metric</th>{% for n, k in zip(names, seeds) %}<th>{{ n }} ({{ k }} seed{{ "s" if k != 1 }})</th>{% endfor %}</tr>
{% for m, vals in rows %}<tr><td class="l">{{ m }}</td>{% for text, color in vals %}<td class="{{ color }}">{{ text }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}
<p class="legend">{{ legend }}</p>
<h2 id="plots">Plots</h2>
{% for title, data in plots %}<h3>{{ title }}</h3><img alt="{{ title }}" src="data:image/png;base64,{{ data }}">
{% endfor %}
<h2 id="cells">Cells</h2>
<table><tr><th class="l">cell</th><th class="l">status</th><th class="l">validity</th><th class="l">in table as</th>
<th class="l">MLflow run</th><th>runs</th></tr>
{% for c in cells %}<tr class="{{ 'failed' if c.status != 'FINISHED' else ('invalid' if not c.valid else '') }}">
<td class="l">{{ c.label }}</td><td class="l">{{ c.status }}</td>
<td class="l">{{ 'valid' if c.status == 'FINISHED' and c.valid else '; '.join(c.reasons) }}</td>
<td class="l">{{ (c.group ~ ' / ' ~ c.compared) if c.in_table else '(excluded)' }}</td>
<td class="l">{% if c.run_id %}<a href="{{ ui }}/#/experiments/{{ experiment_id }}/runs/{{ c.run_id }}"><code>{{ c.run_id }}</code></a>{% endif %}</td>
<td title="runs of this cell in MLflow: disturbed, failed or interrupted attempts and re-runs included">{{ c.attempts }}</td></tr>
{% endfor %}</table>
<p class="meta">Run links open the MLflow UI at {{ ui }} (<code>mlflow ui --backend-store-uri {{ tracking_uri }}</code>).</p>
</body></html>
"""


def _inline(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def render(cfg: DictConfig, table: pd.DataFrame, cells: list[CellData], plot_dir: Path, tracker: Any) -> str:
    uri = str(tracker.tracking_uri)
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    return env.from_string(TEMPLATE).render(
        name=cfg.experiment_name, now=datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        n_cells=len(cells), n_table=sum(c.in_table for c in cells), tracking_uri=uri, parent_id=tracker.parent_id,
        blocks=[] if table.empty else list(side_by_side(table, cfg.compare_by, cfg.baseline)),
        compare_by=cfg.compare_by, baseline=cfg.baseline, legend=LEGEND, zip=zip,
        plots=[(title, _inline(plot_dir / f)) for f, title in PLOTS if (plot_dir / f).exists()],
        cells=cells, experiment_id=tracker.experiment_id, ui=uri.rstrip("/") if uri.startswith("http") else MLFLOW_UI,
    )  # fmt: skip


def write_report(path: Path, cfg: DictConfig, table: pd.DataFrame, cells: list[CellData], plot_dir: Path,
                 tracker: Any) -> Path:  # fmt: skip
    path.write_text(render(cfg, table, cells, plot_dir, tracker), encoding="utf-8")
    return path
