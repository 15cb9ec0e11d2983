"""The bundled demo dataset (``dyncot-data demo-data``) and its offline demo rationale writer."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from dyncot_plugin.cli.data import main as data_main
from dyncot_plugin.tasks.mmkp.demo import EVAL_NAME, IMAGE_DIR, SOURCE_DIR, TRAIN_NAME
from dyncot_plugin.tasks.mmkp.demo_rationale import DEMO_COT_SOURCE, write_demo_rationale
from dyncot_plugin.teacher.validate import validate_reply

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "data_info"


def _load(d: Path, name: str) -> list[dict]:
    return json.loads((d / f"{name}.json").read_text(encoding="utf-8"))


def test_rebuild_matches_committed_files_and_keeps_other_entries(tmp_path, capsys):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"someone_else": {"file_name": "x.json"}}))
    assert data_main(["demo-data", "--output-dir", str(tmp_path)]) == 0
    assert "DEMO data" in capsys.readouterr().out
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert set(info) == {"someone_else", TRAIN_NAME, EVAL_NAME}
    for name in (TRAIN_NAME, EVAL_NAME):
        assert info[name]["file_name"] == f"{name}.json"
        assert info[name]["columns"] == {"messages": "messages", "images": "images", "cot": "cot"}
        assert _load(tmp_path, name) == _load(COMMITTED, name), f"data_info/{name}.json is stale: rerun demo-data"
    built = sorted(p.name for p in (tmp_path / IMAGE_DIR).iterdir())
    committed = sorted(p.name for p in (COMMITTED / IMAGE_DIR).iterdir())
    assert built == committed and len(built) == 48
    for name in built:
        a, b = Image.open(tmp_path / IMAGE_DIR / name), Image.open(COMMITTED / IMAGE_DIR / name)
        assert a.size == b.size == (80, 80) and a.tobytes() == b.tobytes()
    committed_info = json.loads((COMMITTED / "dataset_info.json").read_text())
    assert committed_info[TRAIN_NAME] == info[TRAIN_NAME] and committed_info[EVAL_NAME] == info[EVAL_NAME]


def test_committed_demo_rows_follow_the_contract():
    train, held_out = _load(COMMITTED, TRAIN_NAME), _load(COMMITTED, EVAL_NAME)
    assert (len(train), len(held_out)) == (40, 8)
    rows = train + held_out
    assert len({r["id"] for r in rows}) == 48
    assert not {r["text"] for r in train} & {r["text"] for r in held_out}
    for r in rows:
        assert r["cot_source"] == DEMO_COT_SOURCE == "demo-offline"
        assert r["messages"][0]["role"] == "user" and r["messages"][0]["content"].startswith("<image>")
        assert r["messages"][1] == {"role": "assistant", "content": "; ".join(r["keyphrases"])}
        assert (COMMITTED / r["images"][0]).is_file() and r["images"][0].startswith(IMAGE_DIR + "/")
        v = validate_reply(r["cot"], r["keyphrases"], match="exact")
        assert v.ok, (r["id"], v.reason)
        assert r["cot"].endswith(f"<answer>{'; '.join(r['keyphrases'])}</answer>")
    size = sum(p.stat().st_size for p in COMMITTED.glob("mmkp_demo*") if p.is_file())
    size += sum(p.stat().st_size for p in (COMMITTED / IMAGE_DIR).iterdir())
    assert size < 300_000


def test_source_lines_are_credited():
    notice = (SOURCE_DIR / "NOTICE").read_text()
    assert "MIT License" in notice and "yuewang-cuhk/CMKP" in notice
    lines = [
        len((SOURCE_DIR / f).read_text().split("\n"))
        for f in ("demo_src.txt", "demo_attribute_cleaned.txt", "demo_ocr_final.txt")
    ]
    assert len(set(lines)) == 1  # line-aligned side files


def test_demo_rationale_wording():
    cot = write_demo_rationale(
        "so excited for the kids choice awards tonight", ["kids choice award", "slime"], "people stage crowd", ""
    )
    assert cot.startswith("<think>The image shows people, stage and crowd.")
    assert 'It names "kids choice award" directly.' in cot  # stemmed presence: award(s)
    assert '"slime" is not written in the post' in cot
    assert cot.endswith("<answer>kids choice award; slime</answer>")
    assert write_demo_rationale("a <b> c", ["slime"], None, "slime time") == write_demo_rationale(
        "a <b> c", ["slime"], None, "slime time"
    )
    ocr = write_demo_rationale("a <b> c", ["slime"], None, "slime time")
    assert '"slime" is written in the image.' in ocr and "(b)" in ocr  # no stray tags in the rationale
    assert validate_reply(ocr, ["slime"]).ok
