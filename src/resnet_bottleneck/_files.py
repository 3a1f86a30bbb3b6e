"""File helpers: nothing half-written on failure."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import WriteError

#: A write that failed on its way, not for the path given: a full disk or quota, an I/O error.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(file)`` so that it appears whole or not at all.

    The bytes go to a temporary file beside ``path``, are flushed to disk, and the file
    is renamed over ``path`` only once ``write`` has returned.

    Raises:
      WriteError: the disk is full or failed (:data:`WRITE_ERRNOS`), naming ``path``; the temporary file is removed.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
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
