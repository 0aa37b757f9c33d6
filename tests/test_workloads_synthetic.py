"""Synthetic arrivals and lengths (seeded statistics) and the trace transforms."""

from __future__ import annotations

import numpy as np
import pytest

from workloads import clip_lengths, materialize, sample_lengths, synthetic, time_scale, truncate, with_rate


def _gaps(trace):
    return np.diff([r.arrival_s for r in trace])


@pytest.mark.parametrize("arrival, cv", [("poisson", 1.0), ("gamma", 0.5), ("gamma", 3.0)])
def test_arrival_rate_and_burstiness(arrival, cv):
    t = synthetic(num_requests=20_000, rate=50.0, arrival=arrival, cv=cv, seed=7)
    gaps = _gaps(t)
    assert t[0].arrival_s == 0.0 and (gaps >= 0).all()
    assert (len(t) - 1) / t.duration_s == pytest.approx(50.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.08)


def test_seeded_and_deterministic():
    a = synthetic(num_requests=50, rate=5, seed=3, prompt_len="uniform:1:100")
    b = synthetic(num_requests=50, rate=5, seed=3, prompt_len="uniform:1:100")
    c = synthetic(num_requests=50, rate=5, seed=4, prompt_len="uniform:1:100")
    assert a == b and a != c


def test_length_specs():
    rng = np.random.default_rng(0)
    assert (sample_lengths(77, 10, rng) == 77).all()
    u = sample_lengths("uniform:10:20", 5000, rng)
    assert u.min() == 10 and u.max() == 20
    ln = sample_lengths({"dist": "lognormal", "mean": 300, "sigma": 0.6}, 50_000, rng)
    assert ln.mean() == pytest.approx(300, rel=0.03)
    capped = sample_lengths({"dist": "lognormal", "mean": 300, "sigma": 1.5, "max": 512}, 1000, rng)
    assert capped.max() == 512 and capped.min() >= 1
    emp = sample_lengths([3, 9, 27], 3000, rng)
    assert set(emp) == {3, 9, 27}
    for bad in ("normal:1:2", {"dist": "zipf"}, "uniform:5", {"dist": "uniform", "low": 1}, True):
        with pytest.raises(ValueError, match="length spec"):
            sample_lengths(bad, 3, rng)


def test_tenants_priorities_deadlines_prefix_groups():
    t = synthetic(num_requests=4000, rate=100, tenants={"gold": 1, "free": 3}, tenant_priority={"gold": -1},
                  deadline_s={"gold": 2.0}, output_len_hint=True, prefix_groups=4, prefix_blocks=2, seed=1)
    gold = [r for r in t if r.tenant == "gold"]
    assert len(gold) / len(t) == pytest.approx(0.25, abs=0.03)
    assert all(r.priority == -1 and r.deadline_s == 2.0 for r in gold)
    assert all(r.priority == 0 and r.deadline_s is None for r in t if r.tenant == "free")
    assert all(r.output_len_hint == r.output_len for r in t)
    assert {r.prefix_hash_ids for r in t} == {(0, 1), (2, 3), (4, 5), (6, 7)}
    with pytest.raises(ValueError, match="unknown tenant 'silver'"):
        synthetic(num_requests=3, tenants={"a": 1}, tenant_priority={"silver": 1})
    with pytest.raises(ValueError, match="unknown arrival process 'uniform'"):
        synthetic(num_requests=3, arrival="uniform")
    with pytest.raises(ValueError, match="rate must be > 0"):
        synthetic(num_requests=3, rate=0)


def test_transforms():
    t = synthetic(num_requests=1000, rate=10, seed=2, prompt_len="uniform:100:3000", output_len="uniform:1:2000")
    fast = time_scale(t, 4.0)
    assert fast.duration_s == pytest.approx(t.duration_s / 4) and t.duration_s > fast.duration_s  # input unchanged
    r50 = with_rate(t, 50.0)
    assert (len(r50) - 1) / r50.duration_s == pytest.approx(50.0)
    assert np.allclose(_gaps(r50) / _gaps(r50).sum(), _gaps(t) / _gaps(t).sum())  # burst shape kept
    fresh = with_rate(t, 5.0, arrival="gamma", cv=2.0, seed=9)
    assert (len(fresh) - 1) / fresh.duration_s == pytest.approx(5.0, rel=0.25)
    assert len(truncate(t, 10)) == 10
    short = truncate(t, duration_s=5.0)
    assert short.duration_s < 5.0 and len(short) == sum(r.arrival_s < 5.0 for r in t)
    assert len(truncate(t, 20, duration_s=100.0)) == 20
    clipped = clip_lengths(t, 2048)
    assert all(r.prompt_len + r.output_len <= 2048 and r.output_len >= 1 for r in clipped)
    assert any(r.prompt_len == 2047 for r in clipped)
    with pytest.raises(ValueError, match="no arrival-time spread"):
        with_rate(with_rate(t, 1.0, arrival="poisson").derive([t[0]]), 3.0)


