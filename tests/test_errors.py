"""The stop signals' handlers (argbench.errors): a stop is raised where the main thread is, remembered so a
swallowed raise comes again, deferred to the end of a block that must not be cut in half, and SIGTERM is Terminated."""

import signal

import pytest

from argbench.errors import Terminated, raise_if_stopped, stop_signals, stops_deferred


def test_a_stop_inside_a_deferred_block_is_raised_when_the_block_ends():
    steps = []
    with stop_signals(), pytest.raises(KeyboardInterrupt):
        with stops_deferred():
            signal.raise_signal(signal.SIGINT)
            steps.append("after the signal")  # the block goes on to its end
            with stops_deferred():  # an inner block's end does not raise: the outermost's does
                pass
            steps.append("inner block ended")
        steps.append("after the block")
    assert steps == ["after the signal", "inner block ended"]


def test_a_second_ctrl_c_inside_a_deferred_block_raises_at_once():
    steps = []
    with stop_signals(), pytest.raises(KeyboardInterrupt), stops_deferred():
        signal.raise_signal(signal.SIGINT)
        steps.append("deferred")
        signal.raise_signal(signal.SIGINT)
        steps.append("not reached")
    assert steps == ["deferred"]


def test_sigterm_is_terminated_and_remembered_until_the_handlers_are_gone():
    with stop_signals():
        with pytest.raises(Terminated):
            signal.raise_signal(signal.SIGTERM)
        with pytest.raises(Terminated):  # raised again wherever the code checks
            raise_if_stopped()
        signal.raise_signal(signal.SIGTERM)  # a second SIGTERM during the cleanup is ignored
    raise_if_stopped()  # outside: nothing remembered
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
