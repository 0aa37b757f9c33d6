"""A scheduling policy that raises in vLLM's scheduler once some requests have finished: kills a
real server's engine mid-replay, for the tests of how a server dying during a replay is reported."""

from __future__ import annotations

from policies.base import SchedulingPolicy


class CrashAfter(SchedulingPolicy):
    """FCFS that raises ``RuntimeError`` in the step after its ``after_finished``-th request finished
    (counted from vLLM's ``SchedulerOutput.finished_req_ids``, not steps: how many ``schedule()``
    calls a token takes depends on async scheduling and the machine)."""

    name = "crash_after"

    def __init__(self, after_finished: int = 4) -> None:
        self.after_finished = after_finished
        self.finished = 0

    def on_schedule(self, output) -> None:
        self.finished += len(output.finished_req_ids)
        if self.finished >= self.after_finished:
            raise RuntimeError(f"CrashAfter: deliberate scheduler failure after {self.finished} finished requests")
