"""Earliest deadline first (Liu & Layland, JACM 1973), with per-request deadlines from
``vllm_xargs.deadline_s`` (seconds after arrival). Requests without a deadline go last. The victim
is the running request with the latest deadline."""

from policies.base import SchedulingPolicy, deadline


class EDF(SchedulingPolicy):
    name = "edf"

    def waiting_key(self, request):
        return deadline(request)

    def preemption_key(self, request):
        return (deadline(request), request.arrival_time)
