"""Build the SYNTHETIC demo dataset (``mmkp_synth``): MMKP-like posts on which a tiny random model, trained on a CPU
in minutes, needs its rationale for one kind of post and not for the other.

* ``text`` posts: the hashtag is the post's topic word (``so happy about the coffee today`` -> ``coffee``); the
  image is one flat colour and says nothing. Rationale: ``the post is about coffee .`` A direct answer works.
* ``image`` posts: the text is generic (``look at this``); the image has four coloured quadrants, one colour from
  each of four palettes, in a random arrangement. Each colour moves a clock hand 1, 2 or 3 steps round
  ``dawn -> noon -> dusk -> night -> dawn``, from dawn, palette by palette; the hashtag is where the hand stops.
  Rationale: the running state, one colour at a time (``red noon , teal night , pink noon , grey night``).
  Held-out image posts show colour combinations that no training post shows (the paper's *unseen* scenario in
  miniature): a direct answer must have learned the whole four-colour sum at once, which a small model does not
  from a few hundred posts (it memorises the training combinations), while each step of the rationale (read one
  palette's colour, move the hand from the state just written) is seen many times in training.

Writes ``<output-dir>/mmkp_synth.json`` (train), ``<output-dir>/mmkp_synth_eval.json`` (held-out posts: no text
post repeats a training text, no image post a training colour combination), ``<output-dir>/mmkp_synth_images/*.png``
(56x56: a 2x2 grid of 28x28 quadrants, one image token each with the tiny model), and the entries ``mmkp_synth`` /
``mmkp_synth_eval`` in ``dataset_info.json`` (other entries are kept). Each row carries ``kind`` (``text`` |
``image``) besides the usual fields; ``cot_source`` is ``synthetic``. Output is deterministic (a seeded
``random.Random``); :func:`tokenizer_corpus` gives the text a demo tokenizer is trained on.
"""

from __future__ import annotations

import argparse
import itertools
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
QUADRANT = 28  # the tiny model's vision tower: 14-pixel patches merged 2x2, so one image token per quadrant

# Four palettes of three colours: an image post shows one colour of each palette; a colour moves the clock by its
# place in its palette (1, 2 or 3 steps). Palettes are told apart by colour alone: the tiny model's M-RoPE gives
# the four image tokens nearly the same position, so "which quadrant" is not readable, "which palette" is.
PALETTES: tuple[tuple[tuple[str, tuple[int, int, int]], ...], ...] = (
    (("red", (220, 30, 30)), ("orange", (245, 140, 20)), ("yellow", (240, 220, 40))),
    (("green", (40, 170, 60)), ("teal", (20, 160, 160)), ("blue", (30, 70, 220))),
    (("purple", (140, 50, 190)), ("pink", (240, 120, 180)), ("brown", (120, 70, 30))),
    (("white", (245, 245, 245)), ("grey", (128, 128, 128)), ("black", (15, 15, 15))),
)
COLOURS: dict[str, tuple[int, int, int]] = {name: rgb for palette in PALETTES for name, rgb in palette}
STEPS: dict[str, int] = {name: i + 1 for palette in PALETTES for i, (name, _) in enumerate(palette)}
CLOCK = ("dawn", "noon", "dusk", "night")  # the hashtags of image posts; the hand starts at dawn

