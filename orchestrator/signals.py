"""Stop signals end a grid the way Ctrl-C does.

``timeout``, a CI cancel, Slurm, Kubernetes (SIGTERM) and a closed SSH session (SIGHUP) must stop
every server and mark the runs KILLED, like SIGINT. Inside ``stop_signals_raise()`` both raise
``Interrupted``, a ``KeyboardInterrupt``, so one ``except KeyboardInterrupt`` does the clean-up;
``signals_ignored()`` keeps a second signal from cutting that clean-up short. The process then
exits with the shell's code for the signal, 128 + its number (130, 143, 129).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

CAUGHT = (signal.SIGTERM, signal.SIGHUP)  # SIGINT already raises KeyboardInterrupt
STOP_SIGNALS = (signal.SIGINT, *CAUGHT)


class Interrupted(KeyboardInterrupt):
    """The driver received a stop signal."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def signal_name(e: BaseException) -> str:
    return signal.Signals(getattr(e, "signum", signal.SIGINT)).name


def exit_code(e: BaseException) -> int:
    return 128 + getattr(e, "signum", signal.SIGINT)


def _raise(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextmanager
def _handlers(signums: tuple[int, ...], handler) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def stop_signals_raise():
    """Within: SIGTERM and SIGHUP raise ``Interrupted`` (install after ``ray.init``, which sets its own)."""
    return _handlers(CAUGHT, _raise)


def signals_ignored():
    """Within: every stop signal is ignored, so a clean-up already under way completes."""
    return _handlers(STOP_SIGNALS, signal.SIG_IGN)
