"""Andes' QoE (workloads.metrics.qoe) on hand-derived timelines, and against a direct integration."""

from __future__ import annotations

import numpy as np
import pytest

from workloads.metrics import qoe, summarize, token_times
from workloads.records import RequestRecord

# Expected pace in these examples: first token at 1 s, then 1 token/s -> due at 1, 2, 3, ...
PACE = {"expected_ttft_s": 1.0, "expected_tds": 1.0}


def test_on_time_or_early_delivery_is_full_qoe():
    assert qoe([1, 2, 3], **PACE) == 1.0
    assert qoe([0.1, 0.2, 0.3], **PACE) == 1.0  # early tokens are read no sooner


def test_late_first_token_at_reading_pace():
    # actual 2,3,4: up to t_end=4 the expected curve has area 3+2+1=6, the capped actual 2+1+0=3
    assert qoe([2, 3, 4], **PACE) == pytest.approx(0.5)


def test_stall_before_the_last_token():
    # actual 1,2,5: expected area (5-1)+(5-2)+(5-3)=9, capped actual (5-1)+(5-2)+(5-5)=7
    assert qoe([1, 2, 5], **PACE) == pytest.approx(7 / 9)


def test_nothing_until_the_end_and_no_tokens():
    assert qoe([3, 3, 3], **PACE) == 0.0
    assert qoe([], **PACE) == 0.0
    assert qoe([1.5], **PACE) == 0.0 and qoe([0.5], **PACE) == 1.0


def _integrated(times, ttft, tds, dt=1e-3):
    """min(actual, expected) and expected token counts integrated on a fine grid (no closed form)."""
    a = np.sort(np.asarray(times))
    e = ttft + np.arange(a.size) / tds
    t = np.arange(0, max(a[-1], e[-1]), dt) + dt / 2
    actual = np.searchsorted(a, t, side="right")
    expected = np.searchsorted(e, t, side="right")
    return np.minimum(actual, expected).sum() / expected.sum()


@pytest.mark.parametrize("seed", range(4))
def test_matches_numerical_integration(seed):
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(0.3, size=25)) + rng.uniform(0, 3)
    assert qoe(times, expected_ttft_s=1.0, expected_tds=4.0) == pytest.approx(_integrated(times, 1.0, 4.0), abs=2e-3)


def test_summary_qoe_from_records():
    on_time = RequestRecord("a", ttft_s=0.5, e2e_s=0.9, itl_s=[0.2, 0.2], output_tokens=3, status=200)
    failed = RequestRecord("b", status=0, error="timeout")
    assert list(token_times(on_time)) == pytest.approx([0.5, 0.7, 0.9])
    s = summarize([on_time, failed])
    assert s["qoe_mean"] == pytest.approx(0.5)  # a failed request counts as QoE 0
    assert s["norm_latency_ms_mean"] == pytest.approx(900 / 3)
