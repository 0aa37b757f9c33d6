"""First-come-first-served: vLLM's default (Kwon et al., "Efficient Memory Management for Large
Language Model Serving with PagedAttention", SOSP'23). Nothing is overridden, so vLLM's own FCFS
deque and its "preempt the last admitted request" rule run unchanged."""

from policies.base import SchedulingPolicy


class FCFS(SchedulingPolicy):
    name = "fcfs"
