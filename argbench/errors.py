"""The base classes of errors that are not bugs: :class:`UserError` (your input is wrong) and :class:`RunError`
(the run stopped for a known reason outside argbench's code).

The CLI catches both once and prints the message as one line, no traceback (``argbench --debug`` shows it): exit
status 2 for a :class:`UserError`, 1 for a :class:`RunError`. Raise a subclass (or the class itself) wherever a
file, key, value or flag supplied by the user is wrong (:class:`UserError`), or where the run cannot go on and the
user has to act (the disk is full, the loss diverged: :class:`RunError`); the message names what is wrong, where
(file, key, value, epoch) and what is expected or what to do. Anything else is a bug and keeps its traceback.

:class:`Terminated` is SIGTERM (``kill``, ``docker stop``, SLURM's ``scancel``) raised in the main thread, so that it
unwinds like Ctrl-C: runs end KILLED, checkpoints stay, exit status 143. :func:`stop_signals` installs both
handlers for a command; they also remember the stop, because the raise can land where Python can only print it (a
finaliser such as ``__del__`` or a weakref callback, run by the garbage collector in the middle of a step):
:func:`raise_if_stopped`, which the trainer calls at every step, raises it again, so a stop is never lost. Code that
must not be cut in half (writing an epoch to the tracking store: an interrupted SQLite write can leave a lock that
the run's closing write then waits on) runs under :func:`stops_deferred`: the stop is raised when it ends.
"""

import signal
import sys
import threading
from contextlib import contextmanager


class UserError(ValueError):
    """Bad user input: one line for the user, exit 2. A ``ValueError`` too, so callers that catch that still do."""


class RunError(RuntimeError):
    """The run stopped for a known reason that is neither bad input nor a bug: one line for the user, exit 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so that it stops the run as Ctrl-C does (exit 143)."""


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the stop signals received under stop_signals(), first first
_deferring = threading.local()  # .depth: how many stops_deferred() blocks this thread is in


def _stop(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_stop_signal(signum, frame) -> None:
    """Remember the stop and raise it here (inside :func:`stops_deferred`: when it ends); a second SIGTERM during
    the cleanup is ignored, a second Ctrl-C raises again at once (as Python's own handler does)."""
    first = not _received
    _received.append(signum)
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if first and getattr(_deferring, "depth", 0):  # handlers run in the main thread: its depth
        return
    raise _stop(signum)


def raise_if_stopped() -> None:
    """Raise the stop a signal asked for (Ctrl-C: KeyboardInterrupt; SIGTERM: :class:`Terminated`), if any: the
    trainer calls it at every step, so a stop whose first raise was swallowed still ends the run there."""
    if _received:
        raise _stop(_received[0])


@contextmanager
def stops_deferred():
    """A block that a stop signal does not cut in half: the stop is remembered and raised when the (outermost) block
    ends; a second Ctrl-C raises at once. Also a decorator."""
    _deferring.depth = getattr(_deferring, "depth", 0) + 1
    try:
        yield
    finally:
        _deferring.depth -= 1
    if not _deferring.depth:
        raise_if_stopped()


@contextmanager
def stop_signals():
    """Ctrl-C and SIGTERM (``kill``, ``docker stop``, ``scancel``) stop the command inside: raised where the main
    thread is and remembered for :func:`raise_if_stopped`. The previous handlers come back on exit."""
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    hook = sys.unraisablehook

    def quiet_lost_stop(unraisable) -> None:
        """A stop raised inside a finaliser cannot propagate; :func:`raise_if_stopped` raises it again, so it is
        not printed as an ignored exception (a traceback in the middle of a one-line stop)."""
        if not (_received and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            hook(unraisable)

    _received.clear()
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)
    sys.unraisablehook = quiet_lost_stop
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = hook
        _received.clear()
