"""Strict priority: lower ``priority`` value first, ties by arrival — vLLM's ``--scheduling-policy
priority`` semantics (the HTTP ``priority`` field), including its victim rule: preempt the running
request with the largest (priority, arrival_time)."""

from policies.base import SchedulingPolicy


class Priority(SchedulingPolicy):
    name = "priority"

    def waiting_key(self, request):
        return request.priority

    def preemption_key(self, request):
        return (request.priority, request.arrival_time)
