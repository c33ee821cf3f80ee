"""A test-only entry point: ``titan_jepa.train.main`` with a fault-injection hook.

    torchrun ... tests/kill_entry.py --kill-at-step N [--kill-signal SIGTERM] --config X.toml ...
    python tests/kill_entry.py --kill-at-step N --kill-signal SIGTERM --config X.toml
    python tests/kill_entry.py --stall-in-save N --config X.toml

--kill-at-step: at the start of step N the last rank sends itself the signal (default
SIGKILL), on the first attempt only: torchrun sets TORCHELASTIC_RESTART_COUNT, and a
restarted worker (count > 0) does not kill itself again.
--stall-in-save: rank 0 prints "stalled in save of step N" and sleeps inside the save of
step N, after all its files are written and before the rename (a test then kills it).
The other arguments go to titan_jepa.train unchanged.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from titan_jepa.train import TrainHooks, main


def kill_hook(at_step: int, sig: signal.Signals):
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0

    def on_step_start(step: int) -> None:
        if step == at_step and rank == world - 1 and first_attempt:
            print(f"[titan_jepa] test hook: rank {rank} sends itself {sig.name} at step {step}", flush=True)
            os.kill(os.getpid(), sig)

    return on_step_start


def stall_hook(at_step: int):
    def before_checkpoint_rename(step: int) -> None:
        if step == at_step:
            print(f"stalled in save of step {step}", flush=True)
            time.sleep(3600)

    return before_checkpoint_rename


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--kill-signal", default="SIGKILL")
    parser.add_argument("--stall-in-save", type=int)
    args, rest = parser.parse_known_args(sys.argv[1:])
    main(rest, hooks=TrainHooks(
        on_step_start=None if args.kill_at_step is None else kill_hook(args.kill_at_step,
                                                                     getattr(signal, args.kill_signal)),
        before_checkpoint_rename=None if args.stall_in_save is None else stall_hook(args.stall_in_save)))
