"""A stop signal whose exception is swallowed (raised inside a ``__del__``: "Exception ignored in")
is delivered again until the clean-up begins; none arrives after it."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from orchestrator.signals import exit_code, signal_name, signals_ignored, stop_signals_raise


class _SlowFinalizer:
    def __del__(self) -> None:
        time.sleep(0.3)  # the signal lands here: its exception is printed and dropped


def test_a_swallowed_stop_signal_is_delivered_again():
    with pytest.raises(KeyboardInterrupt) as e:
        with stop_signals_raise():
            try:
                threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGHUP)).start()
                _SlowFinalizer()
                for _ in range(100):  # at most 10 s
                    time.sleep(0.1)
            except KeyboardInterrupt:
                with signals_ignored():
                    time.sleep(2)  # a re-delivery now would be ignored; after the context it would kill us
                raise
    assert signal_name(e.value) == "SIGHUP" and exit_code(e.value) == 129
    time.sleep(1.5)  # no stray re-delivery once the handlers are gone (SIGHUP's default would end pytest)