TOPICS = (
    "coffee", "pizza", "football", "guitar", "puppy", "concert", "birthday", "garden", "camera", "bicycle",
    "museum", "yoga",
)  # fmt: skip
# ``text`` posts: {a} is the topic word.
TEXT_TEMPLATES = (
    "just had the best {a} ever",
    "so happy about the {a} today",
    "my first {a} of the year",
    "who else is ready for the {a} ?",
    "nothing beats {a} in the morning",
    "my weekend was all {a}",
    "can't stop thinking about the {a}",
    "finally some {a} with friends",
    "{a} , what a day !",
    "a quiet evening with my {a}",
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


def clock_walk(colours: tuple[str, ...]) -> list[str]:
    """The clock state after each colour, from dawn (the last one is the image post's hashtag)."""
    hand, states = 0, []
    for colour in colours:
        hand = (hand + STEPS[colour]) % len(CLOCK)
        states.append(CLOCK[hand])
    return states


def _rationale(kind: str, keyphrases: list[str], colours: tuple[str, ...]) -> str:
    if kind == "text":
        return f"the post is about {keyphrases[0]} ."
    return " , ".join(f"{c} {s}" for c, s in zip(colours, clock_walk(colours)))


def draw_synth_image(path: Path, quadrants: list[tuple[int, int, int]]) -> None:
    """Four flat quadrants, left to right and top to bottom (one colour repeated four times: a flat image)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", IMAGE_SIZE)
    draw = ImageDraw.Draw(img)
    for i, rgb in enumerate(quadrants):
        x0, y0 = (i % 2) * QUADRANT, (i // 2) * QUADRANT
        draw.rectangle((x0, y0, x0 + QUADRANT - 1, y0 + QUADRANT - 1), fill=rgb)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=True)


def split_combinations(seed: int = SEED, num_eval: int = NUM_EVAL // 2) -> tuple[list, list]:
    """(training combinations, held-out combinations) of the image posts' colours (one per palette, in palette
    order): ``num_eval`` held out, drawn so that each held-out hashtag occurs about equally often."""
    rng = random.Random(seed)
    combos = list(itertools.product(*[[name for name, _ in palette] for palette in PALETTES]))
    rng.shuffle(combos)
    held_out: list = []
    for k in range(num_eval):  # round-robin over the hashtags
        want = CLOCK[k % len(CLOCK)]
        held_out.append(next(c for c in combos if c not in held_out and clock_walk(c)[-1] == want))
    return [c for c in combos if c not in held_out], held_out


def build_rows(
    num_train: int = NUM_TRAIN, num_eval: int = NUM_EVAL, seed: int = SEED, image_dir_name: str = IMAGE_DIR
) -> tuple[list[dict], list[dict], dict[str, list[tuple[int, int, int]]]]:
    """(train rows, eval rows, {image file name: its quadrants' RGB}); half of each split is of each kind.

    Held-out text posts never repeat a training text (a topic word in a template it was not seen in); held-out image
    posts show a colour combination (as a set) that no training post shows, each a different one.
    """
    rng = random.Random(seed)
    template = PromptTemplate(default_prompt_template())
    train_combos, eval_combos = split_combinations(seed, num_eval - num_eval // 2)
    train: list[dict] = []
    held_out: list[dict] = []
    images: dict[str, list[tuple[int, int, int]]] = {}
    seen_texts: set[str] = set()
    for split, n, rows in (("train", num_train, train), ("eval", num_eval, held_out)):
        kinds = [KINDS[i % 2] for i in range(n)]
        rng.shuffle(kinds)
        eval_queue = list(eval_combos)
        for k, kind in enumerate(kinds):
            colours: tuple[str, ...] = ()
            if kind == "image":
                text = rng.choice(IMAGE_TEXTS)
                colours = rng.choice(train_combos) if split == "train" else eval_queue.pop(0)
                keyphrases = [clock_walk(colours)[-1]]
                quadrants = [COLOURS[c] for c in colours]
                rng.shuffle(quadrants)
            else:
                while True:
                    topic = rng.choice(TOPICS)
                    text = rng.choice(TEXT_TEMPLATES).format(a=topic)
                    if split == "train" or text not in seen_texts:
                        break
                keyphrases = [topic]
                quadrants = [COLOURS[rng.choice(sorted(COLOURS))]] * 4
            if split == "train" and kind == "text":
                seen_texts.add(text)
            image_name = f"synth_{split}_{k:04d}.png"
            images[image_name] = quadrants
            row = make_row(
                f"{TRAIN_NAME}_{split}_{k:06d}",
                text,
                keyphrases,
                template.render(text, sep=ANSWER_SEP),
                [f"{image_dir_name}/{image_name}"],
                ANSWER_SEP,
            )
            row["cot"] = build_cot(_rationale(kind, keyphrases, colours), ANSWER_SEP.join(keyphrases))
            row["cot_source"] = COT_SOURCE
            row["kind"] = kind
            rows.append(row)
    return train, held_out, images


def build_synthetic_demo(output_dir: str | Path, register: bool = True, seed: int = SEED) -> dict[str, Path]:
    """Write the synthetic demo dataset into ``output_dir``; returns the written data files by entry name."""
    output_dir = Path(output_dir)
    train, held_out, images = build_rows(seed=seed)
    for name in sorted(images):
        draw_synth_image(output_dir / IMAGE_DIR / name, images[name])
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
        (folder / f"{EVAL_NAME}.json").write_text(json.dumps([posts[i] for i in keep], ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
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
    "CLOCK", "COLOURS", "EVAL_NAME", "IMAGE_DIR", "KINDS", "PALETTES", "TOPICS", "TRAIN_NAME", "build_rows",
    "build_synthetic_demo", "clock_walk", "tokenizer_corpus", "write_kind_subsets",
]  # fmt: skip
