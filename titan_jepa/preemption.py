"""Preemption (SIGTERM) and Ctrl-C (SIGINT, the same path).

SIGTERM is what schedulers (SLURM, Kubernetes) send before they take a machine back, and what
a torchrun agent forwards to its workers when it is itself terminated. ``Preemption``
installs a handler that only sets a flag; the training loop calls ``stop_requested()`` at
the end of its sync steps (the log steps and every ``metrics.sync_every`` steps; with one
process, where it is a plain flag read, at the end of every step). With several processes
it is a MAX all-reduce of the flag over the whole world, read on the host, so every rank
stops after the same step even when only one of them was signalled. The loop then saves a
checkpoint of that step, waits for it to be written, and returns: the process exits with
code 0 and the next launch resumes from that checkpoint. Further SIGTERMs are ignored (a
worker may get one from the scheduler and one forwarded by its torchrun agent); the agent
sends SIGKILL after its ``--shutdown_timeout`` (30 s by default), so give big checkpoints
(and long intervals between sync steps) more time there.

Ctrl-C (SIGINT) takes the same path: the step finishes, a checkpoint is saved, one line says
so and the exit code is 0. A second Ctrl-C exits at once (code 130) with one line and no
traceback; a save it cuts short leaves a ``step-N.tmp`` folder (ignored, and removed by the
next launch), never a ``step-N`` that is not complete (the rename into place is atomic, and so
is pruning: checkpoint/files.py).

Fault-injection tests send signals through an injected ``train.TrainHooks`` callback
(tests/kill_entry.py); the library reads no test variable.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import torch
import torch.distributed as dist

from titan_jepa.parallel.collectives import rank_world

logger = logging.getLogger("titan_jepa")

class Preemption:
    """A SIGTERM flag that all ranks agree on at step boundaries."""

    def __init__(self, device: torch.device):
        self.device = device
        self.signalled = False
        self._previous = None
        self._world = rank_world()[1]
        self.collective = self._world > 1  # stop_requested() is a collective (and a host sync)
        self._previous = {}
        # signal handlers can only be installed from the main thread
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        # no logging here: a handler may interrupt the logging machinery itself
        name = b"Ctrl-C" if signum == signal.SIGINT else b"SIGTERM"
        if self.signalled:
            if signum == signal.SIGINT:  # a second Ctrl-C: now
                os.write(2, b"[titan_jepa] Ctrl-C again: stopped at once, nothing more saved (a relaunch "
                            b"resumes from the last complete checkpoint)\n")
                os._exit(130)
            return
        self.signalled = True
        os.write(2, b"[titan_jepa] " + name + b" received: stopping with a checkpoint after this step (several "
                    b"processes: after the next sync step; Ctrl-C again stops at once)\n")

    def stop_requested(self) -> bool:
        """Collective (and a host sync) when the world is larger than one: every rank must call
        it at the same steps (train.py: the sync steps)."""
        if self._world == 1:
            return self.signalled
        flag = torch.tensor([1.0 if self.signalled else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def close(self) -> None:
        """Put the previous handlers back (train() may run several times in one process)."""
        if threading.current_thread() is threading.main_thread():
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
        self._previous = {}
