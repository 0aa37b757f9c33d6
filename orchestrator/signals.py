"""Stop signals end a grid the way Ctrl-C does.

``timeout``, a CI cancel, Slurm, Kubernetes (SIGTERM) and a closed SSH session (SIGHUP) must stop
every server and mark the runs KILLED, like SIGINT. Inside ``stop_signals_raise()`` all three raise
``Interrupted``, a ``KeyboardInterrupt``, so one ``except KeyboardInterrupt`` does the clean-up;
``signals_ignored()`` keeps a second signal from cutting that clean-up short. The process then
exits with the shell's code for the signal, 128 + its number (130, 143, 129).
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []  # stop signals received inside stop_signals_raise(), latest last
_cleaning = threading.Event()  # the clean-up has begun (or the handlers are gone): no re-delivery
REDELIVER_S = 1.0


class Interrupted(KeyboardInterrupt):
    """The driver received a stop signal."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def _signum(e: BaseException) -> int:
    # Ray's blocking calls (ray.wait, ray.get) turn any KeyboardInterrupt into a plain one: the handler's record
    # says which signal it was.
    return getattr(e, "signum", None) or (_received[-1] if _received else signal.SIGINT)


def signal_name(e: BaseException) -> str:
    return signal.Signals(_signum(e)).name


def exit_code(e: BaseException) -> int:
    return 128 + _signum(e)


def _raise(signum: int, frame: object) -> None:
    _received.append(signum)
    # An exception raised from a signal handler inside a __del__, a weakref or GC callback is printed and
    # dropped ("Exception ignored in ..."): send the signal again until the clean-up has begun.
    timer = threading.Timer(REDELIVER_S, _redeliver, (signum,))
    timer.daemon = True
    timer.start()
    raise Interrupted(signum)


def _redeliver(signum: int) -> None:
    if not _cleaning.is_set():
        os.kill(os.getpid(), signum)


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
    """Within: SIGINT, SIGTERM and SIGHUP raise ``Interrupted``, unless ignored already (``nohup``
    ignores SIGHUP, a background shell SIGINT: that stays). ``ray.init`` installs its own SIGTERM
    handler: the Ray backend puts this one back."""
    _received.clear()
    _cleaning.clear()
    return _raising(tuple(s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN))


@contextmanager
def _raising(signums: tuple[int, ...]) -> Iterator[None]:
    try:
        with _handlers(signums, _raise):
            yield
    finally:
        _cleaning.set()


def signals_ignored():
    """Within: every stop signal is ignored, so a clean-up already under way completes."""
    _cleaning.set()
    return _handlers(STOP_SIGNALS, signal.SIG_IGN)
