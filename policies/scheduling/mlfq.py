"""Multi-level feedback queue by tokens served, after FastServe (Wu et al., "Fast Distributed
Inference Serving for Large Language Models", 2023). Level ``i`` has a quantum of
``base_quantum * 2**i`` output tokens; a request that used up its quantum drops one level.
Skip-join: a request enters at the level its prompt length suggests (prompts longer than
``prompt_quantum * 2**i`` skip level ``i``), so long prefills do not block short jobs.
Lower level first, FIFO within a level; the victim is the running request at the lowest-priority
level (latest arrival among them). Preemption only when KV blocks run out; ``fastserve`` adds
FastServe's proactive preemption of running jobs by waiting higher-level ones.
"""

from policies.base import SchedulingPolicy, prompt_len, tokens_served


class MLFQ(SchedulingPolicy):
    name = "mlfq"

    def __init__(self, num_levels: int = 4, base_quantum: int = 32, prompt_quantum: int = 256, skip_join: bool = True) -> None:
        if num_levels < 1 or base_quantum < 1 or prompt_quantum < 1:
            raise ValueError(f"mlfq needs num_levels, base_quantum, prompt_quantum >= 1, got {num_levels}, {base_quantum}, {prompt_quantum}")
        self.num_levels, self.base_quantum = num_levels, base_quantum
        self.prompt_quantum, self.skip_join = prompt_quantum, skip_join

    def level(self, request) -> int:
        level = 0
        if self.skip_join:
            while level < self.num_levels - 1 and prompt_len(request) > self.prompt_quantum << level:
                level += 1
        served = tokens_served(request)
        while level < self.num_levels - 1 and served >= self.base_quantum << level:
            served -= self.base_quantum << level
            level += 1
        return level

    def waiting_key(self, request):
        return self.level(request)

    def preemption_key(self, request):
        return (self.level(request), request.arrival_time)
