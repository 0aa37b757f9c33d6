"""Workloads: trace loaders, synthetic traces, transforms, the HTTP load generator and metrics.

    from workloads import load_trace, synthetic, with_rate, truncate, clip_lengths
    reqs = truncate(load_trace("mooncake", "workloads/samples/mooncake_sample.jsonl"), 20)
    materialize(reqs, model_dir)                      # exact token-id prompts, shared prefixes
    records = replay(server.url, server.model_name, reqs)   # workloads.loadgen
    summary = summarize(records, slo_ttft_ms=500, slo_tpot_ms=50)   # workloads.metrics
"""

from pathlib import Path

from workloads.loaders import LOADERS, TraceFormatError, load_trace
from workloads.multi_turn import multi_turn
from workloads.prompts import materialize
from workloads.records import RequestRecord
from workloads.synthetic import sample_lengths, synthetic
from workloads.trace import Request, Trace
from workloads.transforms import clip_lengths, time_scale, truncate, with_rate

_HERE = Path(__file__).parent
# Small sample file of each format (see workloads/samples/make_samples.py).
SAMPLES = {
    "azure": _HERE / "samples" / "azure_conv_sample.csv",
    "burstgpt": _HERE / "samples" / "burstgpt_sample.csv",
    "mooncake": _HERE / "samples" / "mooncake_sample.jsonl",
    "sharegpt": _HERE / "samples" / "sharegpt_sample.json",
}

__all__ = [
    "LOADERS", "SAMPLES", "Request", "RequestRecord", "Trace", "TraceFormatError", "clip_lengths",
    "load_trace", "materialize", "multi_turn", "sample_lengths", "synthetic", "time_scale", "truncate", "with_rate",
]
