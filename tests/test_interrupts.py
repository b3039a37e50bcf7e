"""Ctrl-C / SIGTERM during a run are never lost, even when their first KeyboardInterrupt is swallowed
(as happens when it lands in a callback Python cannot raise from, e.g. subprocess's fork hooks)."""

from __future__ import annotations

import contextlib
import signal

import pytest

from harness import interrupts


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_swallowed_interrupt_is_raised_again_at_the_next_check(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with interrupts.stop_on_signals():
        interrupts.check()  # nothing requested yet
        with contextlib.suppress(KeyboardInterrupt):  # lost, as in a fork hook
            signal.raise_signal(sig)
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert signal.getsignal(sig) is before  # handlers restored
    with interrupts.stop_on_signals():
        interrupts.check()  # a new run starts with no request pending
