"""A run folder belongs to one run: checked, then locked for the run's whole life.

    lock = open_run_folder(run_folder)   # rank 0, before anything in the folder is touched
    ...
    lock.release()                       # at exit (also when the process dies: the OS frees it)

``open_run_folder`` first makes sure the folder can be a run folder (a file in its place, a
read-only filesystem or a folder without write permission is one line naming the fix), then
takes the lock (``RunFolderInUse``, one line naming the holder, when another run has it).

The lock is ``<run>/.lock``: an advisory ``fcntl.flock`` on the open file, plus its content
``{"host", "pid", "started", "heartbeat"}`` rewritten every ``HEARTBEAT_S`` seconds by a
daemon thread. Taking it:

- the flock is taken without waiting: a live holder on this machine (or on a filesystem whose
  locks reach every client: local disks, NFSv4 with lockd, Lustre mounted with ``-o flock``)
  makes the second launch fail at once, naming the holder;
- when the flock is free but the file names another host whose heartbeat is younger than
  ``STALE_S``, that host may hold a lock this machine cannot see (NFSv3 without lockd,
  Lustre with ``-o localflock``): the launch is refused as well;
- a lock left by a dead process (this host: its pid is gone; another host: no heartbeat for
  ``STALE_S``) is taken over with a warning.

So on a shared filesystem whose locks do not reach every client, a requeued job that starts
on another node while its old allocation is alive is refused as long as the old one beats,
and may take over ``STALE_S`` (3 minutes) after it died. The file is never deleted (a
deleted lock file lets two runs lock two different files); releasing rewrites it as free.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from titan_jepa.errors import ConfigError, RunFolderInUse

logger = logging.getLogger("titan_jepa")
LOCK = ".lock"
HEARTBEAT_S = 30.0
STALE_S = 180.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunFolderLock:
    def __init__(self, folder: Path, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
        self.folder, self.path = Path(folder), Path(folder) / LOCK
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started = datetime.datetime.now().isoformat(timespec="seconds")

    def _holder(self) -> dict:
        try:
            text = os.pread(self._fd, 4096, 0).decode("utf-8", "replace")
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def _write(self, free: bool = False) -> None:
        record = {"host": self.host, "pid": self.pid, "started": self.started, "heartbeat": time.time(),
                  "free": free}
        data = json.dumps(record).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def acquire(self) -> None:
        """Take the lock or raise RunFolderInUse (one line naming the holder and the fix)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = self._holder()
            for _ in range(20):  # the holder may have just taken the flock and not written itself yet
                if holder and not holder.get("free"):
                    break
                time.sleep(0.05)
                holder = self._holder()
            self._close()
            raise RunFolderInUse(self._in_use(holder)) from None
        holder = self._holder()
        if holder and not holder.get("free"):
            other_host = holder.get("host") != self.host
            age = time.time() - float(holder.get("heartbeat", 0))
            if other_host and age < self.stale_s:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._close()
                raise RunFolderInUse(self._in_use(holder, f"; its heartbeat is {age:.0f} s old (a lock of "
                                                          f"another host may not be visible here)"))
            if not other_host and holder.get("pid") not in (None, self.pid) and _pid_alive(int(holder["pid"])) \
                    and age < self.stale_s:
                # a live process of this host that does not hold the flock: a filesystem without locks
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._close()
                raise RunFolderInUse(self._in_use(holder))
            why = (f"pid {holder.get('pid')} is gone" if not other_host
                   else f"no heartbeat for {age:.0f} s")
            logger.warning(f"taking over the lock of {self.folder} left by pid {holder.get('pid')} on "
                           f"{holder.get('host')} ({why})")
        self._write()
        self._thread = threading.Thread(target=self._beat, name="run-folder-lock", daemon=True)
        self._thread.start()

    def _in_use(self, holder: dict, extra: str = "") -> str:
        who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}" if holder
               else "another process")
        return (f"the run folder {self.folder} is in use by {who}{extra}; give this run another --job.name "
                f"(or --job.dump_folder), or wait for that run to end")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
            except OSError:  # the folder went away: the run will find out when it next saves
                return

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._write(free=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError:
            pass
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def check_run_folder(folder: Path) -> None:
    """One line naming the fix when ``folder`` cannot be a run folder (made here if missing)."""
    folder = Path(folder)
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"the run folder {folder} (job.dump_folder / job.name) cannot be made: {p} is a "
                                  f"file; choose another --job.dump_folder or --job.name")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"the run folder {folder} cannot be made ({_why(e)}); choose another --job.dump_folder") \
            from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"the run folder {folder} is not writable (permission denied); choose another "
                          f"--job.dump_folder or fix its permissions")
    probe = folder / f".write-test-{os.getpid()}"
    try:  # a read-only mount passes os.access for root
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"the run folder {folder} is not writable ({_why(e)}); choose another --job.dump_folder") \
            from None


def _why(e: OSError) -> str:
    return {errno.EROFS: "read-only filesystem", errno.EACCES: "permission denied", errno.ENOSPC: "no space left",
            errno.EDQUOT: "disk quota exceeded", errno.ENOTDIR: "a file is in its path"}.get(
        e.errno, e.strerror or type(e).__name__)


def open_run_folder(folder: Path) -> RunFolderLock:
    """Check ``folder`` and take its lock (rank 0 of a run, before anything else touches it)."""
    check_run_folder(folder)
    lock = RunFolderLock(folder)
    lock.acquire()
    return lock


def own_run_folder(folder: Path, rank: int, world: int) -> RunFolderLock | None:
    """Rank 0 checks and locks the run folder; every rank raises its error (one line, printed
    by rank 0) when it cannot. Returns the lock on rank 0, None elsewhere."""
    lock, err = None, None
    if rank == 0:
        try:
            lock = open_run_folder(folder)
        except (ConfigError, RunFolderInUse) as e:
            err = (type(e) is RunFolderInUse, str(e))
    if world > 1:
        import torch.distributed as dist

        box = [err]
        dist.broadcast_object_list(box, src=0)
        err = box[0]
    if err is not None:
        raise (RunFolderInUse if err[0] else ConfigError)(err[1])
    return lock
