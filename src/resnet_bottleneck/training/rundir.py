"""One run per output directory: ``OUT/run.lock``, held by ``fcntl.flock`` while a run lives.

The kernel releases a ``flock`` when its holder dies (SIGKILL included), and NFSv4 when the holder's
lease runs out (a lost host), so a lock that can be taken means no live run holds the directory.
The file says who holds it (pid, host, start time), written once the lock is held; a run that ends
empties it before letting go, so a holder found there by the next run is one that died, and the
takeover is said in one line. The file itself stays: unlinking a lock file races with a run opening it.
Readers (``evaluate``, ``export``, ``predict``) never take the lock: they read finalized checkpoints.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import functools
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from .._files import refused_path
from ..errors import BusyError

#: The lock file, in the run's output directory.
LOCK_FILE = "run.lock"


def _holder(text: str) -> str:
    """The holder a lock file names, in words: ``process 123 on host-a (since 2026-...)``."""
    try:
        who = json.loads(text)
        return f"process {who['pid']} on {who['host']} (since {who['started']})"
    except (ValueError, TypeError, KeyError):
        return "a process that has not yet written its pid and host"


@contextlib.contextmanager
def hold(out: str | os.PathLike | None, primary: bool = True) -> Iterator[None]:
    """Holds ``out`` for this run for the ``with`` block; nothing without ``out`` or on a process other
    than the primary one (``primary``: only process 0 of a multi-process run takes the lock, as only it
    writes the run's files; a second multi-process job on one directory is refused by its process 0, and
    what becomes of its other processes is left to JAX's distributed runtime: not tested here).

    Raises:
      BusyError: a live run holds ``out``; the message names the directory and the holder (pid, host).
    """
    if out is None or not primary:
        yield
        return
    out = Path(out)
    path = out / LOCK_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for every file of the run
    except OSError as err:  # a read-only or foreign directory, a file in its place: bad input, not a bug
        raise refused_path(err, out, "the run's output directory") from None
    try:
        locked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(
                f"{out} is in use by the run of {_holder(path.read_text())}; wait for it to end, or use another "
                "output directory"
            ) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            print(
                f"note: {path} cannot be locked ({os.strerror(err.errno)}): a second run on {out} would not be refused",
                file=sys.stderr,
                flush=True,
            )
            locked = False
        before = os.pread(fd, 4096, 0).decode(errors="replace")
        if locked and before.strip():
            print(
                f"taking over {out}: the run of {_holder(before)} ended without letting go (killed, or its host lost)",
                file=sys.stderr,
                flush=True,
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # ended, not dead: the next run takes over silently
    finally:
        os.close(fd)  # releases the lock


def holding(train):
    """``train(config, out=None, ...)`` run inside :func:`hold` of its ``out``, on process 0 only."""

    @functools.wraps(train)
    def held(config, out=None, *args, **kwargs):
        import jax

        with hold(out, primary=jax.process_index() == 0):
            return train(config, out, *args, **kwargs)

    return held
