"""Seeded synthetic multi-turn chat: conversations whose shared history grows turn by turn.

Conversations start with the synthetic generator's arrival process (``rate`` is the rate of new
conversations); each has ``turns`` turns separated by a user's think time (exponential, mean
``think_s``). Turn ``k`` resends the conversation's whole history as its prompt prefix:
``system_blocks + k * turn_blocks`` blocks of 512 tokens (``Request.prefix_hash_ids``, equal ids =
equal tokens, as in the Mooncake trace), then ``user_len`` new tokens. So a conversation's blocks
are revisited on every later turn and its working set grows, which is what makes a prefix cache's
eviction order matter once the conversations in flight outgrow it.
"""

from __future__ import annotations

import numpy as np

from workloads.synthetic import LengthSpec, arrival_times, sample_lengths
from workloads.trace import MOONCAKE_BLOCK_TOKENS, Request, Trace

_IDS_PER_CONVERSATION = 1 << 16  # prefix hash ids of conversation c: c * this + block index


def multi_turn(
    num_requests: int = 200,
    rate: float = 1.0,
    arrival: str = "poisson",
    cv: float = 1.0,
    turns: LengthSpec = "uniform:2:8",
    think_s: float = 5.0,
    system_blocks: int = 1,
    turn_blocks: int = 1,
    user_len: LengthSpec = 64,
    output_len: LengthSpec = "lognormal:128:0.8",
    seed: int = 0,
) -> Trace:
    """A seeded multi-turn trace of ``num_requests`` turns (the last conversation may be cut short),
    sorted by arrival."""
    if num_requests < 0 or think_s < 0 or system_blocks < 0 or turn_blocks < 0:
        raise ValueError(f"multi_turn needs num_requests, think_s, system_blocks, turn_blocks >= 0, got "
                         f"{num_requests}, {think_s}, {system_blocks}, {turn_blocks}")  # fmt: skip
    rng = np.random.default_rng(seed)
    num_turns = sample_lengths(turns, max(num_requests, 1), rng)
    num_conv = int(np.searchsorted(np.cumsum(num_turns), num_requests)) + 1 if num_requests else 0
    starts = arrival_times(num_conv, rate, arrival, cv, rng=rng)
    rows: list[Request] = []
    for c in range(num_conv):
        t = float(starts[c])
        for k in range(int(num_turns[c])):
            history = system_blocks + k * turn_blocks
            user, out = int(sample_lengths(user_len, 1, rng)[0]), int(sample_lengths(output_len, 1, rng)[0])
            rows.append(Request(
                request_id=f"conv{c}-turn{k}", arrival_s=t, prompt_len=history * MOONCAKE_BLOCK_TOKENS + user,
                output_len=out, prefix_hash_ids=tuple(c * _IDS_PER_CONVERSATION + b for b in range(history)),
            ))  # fmt: skip
            t += float(rng.exponential(think_s))
    rows.sort(key=lambda r: r.arrival_s)
    return Trace(rows[:num_requests], source=f"multi_turn(seed={seed})")
