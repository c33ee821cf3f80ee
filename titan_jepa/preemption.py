"""Preemption (SIGTERM) and the fault-injection test hook.

SIGTERM is what schedulers (SLURM, Kubernetes) send before they take a machine back, and what
a torchrun agent forwards to its workers when it is itself terminated. ``Preemption``
installs a handler that only sets a flag; at the end of every step the training loop calls
``stop_requested()``, a MAX all-reduce of the flag over the whole world, so every rank
stops after the same step even when only one of them was signalled. The loop then saves a
checkpoint of that step, waits for it to be written, and returns: the process exits with
code 0 and the next launch resumes from that checkpoint. Further SIGTERMs are ignored (a
worker may get one from the scheduler and one forwarded by its torchrun agent); the agent
sends SIGKILL after its ``--shutdown_timeout`` (30 s by default), so give big checkpoints
more time there.

Test hook: with ``TITAN_JEPA_TEST_KILL_AT_STEP=N`` the last rank sends itself
``TITAN_JEPA_TEST_KILL_SIGNAL`` (default SIGKILL; e.g. SIGTERM) at the start of step N, on
the first attempt only: torchrun sets ``TORCHELASTIC_RESTART_COUNT``, and a restarted
worker (count > 0) does not kill itself again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import torch
import torch.distributed as dist

logger = logging.getLogger("titan_jepa")

KILL_ENV = "TITAN_JEPA_TEST_KILL_AT_STEP"
KILL_SIGNAL_ENV = "TITAN_JEPA_TEST_KILL_SIGNAL"


class Preemption:
    """A SIGTERM flag that all ranks agree on at step boundaries."""

    def __init__(self, device: torch.device):
        self.device = device
        self.signalled = False
        self._previous = None
        self._world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        # signal handlers can only be installed from the main thread
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signalled:
            return
        self.signalled = True
        # no logging here: a handler may interrupt the logging machinery itself
        os.write(2, b"[titan_jepa] SIGTERM received: stopping after this step with a checkpoint\n")

    def stop_requested(self) -> bool:
        """Collective when the world is larger than one: every rank must call it once per step."""
        if self._world == 1:
            return self.signalled
        flag = torch.tensor([1.0 if self.signalled else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def close(self) -> None:
        """Put the previous SIGTERM handler back (train() may run several times in one process)."""
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def maybe_kill_for_test(step: int, rank: int, world: int) -> None:
    """The fault-injection hook described in the module docstring."""
    want = os.environ.get(KILL_ENV)
    if not want or int(want) != step or rank != world - 1:
        return
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return
    sig = getattr(signal, os.environ.get(KILL_SIGNAL_ENV, "SIGKILL"))
    print(f"[titan_jepa] test hook: rank {rank} sends itself {sig.name} at step {step}", flush=True)
    os.kill(os.getpid(), sig)
