"""The base classes of errors that are not bugs: :class:`UserError` (your input is wrong) and :class:`RunError`
(the run stopped for a known reason outside argbench's code).

The CLI catches both once and prints the message as one line, no traceback (``argbench --debug`` shows it): exit
status 2 for a :class:`UserError`, 1 for a :class:`RunError`. Raise a subclass (or the class itself) wherever a
file, key, value or flag supplied by the user is wrong (:class:`UserError`), or where the run cannot go on and the
user has to act (the disk is full, the loss diverged: :class:`RunError`); the message names what is wrong, where
(file, key, value, epoch) and what is expected or what to do. Anything else is a bug and keeps its traceback.

:class:`Terminated` is SIGTERM (``kill``, ``docker stop``, SLURM's ``scancel``) raised in the main thread by
:func:`raise_terminated`, so that it unwinds like Ctrl-C: runs end KILLED, checkpoints stay, exit status 143.
"""

import signal


class UserError(ValueError):
    """Bad user input: one line for the user, exit 2. A ``ValueError`` too, so callers that catch that still do."""


class RunError(RuntimeError):
    """The run stopped for a known reason that is neither bad input nor a bug: one line for the user, exit 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so that it stops the run as Ctrl-C does (exit 143)."""


def raise_terminated(signum=None, frame=None) -> None:
    """SIGTERM handler: raise :class:`Terminated` once; a second SIGTERM during the cleanup is ignored."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()
