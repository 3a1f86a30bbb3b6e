"""mkdocs hook: the command-line reference, generated from the argparse parsers at build time.

``docs/cli.md`` holds a marker line, ``<!-- cli-reference -->``; this hook replaces it with one section per
subcommand of ``resnet_bottleneck.cli.build_parser()``: its description, its usage and a table of its
arguments with their help (defaults and choices filled in as ``--help`` prints them). Nothing is written by
hand, so the page cannot drift from the parsers. The hook also publishes the benchmark plots that
BENCHMARKS.md links to (``benchmarks/*.png``), so that the benchmarks page, which includes that file, has them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
ROOT = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    src = str(ROOT / "src")
    if src not in sys.path:  # build from a checkout without installing it
        sys.path.insert(0, src)
    from resnet_bottleneck.cli import build_parser

    return build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Each subcommand's parser and its one-line summary, in the order ``--help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (sub, summaries.get(name, "")) for name, sub in action.choices.items()}
    return {}


def _escape(text: str) -> str:
    """Help text as Markdown: one line; pipes (table cells), asterisks and angle brackets escaped."""
    text = " ".join(text.split())
    return text.replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;").replace(">", "&gt;")


def _invocation(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    """What one types: ``--flag METAVAR`` (every spelling), or a positional's metavar."""
    formatter = parser._get_formatter()
    if not action.option_strings:
        return formatter._get_default_metavar_for_positional(action) if action.metavar is None else action.metavar
    return formatter._format_action_invocation(action)


def _help(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    """The help as ``--help`` prints it (``%(default)s`` expanded, BooleanOptionalAction's default added)."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    return parser._get_formatter()._expand_help(action)


def _section(name: str, parser: argparse.ArgumentParser, summary: str, level: int) -> list[str]:
    lines = [f"{'#' * level} `{parser.prog}`", ""]
    if summary:
        lines += [f"*{_escape(summary)}*", ""]
    usage = parser.formatter_class(prog=parser.prog, width=100)  # not the terminal's width: the same page anywhere
    usage.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    lines += ["```text", usage.format_help().strip(), "```", ""]
    if parser.description:
        lines += [_escape(parser.description), ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
        actions = [a for a in actions if not isinstance(a, argparse._SubParsersAction)]
        if not actions:
            continue
        title = group.title or "arguments"
        lines += [f"**{title[0].upper() + title[1:]}**", "", "| argument | help |", "|---|---|"]
        for action in actions:
            help_text = _help(action, parser)
            if action.choices and not isinstance(action, argparse._SubParsersAction):
                choices = ", ".join(f"`{choice}`" for choice in action.choices)
                help_text = f"{help_text} (one of {choices})" if help_text else f"one of {choices}"
            lines.append(f"| `{_invocation(action, parser)}` | {_escape(help_text)} |")
        lines.append("")
    return lines


def cli_reference() -> str:
    """The whole reference as Markdown: the top-level command, then every subcommand."""
    parser = _parser()
    commands = _subcommands(parser)
    lines = ["## Commands", "", "| command | what it does |", "|---|---|"]
    lines += [f"| [`{name}`](#{parser.prog}-{name}) | {_escape(summary)} |" for name, (_, summary) in commands.items()]
    lines += [""]
    lines += _section(parser.prog, parser, "", 2)
    for name, (sub, summary) in commands.items():
        lines += _section(name, sub, summary, 2)
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "cli.md":
        if MARKER not in markdown:
            raise ValueError(f"docs/cli.md: the marker {MARKER!r} is missing; the CLI reference goes there")
        return markdown.replace(MARKER, cli_reference())
    return markdown


def on_files(files, config):
    """Publish ``benchmarks/*.png`` (linked from BENCHMARKS.md, included by docs/benchmarks.md)."""
    from mkdocs.structure.files import File

    for image in sorted((ROOT / "benchmarks").glob("*.png")):
        uri = f"benchmarks/{image.name}"
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(image)))
    return files
