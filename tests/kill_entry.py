"""A test-only entry point: ``titan_jepa.train.main`` with a fault-injection hook.

    torchrun ... tests/kill_entry.py --kill-at-step N [--kill-signal SIGTERM] --config X.toml ...
    python tests/kill_entry.py --kill-at-step N --kill-signal SIGTERM --config X.toml

At the start of step N the last rank sends itself the signal (default SIGKILL), on the first
attempt only: torchrun sets TORCHELASTIC_RESTART_COUNT, and a restarted worker (count > 0)
does not kill itself again. The other arguments go to titan_jepa.train unchanged.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from titan_jepa.train import TrainHooks, main


def kill_hook(at_step: int, sig: signal.Signals):
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0

    def on_step_start(step: int) -> None:
        if step == at_step and rank == world - 1 and first_attempt:
            print(f"[titan_jepa] test hook: rank {rank} sends itself {sig.name} at step {step}", flush=True)
            os.kill(os.getpid(), sig)

    return on_step_start


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at-step", type=int, required=True)
    parser.add_argument("--kill-signal", default="SIGKILL")
    args, rest = parser.parse_known_args(sys.argv[1:])
    main(rest, hooks=TrainHooks(on_step_start=kill_hook(args.kill_at_step, getattr(signal, args.kill_signal))))
