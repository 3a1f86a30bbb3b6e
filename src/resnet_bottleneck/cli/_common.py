"""What the subcommands share: the program's name and the one error they raise."""

from __future__ import annotations

PROG = "resnet-bottleneck"


class UsageError(Exception):
    """Bad command-line input: reported as ``PROG COMMAND: error: message``, exit status 2."""

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.prog = prog
