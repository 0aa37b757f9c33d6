"""Seeded synthetic workloads: Poisson or gamma arrivals, length distributions, weighted tenants.

Gamma inter-arrival times with coefficient of variation ``cv`` model burstiness (cv = 1 is
Poisson, cv > 1 burstier, cv < 1 smoother), as in vLLM's ``bench serve --burstiness`` (which is
``1 / cv**2``) and AlpaServe (Li et al., OSDI'23).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from workloads.trace import Request, Trace

# A length spec: 128 | "uniform:16:64" | "lognormal:200:0.8" | [12, 40, 7, ...] (empirical sample) |
# {"dist": "fixed"|"uniform"|"lognormal"|"empirical", ..., "min": 1, "max": 4096}
LengthSpec = Any


def _parse_spec(spec: LengthSpec) -> dict[str, Any]:
    if isinstance(spec, bool):
        raise ValueError(f"bad length spec {spec!r}")
    if isinstance(spec, (int, np.integer)):
        return {"dist": "fixed", "value": int(spec)}
    if isinstance(spec, str):
        name, *args = spec.split(":")
        keys = {"fixed": ["value"], "uniform": ["low", "high"], "lognormal": ["mean", "sigma"]}
        if name not in keys or len(args) != len(keys[name]):
            raise ValueError(
                f"bad length spec {spec!r}; use 'fixed:N', 'uniform:LO:HI' or 'lognormal:MEAN:SIGMA'"
            )
        return {"dist": name, **{k: float(a) for k, a in zip(keys[name], args)}}
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if spec.get("dist") not in ("fixed", "uniform", "lognormal", "empirical"):
            raise ValueError(f"bad length spec {spec!r}: 'dist' must be fixed, uniform, lognormal or empirical")
        return spec
    if isinstance(spec, (Sequence, np.ndarray)):
        return {"dist": "empirical", "values": list(spec)}
    raise ValueError(f"bad length spec {spec!r}")


def sample_lengths(spec: LengthSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` token lengths (ints >= 1, within optional ``min``/``max``) from a length spec."""
    s = _parse_spec(spec)
    dist = s["dist"]
    try:
        if dist == "fixed":
            x = np.full(n, float(s["value"]))
        elif dist == "uniform":
            x = rng.integers(int(s["low"]), int(s["high"]) + 1, size=n).astype(float)
        elif dist == "lognormal":
            # parametrized by the distribution's mean (or median) and the std of log-length
            sigma = float(s["sigma"])
            mu = math.log(float(s["median"])) if "median" in s else math.log(float(s["mean"])) - sigma**2 / 2
            x = rng.lognormal(mu, sigma, size=n)
        else:
            values = np.asarray(s["values"], dtype=float)
            if values.size == 0:
                raise ValueError("empty empirical sample")
            x = rng.choice(values, size=n, replace=True)
    except KeyError as e:
        raise ValueError(f"length spec {spec!r} lacks key {e}") from None
    x = np.clip(np.rint(x), max(1, int(s.get("min", 1))), int(s.get("max", 1 << 30)))
    return x.astype(np.int64)


def arrival_times(
    n: int, rate: float, arrival: str = "poisson", cv: float = 1.0, *, rng: np.random.Generator
) -> np.ndarray:
    """``n`` arrival times starting at 0 with mean rate ``rate`` req/s (``inf``: all at 0)."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0 req/s, got {rate}")
    if arrival not in ("poisson", "gamma"):
        raise ValueError(f"unknown arrival process {arrival!r}; use 'poisson' or 'gamma'")
    if math.isinf(rate) or n == 0:
        return np.zeros(n)
    if arrival == "poisson":
        gaps = rng.exponential(1.0 / rate, size=n - 1)
    else:
        if cv <= 0:
            raise ValueError(f"gamma arrivals need cv > 0, got {cv}")
        shape = 1.0 / cv**2  # mean = shape * scale = 1 / rate, std / mean = cv
        gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def synthetic(
    num_requests: int = 100,
    rate: float = 1.0,
    arrival: str = "poisson",
    cv: float = 1.0,
    prompt_len: LengthSpec = 128,
    output_len: LengthSpec = 128,
    tenants: Mapping[str, float] | None = None,
    tenant_priority: Mapping[str, int] | None = None,
    deadline_s: float | Mapping[str, float] | None = None,
    output_len_hint: bool = False,
    hint_noise: float = 0.0,
    prefix_groups: int = 0,
    prefix_blocks: int = 1,
    seed: int = 0,
) -> Trace:
    """A seeded synthetic trace.

    ``tenants`` maps tenant name -> weight (share of requests); ``tenant_priority`` and a per-tenant
    ``deadline_s`` (or one float for all) set the scheduling metadata; ``output_len_hint`` gives
    policies the true output length (oracle SJF); ``hint_noise`` > 0 makes it a noisy predictor
    instead: the true length times a seeded log-normal factor exp(N(0, hint_noise²)), so the
    hints' rank correlation with the true lengths (Kendall's tau) falls as the noise grows.
    ``prefix_groups > 0`` assigns each request to one
    of that many groups sharing ``prefix_blocks`` 512-token prefix blocks (system-prompt reuse).
    """
    if num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")
    rng = np.random.default_rng(seed)
    arrivals = arrival_times(num_requests, rate, arrival, cv, rng=rng)
    plens = sample_lengths(prompt_len, num_requests, rng)
    olens = sample_lengths(output_len, num_requests, rng)
    tenants = dict(tenants or {"default": 1.0})
    names = list(tenants)
    weights = np.asarray([tenants[t] for t in names], dtype=float)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"tenant weights must be >= 0 with a positive sum, got {tenants}")
    who = rng.choice(len(names), size=num_requests, p=weights / weights.sum())
    for t in (tenant_priority or {}):
        if t not in tenants:
            raise ValueError(f"tenant_priority names unknown tenant {t!r}; tenants are {names}")
    groups = rng.integers(0, prefix_groups, size=num_requests) if prefix_groups > 0 else None
    if hint_noise < 0:
        raise ValueError(f"hint_noise must be >= 0, got {hint_noise}")
    # Drawn after everything else, from its own stream, so the same seed gives the same requests
    # with and without noise (only the hints differ).
    noise = np.random.default_rng([seed, 1]).lognormal(0.0, hint_noise, size=num_requests)
    hints = np.maximum(1, np.rint(olens * noise)).astype(np.int64)
    out = Trace(source=f"synthetic(seed={seed})")
    for i in range(num_requests):
        tenant = names[who[i]]
        dl = deadline_s.get(tenant) if isinstance(deadline_s, Mapping) else deadline_s
        prefix: tuple[int, ...] = ()
        if groups is not None:
            base = int(groups[i]) * prefix_blocks
            prefix = tuple(range(base, base + prefix_blocks))
        out.append(
            Request(
                request_id=f"syn-{i}",
                arrival_s=float(arrivals[i]),
                prompt_len=int(plens[i]),
                output_len=int(olens[i]),
                tenant=tenant,
                priority=int((tenant_priority or {}).get(tenant, 0)),
                deadline_s=None if dl is None else float(dl),
                output_len_hint=int(hints[i]) if output_len_hint else None,
                prefix_hash_ids=prefix,
            )
        )
    return out
