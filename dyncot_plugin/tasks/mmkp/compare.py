"""Two runs side by side: this evaluation against a previous ``dyncot-eval mmkp`` JSON (``--baseline``).

Every score (all / present / absent / unseen × F1@k, F1@M, MAP@5), the CoT rate and the mean generated length
(all outputs, thinking outputs, the others) of both runs, with the change: in points for scores and rates (``ours -
baseline``), relative for lengths (``ours / baseline - 1``; the paper's "reasoning length −38.48 % vs Fine-tune-CoT"
is ``gen_len.all.relative_change`` with Fine-tune-CoT as the baseline). A score one of the JSONs lacks (an older
file, no ``--train``) is None. Lengths in different units are refused: they cannot be compared.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dyncot_plugin.io.read import InputError, read_json

__all__ = ["SUBSETS", "compare_with_baseline", "format_baseline_table", "parse_baseline_arg", "read_baseline"]

SUBSETS = ("all", "present", "absent", "unseen")
LENGTHS = (
    ("all", "all outputs (paper's row)"),
    ("with_think", "thinking outputs"),
    ("without_think", "outputs without thinking"),
)
_NAME = re.compile(r"^[A-Za-z][\w.-]*$")


def parse_baseline_arg(value: str) -> tuple[str, str]:
    """``--baseline [NAME=]PATH`` as ``(name, path)``; the name defaults to ``baseline``."""
    name, sep, path = value.partition("=")
    if sep and _NAME.match(name) and path and not Path(value).is_file():
        return name, path
    return "baseline", value


def read_baseline(path: str | Path) -> dict:
    """A previous ``dyncot-eval mmkp`` JSON; it must at least carry ``gen_len`` with ``all`` and ``unit``."""
    base = read_json(path, "baseline JSON")
    gl = base.get("gen_len") if isinstance(base, dict) else None
    if not isinstance(gl, dict) or "all" not in gl or not isinstance(gl.get("unit"), str):
        raise InputError(
            f"--baseline {path}: not a dyncot-eval mmkp JSON (no 'gen_len' with 'all' and 'unit'); give the JSON a "
            f"previous `dyncot-eval mmkp` run wrote"
        )
    return base


def _num(d: Any, key: str) -> float | None:
    v = d.get(key) if isinstance(d, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _pair(ours: float | None, base: float | None) -> dict:
    return {"baseline": base, "ours": ours, "change": None if ours is None or base is None else ours - base}


def _score_keys(result: dict) -> list[str]:
    ks = [k for k in result if k.startswith("f1@")]
    return ks + (["map@5"] if "map@5" in result else [f"map@{ks[-1][3:]}"])


def compare_with_baseline(result: dict, base: dict, baseline_file: str, name: str = "baseline") -> dict:
    """The JSON ``vs_baseline`` block of ``result`` against ``base`` (see the module docstring)."""
    unit = result["gen_len"]["unit"]
    if base["gen_len"]["unit"] != unit:
        raise InputError(
            f"--baseline {baseline_file} counts length in {base['gen_len']['unit']}, this run in {unit}; "
            f"evaluate both with the same --tokenizer (or none)"
        )
    keys = _score_keys(result)
    scores: dict[str, Any] = {}
    for sub in SUBSETS:
        ours_d = result if sub == "all" else result.get(sub)
        base_d = base if sub == "all" else base.get(sub)
        if ours_d is None and not isinstance(base_d, dict):
            scores[sub] = None
            continue
        scores[sub] = {k: _pair(_num(ours_d, k), _num(base_d, k)) for k in keys}
        scores[sub]["num_posts"] = {"baseline": _num(base_d, "num_posts"), "ours": _num(ours_d, "num_posts")}
    gen_len = {}
    for key, _ in LENGTHS:
        o, b = _num(result["gen_len"], key), _num(base["gen_len"], key)
        gen_len[key] = {"baseline": b, "ours": o, "relative_change": None if o is None or not b else o / b - 1.0}
    notes = []
    if base.get("variant", result.get("variant")) != result.get("variant"):
        notes.append(f"the baseline's F1 is the {base.get('variant')} variant, this run's {result.get('variant')}")
    if _num(base, "num_posts") not in (None, float(result["num_posts"])):
        notes.append(f"the baseline scored {int(base['num_posts'])} posts, this run {result['num_posts']}")
    missing = [k for k in keys if _num(base, k) is None]
    if missing:
        notes.append(f"the baseline JSON has no {', '.join(missing)}")
    return {
        "baseline_file": str(baseline_file),
        "name": name,
        "scores": scores,
        "cot_rate": _pair(_num(result, "cot_rate"), _num(base, "cot_rate")),
        "gen_len": gen_len,
        "unit": unit,
        "notes": notes,
    }


def _pct(x: float | None) -> str:
    return f"{'-':>8}" if x is None else f"{100 * x:8.2f}"


def _chg(x: float | None) -> str:
    return f"{'-':>8}" if x is None else f"{100 * x:+8.2f}"


def format_baseline_table(result: dict) -> str:
    cmp = result["vs_baseline"]
    keys = _score_keys(result)
    name = cmp["name"]
    lines = [
        f"vs baseline {name} ({cmp['baseline_file']}): scores in %, change in points",
        f"{'':19}" + "".join(f"{k.upper():>8}" for k in keys),
    ]
    for sub in SUBSETS:
        d = cmp["scores"].get(sub)
        if d is None:
            continue
        for label, field, fmt in (("baseline", "baseline", _pct), ("this run", "ours", _pct),
                                  ("change", "change", _chg)):
            head = f"{sub if field == 'baseline' else '':9}{label:10}"
            lines.append(head + "".join(fmt(d[k][field]) for k in keys))
    cr = cmp["cot_rate"]
    lines.append(
        f"{'CoT rate':19}{_pct(cr['baseline'])}{_pct(cr['ours'])}{_chg(cr['change'])}   (baseline, this run, change)"
    )
    lines.append(f"mean generated length ({cmp['unit']}): baseline, this run, relative change")

    def f(x: float | None) -> str:
        return f"{'-':>8}" if x is None else f"{x:8.2f}"

    for key, label in LENGTHS:
        d = cmp["gen_len"][key]
        rel = "       -" if d["relative_change"] is None else f"{100 * d['relative_change']:+7.2f}%"
        lines.append(f"  {label:26}{f(d['baseline'])}{f(d['ours'])}{rel}")
    for note in cmp["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)
