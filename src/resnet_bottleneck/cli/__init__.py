"""The ``resnet-bottleneck`` command line: one module per subcommand, flags -> library calls.

Every subcommand reports bad input the same way: one line on stderr,
``resnet-bottleneck <command>: error: <message>`` naming the argument, its value and what was
expected, and exit status 2; no traceback. Under ``--verbose`` (``convert``, ``predict``) an
error with details (every mismatched tensor of a weights file) prints them below that line.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import WriteError
from . import convert, cost, evaluate, export, forward, predict, train
from ._common import PROG, UsageError

#: The subcommands, in the order ``--help`` lists them; each has ``add_parser(commands)``.
COMMANDS = (forward, cost, convert, export, predict, evaluate, train)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line
        raise UsageError(message, prog=self.prog)


def version() -> str:
    """The package's version (``resnet_bottleneck.__version__``, from its installed metadata)."""
    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="The ResNet bottleneck block and its family in JAX/Flax.")
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 1 for a diverged run or a failed write, 2 for bad input)."""
    args = None
    try:
        parser = build_parser()
        if not (sys.argv[1:] if argv is None else argv):  # no command: the help, as asked for
            parser.print_help(sys.stdout)
            return 0
        args = parser.parse_args(argv)
        return args.run(args)
    except UsageError as err:
        prog, message, details = err.prog, str(err), err.details
    except WriteError as err:  # a write that failed on its way (a full disk), naming the path: exit 1
        print(f"{PROG} {getattr(args, 'command', '')}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return err.status
    except (TypeError, ValueError, OSError, ImportError) as err:
        prog, message = None, str(err)
        details = err.details() if callable(getattr(err, "details", None)) else None
    prog = prog or f"{PROG} {getattr(args, 'command', '')}".rstrip()
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message
    if details and getattr(args, "verbose", False):
        print(details, file=sys.stderr)
    return 2
