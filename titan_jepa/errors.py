"""User-facing errors and the one way a command-line entry point reports them.

Every mistake a user can fix (a bad config value, a missing data file, a tokenizer that
lacks a token, a NaN loss) raises a subclass of ``UserError`` whose message is one line
naming the fix. ``run_main`` turns it into ``error: <message>`` on stderr and exit code 2,
instead of a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake the user can fix; the message is one line that names the fix.
    ``same_on_every_rank``: every process of a launch finds it identically, so only rank 0
    prints it (a data error of one batch slot is printed by the rank that finds it)."""

    same_on_every_rank = False


class ConfigError(UserError, ValueError):
    """A bad configuration value or command line."""

    same_on_every_rank = True  # every rank reads the same config: rank 0 alone reports it


class DataError(UserError, ValueError):
    """Bad data or a bad data path; the message names the place and the fix."""


class TokenizerError(UserError, ValueError):
    """A missing or malformed tokenizer, or one without a token the run needs."""

    same_on_every_rank = True


class ChatTemplateError(TokenizerError):
    """A chat template cannot be used as configured (one line naming the fix)."""


class EvalError(ConfigError):
    """A user-facing evaluation error: one line naming the fix."""


class CheckpointError(ConfigError):
    """Weights or a checkpoint cannot be loaded or saved as asked; the message names the fix."""


class RunFolderInUse(UserError):
    """Another live run holds the run folder (checkpoint/run_folder.py)."""

    same_on_every_rank = True


class TrainingError(UserError, RuntimeError):
    """The run cannot go on (a NaN loss, for example); the message says what to change."""

    same_on_every_rank = True  # (the loss is global)


INTERRUPTED = "interrupted (Ctrl-C): stopped; a relaunch resumes from the last complete checkpoint"


def exit_on_ctrl_c() -> None:
    """A command-line entry point's Ctrl-C (or SIGTERM) outside the training loop (while
    imports, data and the model load, or while the run ends): one line and exit code 130 (143)
    at once, never a KeyboardInterrupt traceback or a silent kill. Installed by
    ``python -m titan_jepa.train`` before it imports torch; the training loop's own handler
    (preemption.py) replaces it while the loop runs and puts it back after. Checkpoint writes
    are atomic, so leaving mid-save loses nothing."""
    import signal

    def _exit(signum, frame):
        if signum == signal.SIGINT:
            os.write(2, INTERRUPTED.encode() + b"\n")
            os._exit(130)
        os.write(2, b"stopped (SIGTERM) outside the training loop; a relaunch resumes from the last "
                    b"complete checkpoint\n")
        os._exit(143)

    signal.signal(signal.SIGINT, _exit)
    signal.signal(signal.SIGTERM, _exit)


def ignore_signals_while_exiting() -> None:
    """After an entry point's work (or its error line): Ctrl-C and SIGTERM are ignored while
    the interpreter shuts down, which otherwise puts the default (killing) handlers back."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run_main(fn: Callable[[], T], cleanup: Callable[[], None] | None = None) -> T:
    """Run an entry point's body ``fn``: a UserError prints ``error: <message>`` to stderr
    and exits with code 2. ``cleanup`` (e.g. destroying the process group) runs after
    ``fn`` returns and before that exit."""
    try:
        result = fn()
    except KeyboardInterrupt:  # Ctrl-C before the loop installed its handler (or after it)
        print(INTERRUPTED, file=sys.stderr)
        if cleanup is not None:
            cleanup()
        sys.exit(130)
    except UserError as e:
        if not (e.same_on_every_rank and os.environ.get("RANK", "0") != "0"):
            print(f"error: {e}", file=sys.stderr)
        if cleanup is not None:
            cleanup()
        sys.exit(2)
    if cleanup is not None:
        cleanup()
    return result
