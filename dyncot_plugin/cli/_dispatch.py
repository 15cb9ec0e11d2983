"""Tiny sub-command dispatcher: each sub-command lives in its own module, imported only when it runs.

A sub-command module exposes ``add_arguments(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int`` (its exit code) and a one-line module docstring used as help.
"""

from __future__ import annotations

import argparse
import importlib
import sys


def dispatch(prog: str, description: str, commands: dict[str, str], argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} <command> [options]\n\n{description}\n\ncommands:")
        for name, module in commands.items():
            print(f"  {name:<20} see `{prog} {name} --help`")
        return 0 if argv else 2
    name = argv[0]
    if name not in commands:
        import difflib

        close = difflib.get_close_matches(name, list(commands), n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        print(f"{prog}: unknown command `{name}`.{hint} Commands: {', '.join(commands)}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name])
    parser = argparse.ArgumentParser(prog=f"{prog} {name}", description=(module.__doc__ or "").strip())
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)
