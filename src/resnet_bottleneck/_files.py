"""File helpers: nothing half-written on failure; files as open to others as the umask allows."""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import FileError, WriteError

#: A write that failed on its way, not for the path given: a full disk or quota, an I/O error.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)
#: Flags of the temporary file: created here or not at all, never through a link, not inherited by children.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new, empty file beside ``path`` (hidden, ``.NAME.<random>.tmp``), created with mode 0o666
    so that the kernel applies the umask (and a folder's default ACL) as for any file a program writes.

    ``tempfile.mkstemp`` would make it 0o600 whatever the umask: a model file others could not read.
    Creating it with 0o666 needs no reading of the umask, which ``os.umask`` can only do by setting it,
    for the whole process, racing any thread that creates a file meanwhile.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, _CREATE, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot write {path}: no free temporary name beside it")


def refused_path(err: OSError, path, what: str) -> Exception:
    """The library error for an ``OSError`` met at ``path``: a :class:`WriteError` (exit status 1) where the
    disk failed (:data:`WRITE_ERRNOS`), else a :class:`FileError` (bad input: no permission, a read-only
    file system, a file where a folder should be) saying ``path`` cannot serve as ``what``."""
    if err.errno in WRITE_ERRNOS:
        failed = WriteError(f"cannot write {path}: {err.strerror}")
        failed.errno = err.errno
        return failed
    return FileError(f"{path} cannot serve as {what} ({err.strerror or err})")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(file)`` so that it appears whole or not at all.

    The bytes go to a temporary file beside ``path``, are flushed to disk, and the file
    is renamed over ``path`` only once ``write`` has returned. The file's mode is
    ``0o666 & ~umask``, as for files other programs write.

    Raises:
      WriteError: the disk is full or failed (:data:`WRITE_ERRNOS`), naming ``path``; the temporary file is removed.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileError(f"cannot write {path}: directory {directory} does not exist")
    tmp = None
    try:
        fd, tmp = _create_beside(directory / path.name)
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError) and err.errno in WRITE_ERRNOS:
            failed = WriteError(f"cannot write {path}: {err.strerror}; nothing was written there")
            failed.errno = err.errno
            raise failed from None
        raise
    return path
