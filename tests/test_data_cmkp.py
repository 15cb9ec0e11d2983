"""convert-cmkp on real CMKP lines (bundled in tests/data, from ../shared/cmkp): rows, prompts, images, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dyncot_plugin.cli.data import main as data_main
from dyncot_plugin.io.datasets import DatasetError, dataset_entry, load_rows
from dyncot_plugin.tasks.mmkp import convert as cmkp
from dyncot_plugin.tasks.mmkp.convert import CmkpFormatError, parse_cmkp_line, read_cmkp_file

DATA = Path(__file__).resolve().parent / "data"
SRC = DATA / "cmkp_test_src.txt"  # lines 1-40 of CMKP tw_mm_s1/test_src.txt
ATTR = DATA / "cmkp_test_attribute_cleaned.txt"
OCR = DATA / "cmkp_test_ocr_final.txt"
LINE3 = (
    "dear accountant , sorry but my bank statement went through the beagle shredder this month ."
    "<sep>beagles<sep>https://pbs.twimg.com/media/D0zWGbNW0AAfjlw.jpg"
)


def _touch_images(image_dir: Path, posts, skip=()) -> None:
    image_dir.mkdir(parents=True, exist_ok=True)
    for p in posts:
        if p.index not in skip:
            (image_dir / p.image).write_bytes(b"")


def _files(path: Path) -> list[str]:
    """The files under ``path``, without the (empty, hidden) write-lock files ``.<file>.lock``."""
    return sorted(
        str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and not _is_lock(p)
    )


def _is_lock(p: Path) -> bool:
    return p.name.startswith(".") and p.name.endswith(".lock") and p.stat().st_size == 0


# ------------------------------------------------------------------------------------------------------- parsing


def test_parse_real_line():
    post = parse_cmkp_line(LINE3, path="test_src.txt", lineno=3)
    assert post.text.startswith("dear accountant")
    assert post.keyphrases == ["beagles"]
    assert post.image_url == "https://pbs.twimg.com/media/D0zWGbNW0AAfjlw.jpg"
    assert post.image == "D0zWGbNW0AAfjlw.jpg"
    assert (post.index, post.lineno, post.where) == (2, 3, "test_src.txt:3")
    assert parse_cmkp_line(post.to_line()) == post._replace(path="<string>", index=0)
    assert parse_cmkp_line("t<sep> a ; b ;<sep>u/x.jpg?name=small").keyphrases == ["a", "b"]
    assert cmkp.image_basename("https://h/media/A.jpg?format=jpg&name=small") == "A.jpg"


def test_read_bundled_file_counts():
    posts = read_cmkp_file(SRC)
    assert len(posts) == 40
    assert sum(len(p.keyphrases) for p in posts) == 59
    assert posts[7].keyphrases == ["wahoo wa", "go hoos"]  # line 8: "wahoo wa;go hoos"
    assert [p.index for p in posts] == list(range(40))
    assert len({p.image for p in posts}) == 40


@pytest.mark.parametrize(
    "line, message",
    [
        ("only text<sep>kp", r"bad\.txt:7: expected 3 fields separated by <sep> .*found 2"),
        ("a<sep>b<sep>c<sep>d", r"bad\.txt:7: expected 3 fields separated by <sep> .*found 4"),
        ("", r"bad\.txt:7: expected 3 fields .*found 1"),
        ("text<sep> ; ;<sep>http://x/y.jpg", r"bad\.txt:7: empty keyphrase list \(keyphrase field ' ; ;'\)"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    lines = SRC.read_text(encoding="utf-8").split("\n")[:10]
    lines[6] = line
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(CmkpFormatError, match=message):
        read_cmkp_file(bad)
    with pytest.raises(CmkpFormatError, match=message):
        parse_cmkp_line(line, path=str(bad), lineno=7)


def test_line_breaks_other_than_newline_stay_inside_a_post(tmp_path):
    src = tmp_path / "test_src.txt"
    src.write_bytes("a\u2028b\x0bc<sep>k<sep>u/1.jpg\r\nd<sep>k2<sep>u/2.jpg\n".encode())
    posts = read_cmkp_file(src)
    assert [p.text for p in posts] == ["a\u2028b\x0bc", "d"]
    assert posts[0].image == "1.jpg"


def test_invalid_utf8_names_line(tmp_path):
    src = tmp_path / "test_src.txt"
    src.write_bytes(b"a<sep>k<sep>u/1.jpg\nb\xff<sep>k<sep>u/2.jpg\n")
    with pytest.raises(DatasetError, match=r"test_src\.txt:2: not UTF-8 text"):
        read_cmkp_file(src)


# ----------------------------------------------------------------------------------------------------- convert


def test_convert_rows_match_the_project_format(tmp_path):
    out = tmp_path / "ds"
    _touch_images(out / "images", read_cmkp_file(SRC))
    results = cmkp.convert({"test": SRC}, out)
    assert [(r.split, r.posts, r.written, r.skipped, r.text_only) for r in results] == [("test", 40, 40, 0, 0)]
    rows = load_rows(out / "mmkp_test.json")
    assert len(rows) == 40
    row = rows[2]
    assert row == {
        "id": "mmkp_test_000002",
        "messages": [
            {
                "role": "user",
                "content": "<image>Generate hashtag-style keyphrases for this social-media post and its image. "
                'Separate keyphrases with "; ".\nPost: dear accountant , sorry but my bank statement went through '
                "the beagle shredder this month .",
            },
            {"role": "assistant", "content": "beagles"},
        ],
        "images": ["images/D0zWGbNW0AAfjlw.jpg"],
        "text": "dear accountant , sorry but my bank statement went through the beagle shredder this month .",
        "keyphrases": ["beagles"],
        "cot": None,
    }
    assert rows[7]["messages"][1]["content"] == "wahoo wa; go hoos"
    assert [r["id"] for r in rows] == [f"mmkp_test_{i:06d}" for i in range(40)]
    assert all(r["messages"][0]["content"].count("<image>") == 1 and len(r["images"]) == 1 for r in rows)
    info = json.loads((out / "dataset_info.json").read_text())
    assert info == {"mmkp_test": dataset_entry("mmkp_test.json")}
    assert _files(out) == sorted(
        ["dataset_info.json", "mmkp_test.json"] + [f"images/{r['images'][0][7:]}" for r in rows]
    )


def test_side_files_fill_attribute_and_ocr_slots(tmp_path):
    out = tmp_path / "ds"
    posts = read_cmkp_file(SRC)
    _touch_images(out / "images", posts)
    cmkp.convert({"test": SRC}, out, attributes={"test": ATTR}, ocr={"test": OCR}, name="mmkp_side")
    rows = load_rows(out / "mmkp_side_test.json")
    attrs = ATTR.read_text().split("\n")
    ocrs = OCR.read_text().split("\n")
    with_ocr = [i for i in range(40) if ocrs[i].strip()]
    assert len(with_ocr) == 5
    i = with_ocr[0]
    prompt = rows[i]["messages"][0]["content"]
    assert prompt.endswith(f"\nImage attributes: {attrs[i].strip()}\nText in the image: {ocrs[i].strip()}")
    assert rows[0]["messages"][0]["content"].endswith(
        "Post: some tiny blue flowers of some type of forget me not growing in the crevices of a stone wall in "
        "clonmore east carlow\nImage attributes: green trees leaves flowers rocks\nText in the image: (none)"
    )


def test_custom_template_and_separators(tmp_path):
    out = tmp_path / "ds"
    _touch_images(out / "imgs", read_cmkp_file(SRC))
    cmkp.convert(
        {"test": SRC},
        out,
        image_dir=out / "imgs",
        prompt_template="{{json}} {text} | sep={sep}<image>",
        answer_sep=" , ",
        name="custom",
    )
    row = load_rows(out / "custom_test.json")[7]
    assert row["messages"][0]["content"].startswith("{json} win & advance !")
    assert row["messages"][0]["content"].endswith(" | sep= , <image>")
    assert row["messages"][1]["content"] == "wahoo wa , go hoos"
    assert row["images"] == ["imgs/D2StOT4XgAAoViF.jpg"]


def test_image_dir_outside_dataset_dir_is_relative(tmp_path):
    out, images = tmp_path / "ds", tmp_path / "pics"
    _touch_images(images, read_cmkp_file(SRC))
    cmkp.convert({"test": SRC}, out, image_dir=images)
    assert load_rows(out / "mmkp_test.json")[0]["images"] == ["../pics/D0wn9TnXQAAGWyD.jpg"]
    assert (out / load_rows(out / "mmkp_test.json")[0]["images"][0]).is_file()


@pytest.mark.parametrize("policy, rows_written", [("skip", 37), ("text-only", 40)])
def test_missing_images_skip_and_text_only(tmp_path, policy, rows_written):
    out = tmp_path / "ds"
    posts = read_cmkp_file(SRC)
    _touch_images(out / "images", posts, skip={0, 5, 39})
    [res] = cmkp.convert({"test": SRC}, out, missing_images=policy)
    assert res.written == rows_written
    rows = load_rows(out / "mmkp_test.json")
    report = (out / "mmkp_missing_images.txt").read_text().splitlines()
    assert report[0].startswith("#")
    assert [line.split("\t")[1:3] for line in report[1:]] == [[f"{SRC}:{i + 1}", posts[i].image] for i in (0, 5, 39)]
    if policy == "skip":
        assert res.skipped == 3 and "mmkp_test_000005" not in {r["id"] for r in rows}
    else:
        assert res.text_only == 3
        row = rows[5]
        assert row["id"] == "mmkp_test_000005" and row["images"] == []
        assert row["messages"][0]["content"].startswith("Generate hashtag-style keyphrases")
        assert "<image>" not in row["messages"][0]["content"]
    # a later complete run removes the stale report
    _touch_images(out / "images", posts)
    cmkp.convert({"test": SRC}, out)
    assert not (out / "mmkp_missing_images.txt").exists()


def test_missing_images_error_writes_only_the_report(tmp_path):
    out = tmp_path / "ds"
    _touch_images(out / "images", read_cmkp_file(SRC), skip={3})
    with pytest.raises(DatasetError) as err:
        cmkp.convert({"test": SRC}, out)
    msg = str(err.value)
    assert f"1 of 40 posts have no image in {out / 'images'}: {SRC}:4 (D5hDqAmW4AEZAWd.jpg)" in msg
    assert "mmkp_missing_images.txt" in msg and "--missing-images skip" in msg
    assert [p for p in _files(out) if not p.startswith("images/")] == ["mmkp_missing_images.txt"]
    with pytest.raises(DatasetError, match="image folder .*nowhere does not exist"):
        cmkp.convert({"test": SRC}, out, image_dir=tmp_path / "nowhere")


def test_no_images_dataset(tmp_path):
    cmkp.convert({"test": SRC}, tmp_path, use_images=False)
    row = load_rows(tmp_path / "mmkp_test.json")[0]
    assert row["images"] == [] and "<image>" not in row["messages"][0]["content"]
    assert json.loads((tmp_path / "dataset_info.json").read_text())["mmkp_test"]["columns"] == {
        "messages": "messages",
        "cot": "cot",
    }


def _bad_copy(tmp_path: Path, lineno: int, line: str) -> Path:
    lines = SRC.read_text(encoding="utf-8").split("\n")
    lines[lineno - 1] = line
    bad = tmp_path / "in" / "test_src.txt"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text("\n".join(lines), encoding="utf-8")
    return bad


@pytest.mark.parametrize(
    "kwargs_fn, message",
    [
        (
            lambda t: {"sources": {"test": _bad_copy(t, 12, "no separators here")}},
            r"in/test_src\.txt:12: expected 3 fields separated by <sep>",
        ),
        (
            lambda t: {"sources": {"test": _bad_copy(t, 40, "x<sep>;<sep>http://a/b.jpg")}},
            r"in/test_src\.txt:40: empty keyphrase list",
        ),
        (
            lambda t: {"sources": {"test": SRC}, "attributes": {"test": _short_side(t)}},
            r"short_attr\.txt: has 39 lines but .*cmkp_test_src\.txt has 40 posts; side files must be line-aligned",
        ),
        (lambda t: {"sources": {"dev": SRC}}, r"unknown split name 'dev'"),
        (lambda t: {"sources": {"test": SRC}, "prompt_template": "<image>{post}"}, r"unknown slot \{post\}"),
        (
            lambda t: {"sources": {"test": SRC}, "prompt_template": "<image>{ocr} {text}"},
            r"\{ocr\} slot but no --ocr side file",
        ),
        (
            lambda t: {"sources": {"test": SRC}, "ocr": {"test": OCR}, "prompt_template": "<image>{text}"},
            r"--ocr files are given but the prompt template has no \{ocr\} slot",
        ),
        (lambda t: {"sources": {"test": SRC}, "prompt_template": "{text}"}, r"exactly one <image> \(it has 0\)"),
        (lambda t: {"sources": {"test": SRC}, "prompt_template": "<image>"}, r"has no \{text\} slot"),
    ],
)
def test_bad_input_clear_error_and_nothing_written(tmp_path, kwargs_fn, message):
    out = tmp_path / "ds"
    _touch_images(out / "images", read_cmkp_file(SRC))
    (out / "mmkp_test.json").write_text("previous")
    kwargs = kwargs_fn(tmp_path)
    with pytest.raises(DatasetError, match=message):
        cmkp.convert(kwargs.pop("sources"), out, **kwargs)
    assert [p for p in _files(out) if not p.startswith("images/")] == ["mmkp_test.json"]
    assert (out / "mmkp_test.json").read_text() == "previous"


def _short_side(tmp_path: Path) -> Path:
    p = tmp_path / "short_attr.txt"
    p.write_text("\n".join(ATTR.read_text().split("\n")[:39]) + "\n")
    return p


# ---------------------------------------------------------------------------------------------------------- CLI


def test_cli_two_splits_side_files_and_errors(tmp_path, capsys):
    src_dir = tmp_path / "cmkp"
    src_dir.mkdir()
    shutil.copy(SRC, src_dir / "test_src.txt")
    shutil.copy(ATTR, src_dir / "test_attribute_cleaned.txt")
    shutil.copy(OCR, src_dir / "test_ocr_final.txt")
    shutil.copy(DATA / "cmkp_train_src.txt", src_dir / "train_src.txt")
    out = tmp_path / "ds"
    rc = data_main(
        [
            "convert-cmkp",
            str(src_dir / "test_src.txt"),
            f"train={src_dir / 'train_src.txt'}",
            "-o",
            str(out),
            "--missing-images",
            "text-only",
            "-q",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "test: 40 of 40 posts" in printed and "train: 120 of 120 posts" in printed
    assert list(json.loads((out / "dataset_info.json").read_text())) == ["mmkp_test", "mmkp_train"]
    assert len(load_rows(out / "mmkp_train.json")) == 120

    rc = data_main(
        [
            "convert-cmkp",
            f"test={src_dir / 'test_src.txt'}",
            "-o",
            str(out),
            "--name",
            "side",
            "--side-files",
            "--no-images",
            "-q",
        ]
    )
    assert rc == 0
    assert "Image attributes: green trees" in load_rows(out / "side_test.json")[0]["messages"][0]["content"]
    capsys.readouterr()

    template = tmp_path / "prompt.txt"
    template.write_text("<image>Tags for: {text}\n")
    rc = data_main(
        [
            "convert-cmkp",
            f"test={src_dir / 'test_src.txt'}",
            "-o",
            str(out),
            "--name",
            "tpl",
            "--prompt-template",
            f"@{template}",
            "--missing-images",
            "skip",
            "-q",
        ]
    )
    assert rc == 2  # no image folder: skipping every post would leave an empty split
    assert "would write an empty test split; check --image-dir" in capsys.readouterr().err
    assert not (out / "tpl_test.json").exists()
    (out / "images").mkdir()
    (out / "images" / read_cmkp_file(SRC)[4].image).write_bytes(b"")
    rc = data_main(
        [
            "convert-cmkp",
            f"test={src_dir / 'test_src.txt'}",
            "-o",
            str(out),
            "--name",
            "tpl",
            "--prompt-template",
            f"@{template}",
            "--missing-images",
            "skip",
            "-q",
        ]
    )
    assert rc == 0
    assert capsys.readouterr().out.startswith("test: 1 of 40 posts")
    assert (
        load_rows(out / "tpl_test.json")[0]["messages"][0]["content"]
        == "<image>Tags for: a perfect shot ! dublin , ireland ~ thanks to kevinnolanphoto"
    )

    rc = data_main(["convert-cmkp", f"dev={src_dir / 'test_src.txt'}", "-o", str(out)])
    assert rc == 2
    assert "error: unknown split name 'dev'" in capsys.readouterr().err
    rc = data_main(["convert-cmkp", str(src_dir / "test_src.txt"), "-o", str(tmp_path / "new")])
    assert rc == 2
    assert "image folder" in capsys.readouterr().err
    assert not (tmp_path / "new" / "mmkp_test.json").exists()


def test_llamafactory_loads_converted_dataset(tmp_path, tiny_model_dir):
    """The converted file goes through LLaMA-Factory's own loader with the Qwen2-VL template: image rows get
    image tokens, text-only rows none, and the label is the plain answer."""
    from dyncot_plugin.testing.lf_runner import make_image

    out = tmp_path / "ds"
    posts = read_cmkp_file(SRC)[:8]
    src = tmp_path / "test_src.txt"
    src.write_text("".join(p.to_line() + "\n" for p in posts))
    for p in posts[:6]:
        make_image(out / "images" / p.image, seed=p.index)
    cmkp.convert({"test": src}, out, missing_images="text-only")

    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": tiny_model_dir,
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "lora",
            "dataset": "mmkp_test",
            "dataset_dir": str(out),
            "template": "qwen2_vl",
            "cutoff_len": 1024,
            "output_dir": str(tmp_path / "out"),
            "overwrite_cache": True,
            "report_to": "none",
        }
    )
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    dataset = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)[
        "train_dataset"
    ]
    assert len(dataset) == 8
    for i, example in enumerate(dataset):
        text = tokenizer.decode(example["input_ids"])
        assert ("<|image_pad|>" in text) == (i < 6)
        labels = [t for t in example["labels"] if t != -100]
        assert tokenizer.decode(labels).replace("<|im_end|>", "").strip() == "; ".join(posts[i].keyphrases)
