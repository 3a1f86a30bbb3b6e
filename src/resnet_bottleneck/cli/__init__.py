"""The ``resnet-bottleneck`` command line: one module per subcommand, flags -> library calls.

Every subcommand reports bad input the same way: one line on stderr,
``resnet-bottleneck <command>: error: <message>`` naming the argument, its value and what was
expected, and the error's exit status (:attr:`resnet_bottleneck.errors.Error.status`: 2 for bad input,
1 for a run that failed on its way); no traceback. Under ``--verbose`` (``convert``, ``predict``) an
error with details (every mismatched tensor of a weights file) prints them below that line.

Only the library's own errors (:mod:`resnet_bottleneck.errors`, :class:`UsageError` among them) are
told so: any other exception is a bug, shown with its traceback and a line asking to report it, exit
status 1. ``--debug`` (before the command) or ``RESNET_BOTTLENECK_DEBUG=1`` shows the traceback of
an input error too.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from .. import __version__, errors
from . import convert, cost, evaluate, export, forward, predict, serve, train
from ._common import PROG, UsageError, resolve_runtime

#: The subcommands, in the order ``--help`` lists them; each has ``add_parser(commands)``.
COMMANDS = (forward, cost, convert, export, predict, evaluate, train, serve)
#: The environment variable that, set to anything but ``""`` or ``"0"``, acts as ``--debug``.
DEBUG_VARIABLE = "RESNET_BOTTLENECK_DEBUG"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line
        raise UsageError(message, prog=self.prog)


def version() -> str:
    """The package's version (``resnet_bottleneck.__version__``, from its installed metadata)."""
    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="The ResNet bottleneck block and its family in JAX/Flax.")
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the traceback of an input error too (as {DEBUG_VARIABLE}=1 does); a bug always shows its own",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status: 0, the library error's ``status`` (2 for bad input,
    1 for a diverged run or a failed write), or 1 for a bug (any other exception, told with its traceback).
    ``KeyboardInterrupt`` is not caught."""
    args = None
    debug = os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    try:
        parser = build_parser()
        if not (sys.argv[1:] if argv is None else argv):  # no command: the help, as asked for
            parser.print_help(sys.stdout)
            return 0
        args = resolve_runtime(parser.parse_args(argv))
        debug = debug or args.debug
        return args.run(args)
    except errors.Error as err:  # bad input, a run that cannot go on, a missing optional dependency
        return _report(err, args, debug)
    except Exception as err:  # anything else is a bug, not the user's mistake
        _print_traceback(err)
        print(
            f"{_prog(args)}: internal error: {type(err).__name__}: {_one_line(str(err))}. This is a bug in "
            f"{PROG} {version()}, not a problem with your input: please report this with the traceback above",
            file=sys.stderr,
        )
        return 1


def _report(err: Exception, args, debug: bool) -> int:
    """One line for a library error (a ``DependencyError``: a missing optional dependency, its message says
    what to install), below its traceback under ``debug`` and above its details under ``--verbose``; its status."""
    if debug:
        _print_traceback(err)
    print(f"{getattr(err, 'prog', None) or _prog(args)}: error: {_one_line(str(err))}", file=sys.stderr)
    details = err.details() if callable(getattr(err, "details", None)) else getattr(err, "details", None)
    if details and getattr(args, "verbose", False):
        print(details, file=sys.stderr)
    return getattr(err, "status", 2)


def _prog(args) -> str:
    return f"{PROG} {getattr(args, 'command', None) or ''}".rstrip()


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _print_traceback(err: BaseException) -> None:
    """``err``'s traceback on stderr, with the exceptions it was raised from or while handling (those that
    ``raise ... from None`` hides: the library's own frames behind a command-line error)."""
    seen, chained = set(), err
    while chained is not None and id(chained) not in seen:
        seen.add(id(chained))
        chained.__suppress_context__ = False
        chained = chained.__cause__ or chained.__context__
    traceback.print_exception(err, file=sys.stderr)
