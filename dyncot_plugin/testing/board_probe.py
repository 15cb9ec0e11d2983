"""Build LlamaBoard's page in this process and run its own handlers on given field values; report what it writes.

    python -m dyncot_plugin.testing.board_probe SPEC.json OUT.json

Run it once as is and once with ``DYNCOT_DISABLE=1`` (vanilla LlamaBoard) to compare what the two write for the same
fields, byte for byte. ``SPEC.json``: ``{"workdir", "values": {elem_id: value}, "scenarios": [...]}``; each scenario
``{"name", "values": {elem_id: value}, "save": config file name, "launch": true, "load": config file name}``. The
Train tab's fields start at their defaults; ``values`` and then the scenario's values set the others. ``save`` calls
the Save button's handler (``Runner.save_args``) and reports the saved file; ``launch`` calls Start's
(``Runner.run_train``: the recipe and ``llamaboard_config.yaml`` are written, the real ``llamafactory-cli train``
starts and is aborted at its first progress report, as the Abort button does); ``load`` calls Load's
(``Runner.load_args``) and reports the field values it sets; ``eval_args`` reports the recipe Evaluate & Predict's
Start would run (``Runner._parse_eval_args``, nothing started). Also reported: which LlamaBoard names are patched,
the element ids containing ``dyncot``, and every element's label per language (``Engine.change_lang``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

WEBUI_NAMES = (
    ("llamafactory.webui.interface", "create_train_tab"), ("llamafactory.webui.interface", "create_eval_tab"),
    ("llamafactory.webui.interface", "create_infer_tab"), ("llamafactory.webui.interface", "create_chat_box"),
    ("llamafactory.webui.runner", "load_args"), ("llamafactory.webui.runner", "Runner._initialize"),
    ("llamafactory.webui.runner", "Runner._parse_train_args"), ("llamafactory.webui.runner", "Runner._parse_eval_args"),
    ("llamafactory.webui.runner", "Runner._build_config_dict"),
    ("llamafactory.webui.chatter", "WebChatModel.load_model"),
)


def _patched() -> dict[str, bool]:
    import importlib

    out = {}
    for module, name in WEBUI_NAMES:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        out[f"{module}.{name}"] = hasattr(obj, "__dyncot_original__")
    return out


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    spec_path, out_path = (argv or sys.argv[1:])[:2]
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    os.chdir(spec["workdir"])
    from llamafactory.webui import interface

    demo = interface.create_ui()
    fns = list(demo.fns.values())
    runner = next(f.fn.__self__ for f in fns if getattr(f.fn, "__name__", "") == "save_args")
    engine = next(f.fn.__self__ for f in fns if getattr(f.fn, "__name__", "") == "change_lang")
    manager = runner.manager
    inputs = next(f.inputs for f in fns if getattr(f.fn, "__name__", "") == "save_args")
    ids = {manager.get_id_by_elem(c): c for c in inputs}

    report: dict[str, Any] = {
        "patched": _patched(),
        "dyncot_elems": sorted(elem_id for elem_id, _ in manager._id_to_elem.items() if "dyncot" in elem_id),
        "labels": {},
        "scenarios": {},
    }
    for lang in ("en", "ru", "zh", "ko", "ja"):
        updates = engine.change_lang(lang)  # raises KeyError where an entry lacks the language
        report["labels"][lang] = {manager.get_id_by_elem(elem): getattr(update, "label", None)
                                  for elem, update in updates.items()}

    for scenario in spec["scenarios"]:
        values = {**spec.get("values", {}), **scenario.get("values", {})}
        data = {component: component.value for component in inputs}
        for elem_id, value in values.items():
            if elem_id in ids:  # the Train tab's and the top's (eval.* are for eval_args)
                data[ids[elem_id]] = value
        result: dict[str, Any] = {}
        if scenario.get("save"):
            data[ids["train.config_path"]] = scenario["save"]
            result["save_message"] = str(list(runner.save_args(data).values())[0])
            result["saved"] = _read(Path("llamaboard_config") / scenario["save"])
        if scenario.get("launch"):
            output_dir = Path(values["train.output_dir"])
            launched = runner.run_train(data)
            result["first_update"] = str(list(next(launched).values())[0])[:2000]
            runner.set_abort()
            for _ in launched:
                pass
            result["recipe"] = _read(output_dir / "training_args.yaml")
            result["board_config"] = _read(output_dir / "llamaboard_config.yaml")
        if scenario.get("eval_args"):  # what Evaluate & Predict's Start would run (its recipe; nothing started)
            every = {elem: getattr(elem, "value", None) for elem in manager._id_to_elem.values()}
            every.update({manager.get_elem_by_id(elem_id): value for elem_id, value in values.items()})
            result["eval_args"] = runner._parse_eval_args(every)
        if scenario.get("load"):
            loaded = runner.load_args("en", scenario["load"])
            result["loaded"] = {manager.get_id_by_elem(elem): value for elem, value in loaded.items()
                                if manager.get_id_by_elem(elem) != "train.output_box"}
        report["scenarios"][scenario["name"]] = result
    Path(out_path).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
