"""Build the bundled DEMO dataset (48 real CMKP posts, synthetic images, offline template CoT) into a dataset_dir.

Writes <output-dir>/mmkp_demo.json (40 posts, train), <output-dir>/mmkp_demo_eval.json (8 held-out posts),
<output-dir>/mmkp_demo_images/*.png, and adds the entries mmkp_demo and mmkp_demo_eval to
<output-dir>/dataset_info.json (other entries are kept). Posts, keyphrases, image attributes and OCR text are
CMKP's (MIT, see dyncot_plugin/tasks/mmkp/demo_cmkp/NOTICE); the images are drawn from a seed and the CoT column is
written by an offline template (cot_source "demo-offline"), not by a teacher model. Output is deterministic.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from pathlib import Path

from dyncot_plugin.io.datasets import write_registered_datasets
from dyncot_plugin.tasks.mmkp.convert import (
    DEFAULT_ANSWER_SEP,
    PromptTemplate,
    default_prompt_template,
    make_row,
    read_cmkp_file,
    read_side_file,
)
from dyncot_plugin.tasks.mmkp.demo_rationale import DEMO_COT_SOURCE, write_demo_rationale

SOURCE_DIR = Path(__file__).resolve().parent / "demo_cmkp"
SOURCE_FILES = {"src": "demo_src.txt", "attributes": "demo_attribute_cleaned.txt", "ocr": "demo_ocr_final.txt"}
TRAIN_NAME = "mmkp_demo"
EVAL_NAME = "mmkp_demo_eval"
IMAGE_DIR = "mmkp_demo_images"
NUM_EVAL = 8  # the last 8 of the 48 posts are held out
IMAGE_SIZE = (80, 80)

# A small fixed palette keeps the PNGs tiny (flat colours compress well).
_PALETTE = [
    (230, 57, 70),
    (241, 250, 238),
    (168, 218, 220),
    (69, 123, 157),
    (29, 53, 87),
    (244, 162, 97),
    (42, 157, 143),
    (233, 196, 106),
    (38, 70, 83),
    (255, 183, 3),
    (131, 56, 236),
    (58, 134, 255),
]


def draw_demo_image(path: Path, key: str, size: tuple[int, int] = IMAGE_SIZE) -> None:
    """A deterministic synthetic PNG seeded by ``key`` (flat background, four flat shapes)."""
    from PIL import Image, ImageDraw

    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    w, h = size
    img = Image.new("RGB", size, rng.choice(_PALETTE))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.randrange(w - 16), rng.randrange(h - 16)
        x1, y1 = min(w - 1, x0 + rng.randrange(12, w // 2)), min(h - 1, y0 + rng.randrange(12, h // 2))
        colour = rng.choice(_PALETTE)
        shape = rng.randrange(3)
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=True)


def build_rows(image_dir_name: str = IMAGE_DIR) -> tuple[list[dict], list[dict], dict[str, str]]:
    """(train rows, eval rows, {image file name: seed key}) from the bundled CMKP lines."""
    src = SOURCE_DIR / SOURCE_FILES["src"]
    posts = read_cmkp_file(src)
    attrs = read_side_file(SOURCE_DIR / SOURCE_FILES["attributes"], src, len(posts))
    ocrs = read_side_file(SOURCE_DIR / SOURCE_FILES["ocr"], src, len(posts))
    template = PromptTemplate(default_prompt_template(attributes=True, ocr=True))
    train, held_out, images = [], [], {}
    n_train = len(posts) - NUM_EVAL
    for post in posts:
        is_eval = post.index >= n_train
        split, k = ("eval", post.index - n_train) if is_eval else ("train", post.index)
        image_name = Path(post.image).stem + ".png"
        images[image_name] = post.image
        prompt = template.render(post.text, attributes=attrs[post.index], ocr=ocrs[post.index], sep=DEFAULT_ANSWER_SEP)
        row = make_row(
            f"mmkp_demo_{split}_{k:06d}",
            post.text,
            post.keyphrases,
            prompt,
            [f"{image_dir_name}/{image_name}"],
            DEFAULT_ANSWER_SEP,
        )
        row["cot"] = write_demo_rationale(
            post.text, post.keyphrases, attrs[post.index], ocrs[post.index], DEFAULT_ANSWER_SEP
        )
        row["cot_source"] = DEMO_COT_SOURCE
        row["source"] = f"CMKP tw_mm_s1/valid_src.txt:{post.lineno}"
        (held_out if is_eval else train).append(row)
    return train, held_out, images


def build_demo(output_dir: str | Path, register: bool = True) -> dict[str, Path]:
    """Write the demo dataset into ``output_dir``; returns the written data files by entry name."""
    output_dir = Path(output_dir)
    train, held_out, images = build_rows()
    image_dir = output_dir / IMAGE_DIR
    for name, key in images.items():
        draw_demo_image(image_dir / name, key)
    paths = write_registered_datasets(
        output_dir, {TRAIN_NAME: train, EVAL_NAME: held_out}, register, has_images=True, cot_column="cot"
    )
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output-dir", default="data_info", help="dataset_dir to write into (default: %(default)s)")
    parser.add_argument("--no-register", action="store_true", help="do not touch dataset_info.json")


def run(args: argparse.Namespace) -> int:
    paths = build_demo(args.output_dir, register=not args.no_register)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(
        "DEMO data: real CMKP posts, synthetic images, offline template CoT (cot_source 'demo-offline'); "
        "not teacher output."
    )
    return 0


__all__ = ["EVAL_NAME", "TRAIN_NAME", "build_demo", "build_rows", "draw_demo_image"]
