"""``dyncot-eval``: score model outputs. ``dyncot-eval mmkp ...`` (keyphrases), ``dyncot-eval table NAME=PREDICTIONS ...``
(the keyphrase scores of N runs on the same posts, differences with paired bootstrap intervals) or
``dyncot-eval scienceqa ...``."""

from __future__ import annotations

import sys

from dyncot_plugin.cli._dispatch import dispatch

COMMANDS = {
    "mmkp": "dyncot_plugin.tasks.mmkp.evaluate",
    "table": "dyncot_plugin.tasks.mmkp.table",
    "scienceqa": "dyncot_plugin.tasks.scienceqa.evaluate",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["mmkp"] + argv  # keyphrase evaluation is the default
    return dispatch("dyncot-eval", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
