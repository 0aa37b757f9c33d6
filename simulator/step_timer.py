"""A Scheduler subclass that logs every engine step of a real server, for calibration.

Load it with ``--scheduler-cls simulator.step_timer.StepTimingScheduler`` (plus the policy's
``--additional-config`` from ``policies.vllm_args``) and set ``SCHEDLAB_STEP_LOG=<path.jsonl>`` in
the server's environment. It subclasses the policy plugin's ``PolicyScheduler``, so the timed
server schedules exactly like the experiment's.

One JSON line per event, all times ``time.perf_counter()`` (CLOCK_MONOTONIC: comparable with the
load generator's clock on the same machine):
- ``{"ev": "config", ...}``: block size, KV blocks, max_num_seqs, ... of the running engine;
- ``{"ev": "add", "t", "key", "front"}``: the scheduler got a request (``key``: hash of its prompt
  ids). The engine core adds requests only between steps, so ``t`` includes the wait for the step
  that was running when the request came in; ``front`` = seconds since the API server processed it
  (``Request.arrival_time``, wall clock), so ``t - front`` is when it was ready for the engine;
- ``{"ev": "step", "t0", "t1", "t2", "t3", "prefill", "decode", "num_reqs", "sum_context",
  "prefill_attn", "first": [keys], "preempted", "busy"}``: ``t0``/``t1`` schedule() start/end, ``t2``/``t3``
  update_from_output() start/end; ``first`` = requests whose first token came from this step;
  ``busy`` = the engine had requests left (so the next step starts at once: t0 of the next step
  minus this t0 is this step's full cycle, forward pass and engine overhead included).
"""

from __future__ import annotations

import json
import os
import time

from policies.scheduler import PolicyScheduler as _Base  # time the scheduler experiments run
from simulator.step_model import BatchShape

ENV_VAR = "SCHEDLAB_STEP_LOG"


def prompt_key(prompt_token_ids) -> int:
    """Identifies a request across client and engine (the engine's request ids are random)."""
    return hash(tuple(prompt_token_ids[:64])) & 0x7FFFFFFFFFFF ^ len(prompt_token_ids)


class StepTimingScheduler(_Base):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        path = os.environ.get(ENV_VAR)
        self._step_log = open(path, "a", buffering=1 << 16) if path else None
        self._keys: dict[str, int] = {}
        self._t0 = self._t1 = 0.0
        self._shape: dict | None = None
        if self._step_log is not None:
            self._write(
                ev="config",
                block_size=self.block_size,
                num_gpu_blocks=self.cache_config.num_gpu_blocks,
                max_num_seqs=self.max_num_running_reqs,
                max_num_batched_tokens=self.max_num_scheduled_tokens,
                max_model_len=self.max_model_len,
                enable_prefix_caching=bool(self.cache_config.enable_prefix_caching),
                scheduler=type(self).__mro__[1].__module__ + "." + type(self).__mro__[1].__name__,
            )

    def _write(self, **rec) -> None:
        self._step_log.write(json.dumps(rec) + "\n")

    def add_request(self, request) -> None:
        if self._step_log is not None and request.prompt_token_ids is not None:
            key = prompt_key(request.prompt_token_ids)
            self._keys[request.request_id] = key
            now, wall = time.perf_counter(), time.time()
            self._write(ev="add", t=now, key=key, front=max(0.0, wall - request.arrival_time))
        super().add_request(request)

    def schedule(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = super().schedule(*args, **kwargs)
        self._t0, self._t1 = t0, time.perf_counter()
        if self._step_log is not None:
            shape = BatchShape.of_step(self.requests, out.num_scheduled_tokens)
            ctx_blocks = 0
            first = []
            for rid in out.num_scheduled_tokens:
                r = self.requests[rid]
                ctx_blocks += -(-r.num_computed_tokens // self.block_size)  # KV blocks attention reads (diagnostic)
                if not r.is_prefill_chunk and r.num_output_tokens == 0:
                    first.append(self._keys.get(rid))
            self._shape = dict(prefill=shape.prefill_tokens, decode=shape.decode_tokens, num_reqs=shape.num_reqs,
                               sum_context=shape.sum_context, prefill_attn=shape.prefill_attn, ctx_blocks=ctx_blocks,
                               first=first, preempted=len(out.preempted_req_ids or ()))  # fmt: skip
        return out

    def update_from_output(self, scheduler_output, model_runner_output):
        t2 = time.perf_counter()
        out = super().update_from_output(scheduler_output, model_runner_output)
        if self._step_log is not None and self._shape is not None and self._shape["num_reqs"]:
            self._write(ev="step", t0=self._t0, t1=self._t1, t2=t2, t3=time.perf_counter(),
                        busy=self.has_requests(), **self._shape)  # fmt: skip
            if not self.has_requests():
                self._step_log.flush()
        self._shape = None
        return out

    def shutdown(self) -> None:
        if self._step_log is not None:
            self._step_log.flush()
        super().shutdown()
