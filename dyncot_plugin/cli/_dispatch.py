"""Sub-command dispatcher with one CLI style for every command: each sub-command lives in its own module, imported
only when it runs.

A sub-command module exposes ``add_arguments(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int`` and a module docstring used as help. Exit codes, the same everywhere:

* ``0``: done;
* ``1``: a runtime or partial failure (``run`` returns 1: some samples failed, the endpoint went away, ...);
* ``2``: bad input or usage: argparse's own usage errors, and any :class:`~dyncot_plugin.io.read.InputError`
  raised by ``run``, printed as one line ``<prog> <command>: error: <message>`` without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def dispatch(prog: str, description: str, commands: dict[str, str], argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} <command> [options]\n\n{description}\n\ncommands:")
        for name in commands:
            print(f"  {name:<20} see `{prog} {name} --help`")
        return EXIT_OK if argv else EXIT_BAD_INPUT
    name = argv[0]
    if name not in commands:
        import difflib

        close = difflib.get_close_matches(name, list(commands), n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        print(f"{prog}: error: unknown command `{name}`.{hint} Commands: {', '.join(commands)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    module = importlib.import_module(commands[name])
    parser = argparse.ArgumentParser(
        prog=f"{prog} {name}", description=(module.__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return run_command(f"{prog} {name}", module.run, args)


def run_command(prog: str, run, args: argparse.Namespace) -> int:
    """``run(args)`` with the exit-code convention above; bad input becomes one ``<prog>: error:`` line."""
    from dyncot_plugin.io.read import InputError

    try:
        return int(run(args) or EXIT_OK)
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_FAILED
