"""Longest job first (longest prompt first): the adversarial mirror of SJF, a baseline for
head-of-line-blocking studies (cf. Sun et al., "Llumnix", OSDI'24 §2). The victim is the shortest."""

from policies.base import SchedulingPolicy, prompt_len


class LJF(SchedulingPolicy):
    name = "ljf"

    def waiting_key(self, request):
        return -prompt_len(request)

    def preemption_key(self, request):
        return (-prompt_len(request), request.arrival_time)
