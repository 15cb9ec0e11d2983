"""``dyncot-data``: build and inspect the datasets the plugin trains on."""

from __future__ import annotations

import sys

from dyncot_plugin.cli._dispatch import dispatch

COMMANDS = {
    "convert-cmkp": "dyncot_plugin.tasks.mmkp.convert",
    "stats": "dyncot_plugin.tasks.mmkp.stats",
    "resplit": "dyncot_plugin.tasks.mmkp.resplit",
    "demo-data": "dyncot_plugin.tasks.mmkp.demo",
    "synth-demo-data": "dyncot_plugin.tasks.mmkp.synthetic_demo",
    "gen-cot": "dyncot_plugin.teacher.gen_cot",
    "convert-scienceqa": "dyncot_plugin.tasks.scienceqa.convert",
    "build-stage2": "dyncot_plugin.tasks.scienceqa.stage2",
    "attach-ids": "dyncot_plugin.io.predictions",
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("dyncot-data", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
