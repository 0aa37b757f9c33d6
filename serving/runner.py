"""One cell on one real ``vllm serve``, as a child process of this machine (``CellRunner``).

Per cell: write the model directory, start the server with the cell's policy/allocator
(``policies.vllm_args``) and engine arguments, wait until healthy, replay the workload while
sampling ``/metrics``, stop the server. A watchdog stops the server after ``cell_timeout_s``.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

import policies
from serving.cell import CellFailed, CellProgress, CellResult, CellSpec
from serving.engine import EngineConfig
from serving.models import write_model_dir
from serving.server import ServerStartError, VLLMServer, vllm_build, vllm_version
from workloads.loadgen import replay, warmup_copies
from workloads.metrics import summarize
from workloads.records import RequestRecord
from workloads.server_metrics import LoadResult, replay_with_server_metrics, server_summary


def server_args(cfg: DictConfig) -> list[str]:
    """Policy plugin flags + engine flags for a cell config."""
    return policies.vllm_args(
        policy=cfg.policy.name,
        policy_args=dict(cfg.policy.args),
        allocator=cfg.allocator.name,
        allocator_args=dict(cfg.allocator.args),
        check_invariants=cfg.check_invariants,
    ) + ["--seed", str(cfg.seed)] + EngineConfig.of(cfg.engine).vllm_args()


# vLLM's log-record prefix, e.g. "(EngineCore pid=17019) ERROR 12-06 14:02:23 [core.py:1510] ".
_PREFIX = re.compile(r"^(?:\(\w+ pid=\d+\) )?(?:(DEBUG|INFO|WARNING|ERROR|CRITICAL) \d\d-\d\d [\d:]+ \[[^\]]*\] )?")
# uvicorn's own records, e.g. 'INFO:     127.0.0.1:47748 - "POST /v1/completions HTTP/1.1" 200 OK'.
_ACCESS_LOG = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):\s")
# A traceback's last line: the exception type at the start of the line, then its message.
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)): (.*)")
# vLLM's wrappers around the root cause: they point above it, the root cause is elsewhere in the log.
_WRAPPERS = ("root cause", "Worker failed with error", "Engine core initialization failed")


def error_line(log_path: str | Path) -> str:
    """The root cause in a server log: the last exception line of a traceback or an ERROR record,
    never a WARNING (vLLM's ulimit warning quotes "OSError: Too many open files" in every CPU log)
    nor a wrapper that points at it; with the lines that continue its message (pydantic lists the
    failing fields below). '' when the log names no exception."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    found: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = _PREFIX.match(line)
        if m.group(1) in ("DEBUG", "INFO", "WARNING"):
            continue
        if _EXCEPTION.match(line[m.end():]):
            found.append((i, line[m.end():]))
    root = [f for f in found if not any(w in f[1] for w in _WRAPPERS)] or found
    if not root:
        return ""
    i, text = root[-1]
    for more in lines[i + 1 : i + 6]:  # continuation lines of a multi-line message
        if (not more.strip() or _PREFIX.match(more).group(0) or _ACCESS_LOG.match(more)
                or more.startswith(("Traceback", "  File", "$ "))):
            break
        text += " | " + more.strip()
    return text[:800]


UNHEALTHY_EXIT_S = 15.0  # vLLM's API server exits within seconds of its engine's death


def _wait_exit(server: VLLMServer, timeout_s: float) -> None:
    try:
        server.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass


def _as_warmup(records: list[RequestRecord]) -> list[RequestRecord]:
    return [dataclasses.replace(r, warmup=True) for r in records]


def _watch_exit(server: VLLMServer, gone: threading.Event, period_s: float = 0.25) -> None:
    while not gone.wait(period_s):
        if not server.is_alive():
            gone.set()


class CellRunner:
    """Runs one cell on this machine; ``stop()`` (any thread) ends its server early."""

    def __init__(self) -> None:
        self.server: VLLMServer | None = None
        self.stopped = threading.Event()
        self.phase = "start-up"  # what the server is doing (named in a failure)

    def stop(self) -> None:
        self.stopped.set()
        server = self.server
        if server is not None:
            server.stop(grace_s=5)

    @staticmethod
    def _died(server: VLLMServer, log_path: Path, phase: str = "replay") -> str:
        code = server.proc.returncode if server.proc is not None else None
        return (f"server exited with code {code} during {phase}: {error_line(log_path) or 'no exception in its log'}"
                f"\n{server.log_tail()}")

    def _check_server(self, server: VLLMServer, log_path: Path, info: dict, phase: str, records: list) -> None:
        """After a replay phase: raise ``CellFailed`` (keeping ``records``) if the server died during it."""
        if self.stopped.is_set():
            raise KeyboardInterrupt("cell stopped")
        if server.is_alive() and not server.is_healthy():  # engine dead: the API server is shutting down
            _wait_exit(server, UNHEALTHY_EXIT_S)
            if server.is_alive():
                raise CellFailed(f"server stopped answering /health during {phase}: "
                                 f"{error_line(log_path) or 'no exception in its log'}\n{server.log_tail()}",
                                 str(log_path), info=info, records=records)  # fmt: skip
        if not server.is_alive():
            raise CellFailed(self._died(server, log_path, phase), str(log_path), info=info, records=records)

    def run(self, spec: CellSpec, progress: CellProgress, model_root: str | Path) -> CellResult:
        """Start the cell's server, warm it up, replay the workload, stop the server."""
        cfg = spec.config()
        t_start = time.monotonic()
        out_dir = Path(spec.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        log_path = out_dir / "server.log"
        log_path.unlink(missing_ok=True)
        model_dir = write_model_dir(cfg.model.preset, model_root, dict(cfg.model.arch_overrides) or None)
        be = cfg.backend
        server = VLLMServer(model_dir, extra_args=server_args(cfg), log_path=log_path,
                            startup_timeout_s=be.startup_timeout_s, env=dict(be.env))  # fmt: skip
        info = {"vllm_version": vllm_version(), "vllm_build": vllm_build(),
                "server_command": " ".join(server.command())}  # fmt: skip
        warm, result = self._serve(server, spec, be, progress, log_path, info)
        return CellResult(records=result.records, summary=_cell_summary(cfg, warm, result), timeseries=result.samples,
                          log_path=str(log_path), info=info, wall_s=time.monotonic() - t_start)  # fmt: skip

    def _serve(self, server: VLLMServer, spec: CellSpec, be: Any, progress: CellProgress, log_path: Path,
               info: dict) -> tuple[list[RequestRecord], LoadResult]:  # fmt: skip
        """The server's life: start, (warm-up) replay, stop — under the cell's watchdog; every failure a
        ``CellFailed`` naming its phase, Ctrl-C (``stop()``) a ``KeyboardInterrupt``."""
        timed_out = threading.Event()

        def watchdog() -> None:
            timed_out.set()
            server.stop(grace_s=5)

        timer = threading.Timer(be.cell_timeout_s, watchdog)
        timer.daemon = True
        self.server = server
        gone = threading.Event()  # the server process exited: the replay stops sending
        self.phase = "start-up"
        try:
            if self.stopped.is_set():
                raise KeyboardInterrupt("stopped before start")
            timer.start()
            self._start(server, progress, log_path, info, timed_out)
            threading.Thread(target=_watch_exit, args=(server, gone), daemon=True).start()
            warm, result = self._replay(server, spec, be, progress, log_path, info, gone)
            if timed_out.is_set():
                raise CellFailed(f"cell timed out after {be.cell_timeout_s:.0f} s", str(log_path), info=info,
                                 records=result.records)  # fmt: skip
            self._check_server(server, log_path, info, self.phase, _as_warmup(warm) + result.records)
            return warm, result
        except CellFailed:
            raise
        except Exception as e:
            raise self._failure(e, server, be, log_path, info, timed_out) from e
        finally:
            gone.set()  # also ends the watcher
            timer.cancel()
            progress.phase("stopping server")
            server.stop()
            self.server = None

    @staticmethod
    def _start(server: VLLMServer, progress: CellProgress, log_path: Path, info: dict, timed_out: threading.Event) -> None:
        progress.phase("starting server")
        try:
            server.start()
        except ServerStartError as e:
            why = "timed out" if timed_out.is_set() else "failed to start"
            raise CellFailed(f"vLLM server {why}: {error_line(log_path) or e}\n{e}", str(log_path), info=info) from None

    def _replay(self, server: VLLMServer, spec: CellSpec, be: Any, progress: CellProgress, log_path: Path, info: dict,
                gone: threading.Event) -> tuple[list[RequestRecord], LoadResult]:  # fmt: skip
        """The warm-up replay (``backend.warmup_replay``; checked for a dead server), then the measured one."""
        warm: list[RequestRecord] = []
        if be.get("warmup_replay", False):
            self.phase = "warm-up replay"
            progress.phase(self.phase)
            warm = replay(server.url, server.model_name, warmup_copies(spec.requests),
                          request_timeout_s=be.request_timeout_s, abort=gone)  # fmt: skip
            self._check_server(server, log_path, info, self.phase, _as_warmup(warm))
        self.phase = "replay"
        progress.phase("replaying")
        result = replay_with_server_metrics(
            server.url, server.model_name, spec.requests,
            sample_interval_s=be.metrics_interval_s, warmup=be.warmup_requests,
            request_timeout_s=be.request_timeout_s, on_progress=lambda d, t, f: progress.requests(d, t, f),
            abort=gone,
        )  # fmt: skip
        return warm, result

    def _failure(self, e: Exception, server: VLLMServer, be: Any, log_path: Path, info: dict,
                 timed_out: threading.Event) -> BaseException:  # fmt: skip
        """What an unexpected exception in a phase means: a timeout, Ctrl-C, a dead server, or itself."""
        if timed_out.is_set():
            return CellFailed(f"cell timed out after {be.cell_timeout_s:.0f} s", str(log_path), info=info)
        if self.stopped.is_set():
            return KeyboardInterrupt("cell stopped")
        if not server.is_alive():
            return CellFailed(f"{self._died(server, log_path, self.phase)}\n({self.phase}: {type(e).__name__}: {e})",
                              str(log_path), info=info)  # fmt: skip
        return CellFailed(f"{type(e).__name__}: {e}\n{server.log_tail()}", str(log_path), info=info)


def _cell_summary(cfg: Any, warm: list[RequestRecord], result: LoadResult) -> dict[str, Any]:
    """Client metrics with the cell's SLOs, the server's own counters, and how the warm-up went."""
    summary: dict[str, Any] = summarize(result.records, slo_ttft_ms=cfg.slo_ttft_ms, slo_tpot_ms=cfg.slo_tpot_ms)
    summary.update(server_summary(result.server_before, result.server_after, result.samples))
    summary.update(warmup_required=float(vllm_build() == "cpu"), warmup_replay_requests=float(len(warm)),
                   warmup_replay_failed=float(sum(not r.ok for r in warm)))  # fmt: skip
    if warm:  # the cold replay's latencies, beside the measured warm ones (how much the warm-up mattered)
        cold = summarize(warm)
        summary.update({f"warmup_replay_{k}": cold[k] for k in ("ttft_ms_p50", "ttft_ms_p99", "e2e_ms_p50")})
    return summary
