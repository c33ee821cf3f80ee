"""The files of a checkpoint folder: their names, atomic writes and renames, and the
integrity manifest with its verification (titan_jepa/checkpoint/manager.py saves and resumes).

Integrity: just before the rename, rank 0 writes ``manifest.json`` ({relative path: [size,
crc32]} of every file of the folder; zlib.crc32 streamed in 4 MiB blocks: measured on the
2-core CI machine 1.0 s per GB hashed in memory, 4.3 s per GB with the read-back, on one
thread of rank 0, after the write; in the background with async_mode;
``checkpoint.checksums = false`` records sizes alone and reads nothing back). Resume verifies the newest complete checkpoint against
its manifest (and that its ``.metadata`` parses); a truncated or missing file, a garbage
``.metadata`` or a changed byte gives one warning naming the step, the folder is renamed
to ``step-<N>.corrupt`` (never deleted; kept by keep_latest_k pruning) and the next older
one is tried. With none left the run stops with one line naming the folder and
``--checkpoint.load_step``; an explicit ``checkpoint.load_step`` that fails verification
stops with one line and is left in place. Checkpoints written before manifests existed are
checked for a readable ``.metadata`` and present files only. A save that fails (a full disk,
say) removes its ``.tmp`` folder and stops the run with one line; the previous checkpoint
is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import warnings
import zlib
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from titan_jepa.config import JobConfig

logger = logging.getLogger("titan_jepa")

TMP = ".tmp"
DELETING = ".deleting"
OLD = ".old"
CORRUPT = ".corrupt"
TRAIN_STATE = "train_state.json"
MANIFEST = "manifest.json"


@contextlib.contextmanager
def quiet_dcp():
    """DCP warns at every save and load without a process group, which is this stack's
    intended single-process use: that one warning is silenced here, around DCP calls only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def checkpoint_folder(cfg: JobConfig) -> Path:
    folder = Path(cfg.checkpoint.folder)
    return folder if folder.is_absolute() else cfg.run_folder / folder


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def crc32(path: Path, block: int = 4 << 20) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(block):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_manifest(folder: Path, checksums: bool = True) -> None:
    """``manifest.json``: [size, crc32 or None] of every other file under ``folder`` (rank 0,
    before the rename)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {p.relative_to(folder).as_posix(): [p.stat().st_size, crc32(p) if checksums else None]
                for p in files}
    write_file(folder / MANIFEST, json.dumps({"version": 1, "files": manifest}).encode())


def verify_checkpoint(path: Path) -> str | None:
    """The reason ``path`` is not intact (checked against its manifest), or None."""
    manifest_file = path / MANIFEST
    if manifest_file.is_file():
        try:
            files = json.loads(manifest_file.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            return "its manifest.json is unreadable"
        for rel, (size, crc) in files.items():
            f = path / rel
            if not f.is_file():
                return f"{rel} is missing"
            if f.stat().st_size != size:
                return f"{rel} has {f.stat().st_size} bytes, the manifest says {size}"
            if crc is not None and crc32(f) != crc:
                return f"{rel} does not match its checksum"
    try:  # also the only check of checkpoints written before manifests
        md = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001 -- unpickling garbage raises anything
        return f".metadata is unreadable ({type(e).__name__})"
    for info in (md.storage_data or {}).values():
        name = getattr(info, "relative_path", None)
        if name and not (path / name).is_file():
            return f"{name} is missing"
        if name and (path / name).stat().st_size < info.offset + info.length:
            return f"{name} is truncated"
    return None


def move_aside(path: Path) -> Path:
    target, n = path.with_name(path.name + CORRUPT), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}{CORRUPT}.{n}"), n + 1
    os.rename(path, target)
    return target


def rename_into_place(tmp: Path, final: Path) -> None:
    """``tmp`` becomes ``final`` atomically. When ``final`` exists (the same step saved again,
    a run resumed from an earlier step) it is moved to ``final.old`` first: an interruption
    between the two renames leaves that complete checkpoint, which the next launch puts back."""
    if final.exists():
        old = final.with_name(final.name + OLD)
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def remove_unfinished(folder: Path) -> None:
    """Remove the leftovers of an interrupted save (``step-N.tmp``) or prune (``*.deleting``)."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.endswith(TMP) and p.is_dir():
                logger.warning(f"removing the unfinished checkpoint {p} (an interrupted save)")
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.endswith(DELETING) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.endswith(OLD) and p.is_dir():  # a replaced checkpoint: back if its successor is missing
                final = p.with_name(p.name[:-len(OLD)])
                if final.exists():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    os.rename(p, final)


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint atomically: renamed out of the ``step-N`` names first, then deleted,
    so an interruption never leaves a ``step-N`` with files missing."""
    aside = path.with_name(path.name + DELETING)
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def save_failure(error: BaseException, folder: Path) -> tuple[str, str]:
    """(what happened, the fix) of a failed save, by cause: a full disk or quota, a folder that
    is not writable, a folder deleted under the run, a lost peer rank, or anything else."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    code = getattr(error, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or (code is None and "unexpected pos" in text and _nearly_full(folder)):
        return ("the disk is full" if code != errno.EDQUOT else "the disk quota is exceeded",
                "free space there or set --checkpoint.folder to another disk")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"the folder is not writable ({'read-only filesystem' if code == errno.EROFS else 'permission denied'})",
                "fix its permissions or set --checkpoint.folder")
    if code == errno.ENOENT or not folder.is_dir():
        return ("the checkpoint folder was removed while the run wrote into it",
                "restore it (or set --checkpoint.folder) and relaunch: the run resumes from the last checkpoint")
    if isinstance(error, (dist.DistBackendError, dist.DistNetworkError)) or "peer" in text.lower():
        return (f"another rank was lost during the save ({type(error).__name__}: {text})",
                "relaunch the run: it resumes from the last complete checkpoint")
    return f"{type(error).__name__}: {text}", "check the checkpoint folder, or set --checkpoint.folder"


def _nearly_full(folder: Path) -> bool:
    """Whether the disk of ``folder`` has less than 1 % (or 64 MiB) free."""
    try:
        usage = shutil.disk_usage(folder if folder.exists() else folder.parent)
    except OSError:
        return False
    return usage.free < max(usage.total // 100, 64 << 20)
