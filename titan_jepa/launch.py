"""torchrun, with one-line errors: ``python -m titan_jepa.launch`` takes torchrun's arguments.

    python -m titan_jepa.launch --standalone --nproc_per_node=8 -m titan_jepa.train --config X.toml

A mistake a user can fix (a bad config value, a run folder in use, ...) makes every worker
exit with code 2 after rank 0 printed ``error: <one line>``; plain torchrun then adds its
``ChildFailedError`` traceback and a failure summary per rank. This launcher runs torchrun's
own ``main`` and, when the first worker to fail exited with code 2 (the agent stops the
others with SIGTERM), exits with code 2 and nothing more. Any other failure (a crash, a
signal) is reported as torchrun reports it.
"""

from __future__ import annotations

import logging
import signal
import sys

USER_ERROR = 2


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    # the agent logs each failed worker before it raises; the summary comes from below
    elastic = logging.getLogger("torch.distributed.elastic")
    level = elastic.level
    elastic.setLevel(logging.CRITICAL)
    try:
        torchrun(sys.argv[1:] if argv is None else argv)
    except ChildFailedError as e:
        _, first = e.get_first_failure()
        # the first worker to fail exited with a user error; the agent then stops the others
        if first.exitcode == USER_ERROR and all(f.exitcode in (USER_ERROR, -signal.SIGTERM)
                                                for f in e.failures.values()):
            sys.exit(USER_ERROR)  # rank 0 printed the one line
        elastic.setLevel(level)
        print(e.format_msg(), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
