"""``dyncot-data``: build and inspect the datasets the plugin trains on."""

from __future__ import annotations

import sys

from dyncot_plugin.cli._dispatch import dispatch

COMMANDS = {
    "convert-cmkp": "dyncot_plugin.data.cmkp",
    "stats": "dyncot_plugin.data.stats",
    "resplit": "dyncot_plugin.data.resplit",
    "gen-cot": "dyncot_plugin.teacher.gen_cot",
    "demo-data": "dyncot_plugin.data.demo",
    "convert-scienceqa": "dyncot_plugin.data.scienceqa",
    "build-stage2": "dyncot_plugin.data.stage2",
    "attach-ids": "dyncot_plugin.data.predictions",
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("dyncot-data", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
