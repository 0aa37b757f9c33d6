"""Every piece of schedlab that depends on vLLM 0.32's internals, in one module.

A vLLM upgrade should break here, loudly (an ``AttributeError``/``AssertionError`` naming the missing
member at import or bind time), and nowhere else. Rules: never copy a vLLM function; wrap or delegate
around the one decision we change.
"""

from __future__ import annotations

# ---- block pool: allocation and eviction (free queue, single-type managers) ----



# ---- scheduler: waiting queues, preemption, prefill control, clock ----


