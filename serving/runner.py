"""One cell on one real ``vllm serve``, as a child process of this machine (``CellRunner``).

Per cell: write the model directory, start the server with the cell's policy/allocator
(``policies.vllm_args``) and engine arguments, wait until healthy, replay the workload while
sampling ``/metrics``, stop the server. A watchdog stops the server after ``cell_timeout_s``.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

import policies
from serving.cell import CellFailed, CellProgress, CellResult, CellSpec
from serving.models import write_model_dir
from serving.server import ServerStartError, VLLMServer, vllm_build, vllm_version
from workloads.loadgen import replay, replay_with_server_metrics, warmup_copies
from workloads.metrics import summarize
from workloads.server_metrics import server_summary


def engine_args(model: DictConfig, seed: int) -> list[str]:
    """``vllm serve`` engine flags of a ``conf/model`` entry (None = leave vLLM's default)."""
    args: list[str] = ["--seed", str(seed)]
    flags = {
        "--max-num-seqs": model.max_num_seqs,
        "--max-num-batched-tokens": model.max_num_batched_tokens,
        "--max-model-len": model.max_model_len,
        "--num-gpu-blocks-override": model.num_gpu_blocks_override,
        "--block-size": model.block_size,
        "--dtype": model.dtype,
    }
    if model.tensor_parallel_size > 1:
        flags["--tensor-parallel-size"] = model.tensor_parallel_size
    for flag, value in flags.items():
        if value is not None:
            args += [flag, str(value)]
    if model.enable_prefix_caching is not None:
        args.append("--enable-prefix-caching" if model.enable_prefix_caching else "--no-enable-prefix-caching")
    if model.enforce_eager:
        args.append("--enforce-eager")
    return args + [str(a) for a in model.extra_args]


def server_args(cfg: DictConfig) -> list[str]:
    """Policy plugin flags + engine flags for a cell config."""
    return policies.vllm_args(
        policy=cfg.policy.name,
        policy_args=dict(cfg.policy.args),
        allocator=cfg.allocator.name,
        allocator_args=dict(cfg.allocator.args),
        check_invariants=cfg.check_invariants,
    ) + engine_args(cfg.model, cfg.seed)


def error_line(log_path: str | Path) -> str:
    """The last ``SomethingError: ...`` line of a server log (why it died), or ''."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    found = [m for line in lines if (m := re.search(r"\b(\w*(Error|Exception)): (.*)", line))]
    # Skip the wrappers vLLM raises on top of the root cause.
    root = [m for m in found if "root cause" not in m.group(3) and "Worker failed with error" not in m.group(3)]
    for m in reversed(root or found):
        return f"{m.group(1)}: {m.group(3)}"[:500]
    return ""


class CellRunner:
    """Runs one cell on this machine; ``stop()`` (any thread) ends its server early."""

    def __init__(self) -> None:
        self.server: VLLMServer | None = None
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()
        server = self.server
        if server is not None:
            server.stop(grace_s=5)

    def run(self, spec: CellSpec, progress: CellProgress, model_root: str | Path) -> CellResult:
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
        timed_out = threading.Event()

        def watchdog() -> None:
            timed_out.set()
            server.stop(grace_s=5)

        timer = threading.Timer(be.cell_timeout_s, watchdog)
        timer.daemon = True
        self.server = server
        try:
            if self.stopped.is_set():
                raise KeyboardInterrupt("stopped before start")
            timer.start()
            progress.phase("starting server")
            try:
                server.start()
            except ServerStartError as e:
                why = "timed out" if timed_out.is_set() else "failed to start"
                raise CellFailed(f"vLLM server {why}: {error_line(log_path) or e}\n{e}", str(log_path),
                                 info=info) from None
            warm = []
            if be.get("warmup_replay", False):
                progress.phase("warm-up replay")
                warm = replay(server.url, server.model_name, warmup_copies(spec.requests),
                              request_timeout_s=be.request_timeout_s)  # fmt: skip
            progress.phase("replaying")
            result = replay_with_server_metrics(
                server.url, server.model_name, spec.requests,
                sample_interval_s=be.metrics_interval_s, warmup=be.warmup_requests,
                request_timeout_s=be.request_timeout_s, on_progress=lambda d, t, f: progress.requests(d, t, f),
            )  # fmt: skip
            if timed_out.is_set():
                raise CellFailed(f"cell timed out after {be.cell_timeout_s:.0f} s", str(log_path), info=info)
            if not server.is_alive():
                raise CellFailed(f"vLLM server crashed during the replay: {error_line(log_path)}\n"
                                 f"{server.log_tail()}", str(log_path), info=info)  # fmt: skip
        except CellFailed:
            raise
        except Exception as e:
            if timed_out.is_set():
                raise CellFailed(f"cell timed out after {be.cell_timeout_s:.0f} s", str(log_path), info=info) from e
            if self.stopped.is_set():
                raise KeyboardInterrupt("cell stopped") from e
            raise CellFailed(f"{type(e).__name__}: {e}\n{server.log_tail()}", str(log_path), info=info) from e
        finally:
            timer.cancel()
            progress.phase("stopping server")
            server.stop()
            self.server = None
        summary: dict[str, Any] = summarize(
            result.records, slo_ttft_ms=cfg.slo_ttft_ms, slo_tpot_ms=cfg.slo_tpot_ms
        )
        summary.update(server_summary(result.server_before, result.server_after, result.samples))
        summary.update(warmup_required=float(vllm_build() == "cpu"), warmup_replay_requests=float(len(warm)),
                       warmup_replay_failed=float(sum(not r.ok for r in warm)))  # fmt: skip
        if warm:  # the cold replay's latencies, beside the measured warm ones (how much the warm-up mattered)
            cold = summarize(warm)
            summary.update({f"warmup_replay_{k}": cold[k] for k in ("ttft_ms_p50", "ttft_ms_p99", "e2e_ms_p50")})
        return CellResult(records=result.records, summary=summary, timeseries=result.samples,
                          log_path=str(log_path), info=info, wall_s=time.monotonic() - t_start)  # fmt: skip