def test_clip_keeps_materialized_prefix_consistent(tiny_model_dir):
    t = synthetic(num_requests=6, prompt_len=1500, prefix_groups=1, prefix_blocks=3, seed=0)
    materialize(t, tiny_model_dir)
    c = clip_lengths(t, 700)
    assert all(r.prompt_len == 699 and len(r.prompt_token_ids) == 699 and r.prefix_hash_ids == (0, 1) for r in c)
    assert c[0].prompt_token_ids == c[5].prompt_token_ids  # same prefix group -> same tokens
    fresh = clip_lengths(synthetic(num_requests=2, prompt_len=1500, prefix_groups=1, prefix_blocks=3), 700)
    materialize(fresh, tiny_model_dir)
    assert fresh[0].prompt_token_ids == c[0].prompt_token_ids  # deterministic per hash id


def test_noisy_hints_lower_the_rank_correlation_and_keep_the_requests():
    from scipy.stats import kendalltau

    kw = dict(num_requests=2000, rate=5.0, output_len="lognormal:300:1.0", output_len_hint=True, seed=3)
    exact = synthetic(**kw)
    taus = []
    for sigma in (0.5, 1.0, 2.0):
        noisy = synthetic(**kw, hint_noise=sigma)
        assert [(r.arrival_s, r.prompt_len, r.output_len) for r in noisy] == [(r.arrival_s, r.prompt_len, r.output_len) for r in exact]
        taus.append(kendalltau([r.output_len for r in noisy], [r.output_len_hint for r in noisy]).statistic)
    # log-normal lengths (sigma_L = 1) times log-normal noise: tau = (2/pi) asin(1 / sqrt(1 + s^2)) (Greiner's relation)
    expected = [2 / np.pi * np.arcsin(1 / np.sqrt(1 + s**2)) for s in (0.5, 1.0, 2.0)]
    assert taus == pytest.approx(expected, abs=0.03)
    with pytest.raises(ValueError, match="hint_noise"):
        synthetic(**kw, hint_noise=-1)


def test_clipping_does_not_leak_the_true_length_into_a_hint():
    from workloads import clip_lengths

    t = synthetic(num_requests=3, rate=1.0, prompt_len=10, seed=0)
    for r, out, hint in zip(t, (50, 50, 500), (20, 80, 900)):
        r.output_len, r.output_len_hint = out, hint
    clipped = clip_lengths(t, 1000, max_output_len=300)
    # a hint is clipped to the same bound as outputs (300), not to the request's own output (50)
    assert [r.output_len_hint for r in clipped] == [20, 80, 300]
    assert [r.output_len for r in clipped] == [50, 50, 300]


def test_multi_turn_resends_a_growing_history():
    from workloads import multi_turn

    t = multi_turn(num_requests=40, rate=1.0, turns=4, think_s=2.0, system_blocks=2, turn_blocks=1, user_len=10, seed=5)
    assert len(t) == 40 and [r.arrival_s for r in t] == sorted(r.arrival_s for r in t)
    conv0 = sorted((r for r in t if r.request_id.startswith("conv0-")), key=lambda r: r.arrival_s)
    assert [r.request_id for r in conv0] == ["conv0-turn0", "conv0-turn1", "conv0-turn2", "conv0-turn3"]
    # turn k: 2 system blocks + k earlier turns of 512 tokens, each a prefix of the next, + 10 new tokens
    assert [len(r.prefix_hash_ids) for r in conv0] == [2, 3, 4, 5]
    assert [r.prompt_len for r in conv0] == [2 * 512 + 10, 3 * 512 + 10, 4 * 512 + 10, 5 * 512 + 10]
    assert all(a.prefix_hash_ids == b.prefix_hash_ids[: len(a.prefix_hash_ids)] for a, b in zip(conv0, conv0[1:]))
    others = {h for r in t if not r.request_id.startswith("conv0-") for h in r.prefix_hash_ids}
    assert not others & set(conv0[-1].prefix_hash_ids)  # conversations share nothing
    with pytest.raises(ValueError, match="think_s"):
        multi_turn(num_requests=5, think_s=-1.0)
