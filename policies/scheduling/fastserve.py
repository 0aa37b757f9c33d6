"""FastServe: skip-join multi-level feedback queue WITH proactive preemption (Wu et al., "Fast
Distributed Inference Serving for Large Language Models", arXiv 2305.05920, 2023, §4.1).

Levels as in ``mlfq``: a request joins the level its prompt length suggests (skip-join) and drops a
level each time it uses up that level's quantum of output tokens. FastServe preempts at iteration
granularity: before every step, while a waiting request sits at a strictly higher-priority (lower)
level than the most demoted running request and there is no free slot for it, that running request
is preempted and the waiting one takes its place (vLLM recomputes the victim's KV on resume). When
KV blocks run out, vLLM's own preemption takes the most demoted request (latest arrival first).
"""

from __future__ import annotations

from policies.scheduling.mlfq import MLFQ


class FastServe(MLFQ):
    name = "fastserve"

    def to_preempt(self):
        running = self.scheduler.running  # sorted by preemption_key: the most demoted is last
        free = self.free_slots()
        victims = []
        for request in self.iter_waiting():  # best level first
            if free > 0:
                free -= 1  # it gets a free slot, no one is displaced
                continue
            if len(victims) == len(running):
                break
            victim = running[-1 - len(victims)]
            if self.level(request) >= self.level(victim):
                break
            victims.append(victim)
        return victims
