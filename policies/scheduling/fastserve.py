"""FastServe: skip-join multi-level feedback queue WITH proactive preemption (Wu et al., "Fast
Distributed Inference Serving for Large Language Models", arXiv 2305.05920, 2023, §4.1).

Levels as in ``mlfq``: a request joins the level its prompt length suggests (skip-join) and drops a
level each time it uses up that level's quantum of output tokens. FastServe preempts at iteration
granularity: before every step, waiting requests are taken best level first; one that has no free
slot or not enough free KV blocks displaces the most demoted running requests, as long as they sit
at a strictly lower-priority (higher) level, until it fits (vLLM recomputes a victim's KV on
resume). When running requests outgrow the KV cache, vLLM's own preemption takes the most demoted
request (latest arrival first).
"""

from __future__ import annotations

from policies.scheduling.mlfq import MLFQ


class FastServe(MLFQ):
    name = "fastserve"

    def to_preempt(self):
        running = self.scheduler.running  # sorted by preemption_key: the most demoted is last
        slots, blocks = self.free_slots(), self.free_kv_blocks()
        victims = []
        for request in self.iter_waiting():  # best level first
            need = self.kv_blocks_needed(request)
            while slots < 1 or blocks < need:  # displace until it fits
                if len(victims) == len(running):
                    return victims
                victim = running[-1 - len(victims)]
                if self.level(request) >= self.level(victim):
                    return victims
                victims.append(victim)
                slots, blocks = slots + 1, blocks + self.kv_blocks_freed_by(victim)
            slots, blocks = slots - 1, blocks - need
        return victims
