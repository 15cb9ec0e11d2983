"""Build the SYNTHETIC demo dataset (``mmkp_synth``): MMKP-like posts that a tiny random model can learn on a CPU.

The real CMKP sample (``mmkp_demo``) is too hard for a 200k-parameter random model in a few minutes: its demo shows
the pipeline, not the method. This set shows the method: two kinds of posts whose plain-answer losses separate.

* ``text`` posts ("easy"): the hashtags are one or two topic words of the post, in order
  (``nothing beats coffee after yoga`` -> ``coffee; yoga``); the image is a random colour and says nothing.
  Rationale: ``the post names coffee and yoga.``
* ``image`` posts ("hard"): the post is generic (``look at this``) and the hashtag follows only from the image's
  background colour by a fixed rule (blue -> ``ocean``, red -> ``fire``, ...).
  Rationale: ``the image is mostly blue, and blue means ocean.``

The demo's tiny model reads the colour sooner than it learns to copy topic words, so the ``image`` posts reach the
lower plain loss and, under the paper's rule (loss below γ -> CoT), train on their CoT target on most of their steps
(69-84 % per epoch in the demo's run, ``text`` posts 11-31 %); the model then thinks on ``image`` posts. The colour
rule is one step, which the model can also learn from the ``image`` posts' plain-target steps: whether ``never``
falls behind ``always`` on them depends on the training seed (docs/data.md, "The synthetic demo set", with the
designs tried to make the rationale needed on every seed).

Writes ``<output-dir>/mmkp_synth.json`` (train), ``<output-dir>/mmkp_synth_eval.json`` (held-out posts: no text of
them occurs in train), ``<output-dir>/mmkp_synth_images/*.png`` (56x56: 4 image tokens with the tiny model), and the
entries ``mmkp_synth`` / ``mmkp_synth_eval`` in ``dataset_info.json`` (other entries are kept). Each row carries
``kind`` (``text`` | ``image``) besides the usual fields; ``cot_source`` is ``synthetic``. Output is deterministic
(a seeded ``random.Random``); :func:`tokenizer_corpus` gives the text a demo tokenizer is trained on.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from dyncot_plugin.cot_format import ANSWER_SEP, build_cot
from dyncot_plugin.io.datasets import load_rows, write_registered_datasets
from dyncot_plugin.tasks.mmkp.convert import PromptTemplate, default_prompt_template, make_row

TRAIN_NAME = "mmkp_synth"
EVAL_NAME = "mmkp_synth_eval"
IMAGE_DIR = "mmkp_synth_images"
COT_SOURCE = "synthetic"
KINDS = ("text", "image")
NUM_TRAIN = 256
NUM_EVAL = 48
SEED = 0
IMAGE_SIZE = (56, 56)

# Background colour -> (RGB, hashtag) of the ``image`` posts. Far-apart colours, so a random tower separates them.
COLOURS: dict[str, tuple[tuple[int, int, int], str]] = {
    "red": ((220, 30, 30), "fire"),
    "orange": ((245, 140, 20), "autumn"),
    "yellow": ((240, 220, 40), "sunshine"),
    "green": ((40, 170, 60), "forest"),
    "blue": ((30, 70, 220), "ocean"),
    "purple": ((140, 50, 190), "lavender"),
    "white": ((245, 245, 245), "snow"),
    "black": ((15, 15, 15), "night"),
}
TOPICS = (
    "coffee", "pizza", "football", "guitar", "puppy", "kitten", "marathon", "concert", "birthday", "wedding",
    "garden", "library", "camera", "bicycle", "election", "festival", "museum", "holiday", "breakfast", "yoga",
    "chess", "tennis", "cooking", "painting",
)  # fmt: skip
# ``text`` posts: {a} and {b} are topic words (one-word templates use only {a}).
TEXT_TEMPLATES = (
    "just had the best {a} ever",
    "so happy about the {a} today",
    "my first {a} of the year",
    "who else is ready for the {a} ?",
    "nothing beats {a} after {b}",
    "{a} in the morning , {b} at night",
    "my weekend : {a} and {b}",
    "can't decide between {a} and {b}",
    "finally some {a} with friends , then {b}",
    "{a} and {b} , what a day !",
)
# ``image`` posts: no topic word, nothing in the text says what the hashtag is.
IMAGE_TEXTS = (
    "look at this",
    "what a view",
    "can't stop looking at it",
    "no words needed",
    "this one is for you",
    "today was something else",
    "i could stay here forever",
    "guess where i am",
    "just wow",
    "saw this on my way home",
    "taking it all in",
    "worth every minute",
)


def _rationale(kind: str, keyphrases: list[str], colour: str) -> str:
    if kind == "text":
        return "the post names " + " and ".join(keyphrases) + "."
    return f"the image is mostly {colour}, and {colour} means {keyphrases[0]}."


def draw_synth_image(path: Path, background: tuple[int, int, int], rng: random.Random) -> None:
    """A flat background with one small shape of another colour in a random corner (the background dominates)."""
    from PIL import Image, ImageDraw

    w, h = IMAGE_SIZE
    img = Image.new("RGB", IMAGE_SIZE, background)
    other = rng.choice([rgb for rgb, _ in COLOURS.values() if rgb != background])
    x0, y0 = rng.choice((2, w // 2 + 2)), rng.choice((2, h // 2 + 2))
    box = (x0, y0, x0 + w // 2 - 6, y0 + h // 2 - 6)
    draw = ImageDraw.Draw(img)
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=other)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=True)


def _post(rng: random.Random, kind: str) -> tuple[str, list[str], str]:
    """(text, keyphrases, background colour name) of one post of ``kind``."""
    colour = rng.choice(sorted(COLOURS))
    if kind == "image":
        return rng.choice(IMAGE_TEXTS), [COLOURS[colour][1]], colour
    template = rng.choice(TEXT_TEMPLATES)
    a, b = rng.sample(TOPICS, 2)
    keyphrases = [a, b] if "{b}" in template else [a]
    return template.format(a=a, b=b), keyphrases, colour


def build_rows(
    num_train: int = NUM_TRAIN, num_eval: int = NUM_EVAL, seed: int = SEED, image_dir_name: str = IMAGE_DIR
) -> tuple[list[dict], list[dict], dict[str, tuple[int, int, int]]]:
    """(train rows, eval rows, {image file name: background RGB}); half of each split is of each kind.

    Held-out posts never repeat a training text (the ``image`` texts do repeat: their colour differs), so the
    ``text`` posts are scored on unseen combinations of topic words and templates.
    """
    rng = random.Random(seed)
    template = PromptTemplate(default_prompt_template())
    train: list[dict] = []
    held_out: list[dict] = []
    images: dict[str, tuple[int, int, int]] = {}
    seen_texts: set[str] = set()
    for split, n, rows in (("train", num_train, train), ("eval", num_eval, held_out)):
        kinds = [KINDS[i % 2] for i in range(n)]
        rng.shuffle(kinds)
        for k, kind in enumerate(kinds):
            while True:
                text, keyphrases, colour = _post(rng, kind)
                if split == "train" or kind == "image" or text not in seen_texts:
                    break
            if split == "train":
                seen_texts.add(text)
            image_name = f"synth_{split}_{k:04d}.png"
            images[image_name] = COLOURS[colour][0]
            row = make_row(
                f"{TRAIN_NAME}_{split}_{k:06d}",
                text,
                keyphrases,
                template.render(text, sep=ANSWER_SEP),
                [f"{image_dir_name}/{image_name}"],
                ANSWER_SEP,
            )
            row["cot"] = build_cot(_rationale(kind, keyphrases, colour), ANSWER_SEP.join(keyphrases))
            row["cot_source"] = COT_SOURCE
            row["kind"] = kind
            rows.append(row)
    return train, held_out, images


def build_synthetic_demo(output_dir: str | Path, register: bool = True, seed: int = SEED) -> dict[str, Path]:
    """Write the synthetic demo dataset into ``output_dir``; returns the written data files by entry name."""
    output_dir = Path(output_dir)
    train, held_out, images = build_rows(seed=seed)
    draw_rng = random.Random(seed + 1)
    for name in sorted(images):
        draw_synth_image(output_dir / IMAGE_DIR / name, images[name], draw_rng)
    # under the files' write locks, like every dataset writer
    paths = write_registered_datasets(
        output_dir, {TRAIN_NAME: train, EVAL_NAME: held_out}, register, has_images=True, cot_column="cot"
    )
    return paths


def tokenizer_corpus(dataset_dir: str | Path = "data_info") -> list[str]:
    """Lines to train a demo tokenizer on: the training prompts, plain answers and CoT targets (not the eval set).

    Trained on these, a small BPE vocab holds every word as one token, so sequences are short and learned fast.
    """
    lines = ["You are a helpful assistant."]
    for row in load_rows(Path(dataset_dir) / f"{TRAIN_NAME}.json"):
        lines.extend(m["content"].replace("<image>", "") for m in row["messages"])
        lines.append(row["cot"])
    return lines


def write_kind_subsets(data_dir: str | Path, runs: dict[str, str | Path], out_dir: str | Path) -> dict[str, Path]:
    """Split the held-out posts and each thinking mode's ``generated_predictions.jsonl`` by ``kind``, so that
    ``dyncot-eval mmkp`` scores the posts that need the rationale (``image``) and the others (``text``) apart.

    ``runs`` maps a mode (``auto``/``always``/``never``) to its predictions file (rows in eval-dataset order).
    Writes ``<out_dir>/<kind>/mmkp_synth_eval.json`` and ``<out_dir>/<kind>/<mode>.jsonl``; returns the folders.
    """
    posts = load_rows(Path(data_dir) / f"{EVAL_NAME}.json")
    predictions = {mode: Path(path).read_text(encoding="utf-8").splitlines() for mode, path in runs.items()}
    for mode, rows in predictions.items():
        if len(rows) != len(posts):
            raise ValueError(f"{runs[mode]}: {len(rows)} predictions for {len(posts)} posts of {EVAL_NAME}")
    folders = {}
    for kind in KINDS:
        keep = [i for i, post in enumerate(posts) if post["kind"] == kind]
        folder = folders[kind] = Path(out_dir) / kind
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps([posts[i] for i in keep], ensure_ascii=False) + "\n"
        (folder / f"{EVAL_NAME}.json").write_text(text, encoding="utf-8")
        for mode, rows in predictions.items():
            (folder / f"{mode}.jsonl").write_text("".join(rows[i] + "\n" for i in keep), encoding="utf-8")
    return folders


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output-dir", default="data_info", help="dataset_dir to write into (default: %(default)s)")
    parser.add_argument("--no-register", action="store_true", help="do not touch dataset_info.json")
    parser.add_argument("--seed", type=int, default=SEED, help="generator seed (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    paths = build_synthetic_demo(args.output_dir, register=not args.no_register, seed=args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print("SYNTHETIC demo data: generated posts, images and rationales (cot_source 'synthetic'); not real posts.")
    return 0


__all__ = [
    "COLOURS", "EVAL_NAME", "IMAGE_DIR", "KINDS", "TOPICS", "TRAIN_NAME", "build_rows", "build_synthetic_demo",
    "tokenizer_corpus", "write_kind_subsets",
]  # fmt: skip
