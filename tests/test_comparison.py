"""The comparison's statistics on synthetic cells with answers derived by hand (issue 12, item 1).

Known values: Student's t quantiles t(0.975, 1) = 12.706 and t(0.975, 2) = 4.303 (any t table);
the normal approximation of a mean's sampling spread for the bootstrap.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from orchestrator import stats
from orchestrator.report import CellData, comparison_table, label_cells, plot_latency_percentiles, save_table_png
from workloads.metrics import records_frame, summarize
from workloads.records import RequestRecord


def _records(ttfts_ms: list[float]) -> list[RequestRecord]:
    return [RequestRecord(f"r{i}", actual_send_s=0.1 * i, scheduled_send_s=0.1 * i, ttft_s=t / 1e3, e2e_s=t / 1e3 + 0.1,
                          itl_s=[0.01] * 9, prompt_tokens=32, output_tokens=10, requested_output_tokens=10, status=200)
            for i, t in enumerate(ttfts_ms)]  # fmt: skip


def cell(policy: str, seed: int, ttft_p50: float, **coords: str) -> CellData:
    """A finished cell whose TTFT p50 is ``ttft_p50`` (all requests equal)."""
    recs = _records([ttft_p50] * 20)
    return CellData(label=f"policy={policy} seed={seed}", status="FINISHED", in_table=True,
                    coords={"policy": policy, "seed": str(seed), **coords},
                    config={"policy.name": policy, "seed": str(seed), **{f"c.{k}": v for k, v in coords.items()}},
                    summary=summarize(recs), records=records_frame(recs))  # fmt: skip


def test_t_interval_across_seeds_by_hand():
    # mean 12, s = 2, se = 2/sqrt(3), half width = 4.303 * 1.1547 = 4.968
    iv = stats.interval([stats.Sample(str(i), v) for i, v in enumerate([10.0, 12.0, 14.0])], "ttft_ms_p50")
    assert (iv.mean, iv.n, iv.method) == (12.0, 3, "t over seeds")
    assert iv.low == pytest.approx(12 - 4.968, abs=2e-3) and iv.high == pytest.approx(12 + 4.968, abs=2e-3)
    # Two seeds: t(0.975, 1) = 12.706, se = |a - b| / 2
    iv2 = stats.interval([stats.Sample("0", 100.0), stats.Sample("1", 120.0)], "ttft_ms_p50")
    assert (iv2.low, iv2.high) == pytest.approx((110 - 127.06, 110 + 127.06), abs=0.02)


def test_paired_delta_by_seed_is_significant_and_noise_is_not():
    base = [stats.Sample("0", 100.0), stats.Sample("1", 110.0), stats.Sample("2", 90.0)]
    # Differences -20, -18, -20: mean -19.333, s = 1.1547, se = 0.6667, t = -29 (p ~ 0.001)
    d = stats.delta(base, [stats.Sample("0", 80.0), stats.Sample("1", 92.0), stats.Sample("2", 70.0)], "x")
    assert d.method == "paired t by seed" and d.significant is True
    assert d.pct == pytest.approx(-19.333, abs=1e-3)
    assert (d.low_pct, d.high_pct) == pytest.approx((-19.333 - 2.868, -19.333 + 2.868), abs=2e-3)
    assert d.p_value == pytest.approx(0.00119, abs=5e-5)
    # Differences +10 and -50: the mean change (-20%) is within the seeds' noise.
    n = stats.delta([stats.Sample("0", 100.0), stats.Sample("1", 200.0)],
                    [stats.Sample("0", 110.0), stats.Sample("1", 150.0)], "x")  # fmt: skip
    assert n.pct == pytest.approx(-20 / 150 * 100) and n.significant is False and n.p_value > 0.05
    # Disjoint seeds: Welch's test; one value a side and no requests: not testable.
    w = stats.delta(base, [stats.Sample("7", 50.0), stats.Sample("8", 52.0)], "x")
    assert w.method == "Welch t" and w.significant is True
    assert stats.delta(base[:1], [stats.Sample("0", 50.0)], "x").significant is None


def test_one_seed_bootstrap_over_requests_matches_the_normal_approximation():
    # TTFTs 0..999 ms: mean 499.5, sd 288.8, so the mean's 95% interval is ~ +-1.96 * 288.8 / sqrt(1000) = +-17.9
    recs = _records(list(np.arange(1000.0)))
    s = stats.Sample("0", summarize(recs)["ttft_ms_mean"], records_frame(recs), summarize(recs)["duration_s"])
    iv = stats.interval([s], "ttft_ms_mean")
    assert iv.method == "bootstrap over requests" and iv.mean == pytest.approx(499.5)
    assert iv.high - iv.mean == pytest.approx(17.9, rel=0.15) and iv.mean - iv.low == pytest.approx(17.9, rel=0.15)
    # The median's interval covers the true median; a server counter has no per-request form.
    med = stats.interval([stats.Sample("0", 499.5, s.records, s.duration_s)], "ttft_ms_p50")
    assert med.low < 499.5 < med.high
    assert stats.interval([stats.Sample("0", 3.0, s.records, 10.0)], "server_num_preemptions").method == "none"
    # One seed a side: the difference is bootstrapped; +50 ms on every request is far outside the noise.
    shifted = _records(list(np.arange(1000.0) + 50))
    other = stats.Sample("0", summarize(shifted)["ttft_ms_mean"], records_frame(shifted), 100.0)
    d = stats.delta([s], [other], "ttft_ms_mean")
    assert d.method == "bootstrap over requests" and d.significant is True
    assert d.pct == pytest.approx(50 / 499.5 * 100) and d.low_pct < d.pct < d.high_pct


LONG = "my_lab.policies.a_rather_long_module_name.WaitBoundedShortestJobFirstPolicy"


def test_table_keys_on_grid_values_with_intervals_and_significance(tmp_path):
    cells = [
        cell("fcfs", 0, 100.0), cell("fcfs", 1, 110.0), cell("fcfs", 2, 90.0),
        # one policy class, two configs: two columns, not one average
        cell(LONG, 0, 80.0, **{"policy.args.max_wait_s": "2"}),
        cell(LONG, 1, 92.0, **{"policy.args.max_wait_s": "2"}),
        cell(LONG, 2, 70.0, **{"policy.args.max_wait_s": "2"}),
        cell(LONG, 0, 101.0, **{"policy.args.max_wait_s": "1000"}),
        cell(LONG, 1, 109.0, **{"policy.args.max_wait_s": "1000"}),
        cell(LONG, 2, 91.0, **{"policy.args.max_wait_s": "1000"}),
        CellData(label="policy=fcfs seed=3", status="FINISHED", coords={"policy": "fcfs", "seed": "3"},
                 summary={"ttft_ms_p50": 1e6}, reasons=["189 of 200 requests failed"]),  # invalid: not in table
    ]  # fmt: skip
    label_cells(cells, "policy")
    table = comparison_table(cells, "policy", "fcfs")
    assert list(table["policy"]) == ["fcfs", f"{LONG} args.max_wait_s=2", f"{LONG} args.max_wait_s=1000"]
    assert list(table["n_seeds"]) == [3, 3, 3]
    for col in ("n_seeds", "ttft_ms_p50", "ttft_ms_p50_ci95_low", "ttft_ms_p50_ci95_high", "ttft_ms_p50_significant",
                "ttft_ms_p99_ci95_low", "e2e_ms_p50_significant"):  # fmt: skip
        assert col in table.columns, col
    fcfs, short, long_wait = (table.iloc[i] for i in range(3))
    assert fcfs["ttft_ms_p50"] == pytest.approx(100.0)  # the invalid seed's 1e6 is not averaged in
    assert (fcfs["ttft_ms_p50_ci95_low"], fcfs["ttft_ms_p50_ci95_high"]) == pytest.approx((100 - 24.84, 100 + 24.84),
                                                                                       abs=0.01)  # fmt: skip
    assert short["ttft_ms_p50_delta_pct"] == pytest.approx(-19.333, abs=1e-3) and short["ttft_ms_p50_significant"]
    # +1, -1, +1 ms: paired t = 0.5, p = 0.67
    assert long_wait["ttft_ms_p50_significant"] == False  # noqa: E712 (numpy bool)
    csv = tmp_path / "comparison.csv"
    table.to_csv(csv, index=False)
    back = pd.read_csv(csv)
    assert back.loc[1, "policy"].endswith("WaitBoundedShortestJobFirstPolicy args.max_wait_s=2")
    assert save_table_png(table, "policy", "fcfs", tmp_path / "t.png", "x").stat().st_size > 1000
    assert plot_latency_percentiles(cells, "policy", tmp_path / "p.png").stat().st_size > 1000


def test_terminal_table_shows_interval_and_marks(capsys):
    from rich.console import Console

    from orchestrator.report import print_table

    cells = [cell("fcfs", s, v) for s, v in enumerate([100.0, 110.0, 90.0])]
    cells += [cell("sjf", s, v) for s, v in enumerate([80.0, 92.0, 70.0])]
    cells += [cell("ljf", s, v) for s, v in enumerate([101.0, 109.0, 91.0])]
    label_cells(cells, "policy")
    table = comparison_table(cells, "policy", "fcfs")
    console = Console(width=250, force_terminal=False)
    print_table(table, "policy", "fcfs", "demo", console)
    out = capsys.readouterr().out
    assert "100 [75.2, 125]" in out  # 100 +- 24.84
    assert "80.7 [" in out and "-19% *" in out
    assert "+0% n.s." in out and "sjf (3 seeds)" in out
    assert math.isnan(table.iloc[0].get("ttft_ms_p50_delta_p", math.nan))


def test_same_overrides_but_different_code_are_two_columns():
    """Cells recorded before and after the plugin's source changed share their overrides: never averaged."""
    old = [cell("sjf", s, v) for s, v in enumerate([50.0, 60.0])]
    new = [cell("sjf", s, v) for s, v in enumerate([30.0, 40.0])]
    for c in old:
        c.config["plugin_source_hash"] = "aaaa"
    for c in new:
        c.config["plugin_source_hash"] = "bbbb"
    cells = [cell("fcfs", 0, 100.0), cell("fcfs", 1, 100.0), *old, *new]
    label_cells(cells, "policy")
    table = comparison_table(cells, "policy", "fcfs")
    assert list(table["policy"]) == ["fcfs", "sjf [plugin_source_hash=aaaa]", "sjf [plugin_source_hash=bbbb]"]
    assert list(table["ttft_ms_p50"]) == pytest.approx([100.0, 55.0, 35.0])


def test_a_group_without_its_baseline_says_so(capsys):
    from rich.console import Console

    from orchestrator.report import print_table

    cells = [cell("sjf", s, v) for s, v in enumerate([80.0, 92.0])]  # fcfs cells invalid or failed
    label_cells(cells, "policy")
    table = comparison_table(cells, "policy", "fcfs")
    print_table(table, "policy", "fcfs", "demo", Console(width=250))
    assert "no valid policy=fcfs cell here: no deltas" in " ".join(capsys.readouterr().out.split())
    assert "ttft_ms_p50_delta_pct" not in table.columns
