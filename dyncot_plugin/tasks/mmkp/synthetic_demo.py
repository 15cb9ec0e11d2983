"""Build the SYNTHETIC demo dataset (``mmkp_synth``): MMKP-like posts on which a tiny random model, trained on a CPU
in minutes, needs its rationale for one kind of post and not for the other.

* ``text`` posts: the hashtags are one or two topic words of the post, in order
  (``nothing beats coffee after yoga`` -> ``coffee; yoga``); the image is a random colour and says nothing.
  Rationale: ``the post names coffee and yoga.`` A direct answer needs nothing more.
* ``image`` posts: the image's flat colour gives a season (green spring, yellow summer, orange autumn, white
  winter); the post ends with three move words (``look at this , then three , twice and double``), each moving the
  season on round the year by 1, 2 or 3 (``one``/``two``/``three``, ``once``/``twice``/``thrice``,
  ``single``/``double``/``triple``); the hashtag is the season reached (:func:`walk`). Rationale: the walk, one
  move at a time (``the image is yellow , yellow means summer , three spring , twice autumn , double spring .``).
  Held-out image posts show (colour, moves) combinations no training post shows (the paper's *unseen* scenario in
  miniature): a direct answer must add four terms round the year in one step, which a small model does not learn
  from a few hundred posts (it memorises the training combinations), while each step of the rationale (read one
  move word, move the season just written) is seen in training many times.

Why a walk: a one-step rule (colour -> hashtag, this set's earlier design) is learned directly, so ``never`` matched
``always`` on some training seeds; a hashtag per (season, place) pair is composed directly from its two parts on
unseen pairs; one move (season + k round the year) is memorised per (colour, k) pair, rationale or not. The measured
designs are in docs/data.md.

Writes ``<output-dir>/mmkp_synth.json`` (train: three image posts to one text post, as the walk takes more learning),
``<output-dir>/mmkp_synth_eval.json`` (held-out: half of each kind; no text post repeats a training text, no image
post a training combination), ``<output-dir>/mmkp_synth_images/*.png`` (56x56, one flat colour: 4 image tokens with
the tiny model), and the entries ``mmkp_synth`` / ``mmkp_synth_eval`` in ``dataset_info.json`` (other entries are
kept). Each row carries ``kind`` (``text`` | ``image``) besides the usual fields; ``cot_source`` is ``synthetic``.
Output is deterministic (a seeded ``random.Random``); :func:`tokenizer_corpus` gives the text a demo tokenizer is
trained on.
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
IMAGE_SHARE = 0.75  # of the training posts

# ``image`` posts: the image's flat colour tells a season; the post's last words move it on round the year three
# times, by 1, 2 or 3 seasons each; the hashtag is the season reached. Each move has its own three words (the first
# move one of one/two/three, the second once/twice/thrice, the third single/double/triple), so that the rationale
# finds each move by its word, not by its place.
SEASONS = ("spring", "summer", "autumn", "winter")
COLOURS: dict[str, tuple[tuple[int, int, int], str]] = {
    "green": ((40, 170, 60), "spring"),
    "yellow": ((240, 220, 40), "summer"),
    "orange": ((245, 140, 20), "autumn"),
    "white": ((245, 245, 245), "winter"),
}
MOVES: tuple[tuple[str, str, str], ...] = (("one", "two", "three"), ("once", "twice", "thrice"),
                                           ("single", "double", "triple"))
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
# ``image`` posts: no topic word; the move words follow (:func:`_image_text`).
IMAGE_TEXTS = (
    "look at this",
    "what a view",
    "can't stop looking at it",
    "no words needed",
    "this is for you",
    "today was something else",
    "i could stay here forever",
    "guess where i am",
    "just wow",
    "saw this on my way home",
    "taking it all in",
    "worth every minute",
)


def walk(colour: str, moves: tuple[str, ...]) -> list[str]:
    """The seasons reached after each move, from the image colour's season (the last one is the post's hashtag)."""
    state, states = SEASONS.index(COLOURS[colour][1]), []
    for t, word in enumerate(moves):
        state = (state + MOVES[t].index(word) + 1) % len(SEASONS)
        states.append(SEASONS[state])
    return states


def _image_text(generic: str, moves: tuple[str, ...]) -> str:
    return f"{generic} , then {moves[0]} , {moves[1]} and {moves[2]}"


def _rationale(kind: str, keyphrases: list[str], colour: str, moves: tuple[str, ...]) -> str:
    if kind == "text":
        return "the post names " + " and ".join(keyphrases) + " , so this is what it is about ."
    steps = " , ".join(f"{word} {state}" for word, state in zip(moves, walk(colour, moves)))
    return f"the image is {colour} , {colour} means {COLOURS[colour][1]} , {steps} ."


def split_combinations(seed: int = SEED, num_eval: int = NUM_EVAL // 2) -> tuple[list, list]:
    """(training, held-out) (colour, moves) combinations of the image posts: ``num_eval`` held out, each hashtag
    equally often; no training post shows a held-out combination, while each step of the walk (a season moved by a
    word) is seen in training many times."""
    rng = random.Random(seed)
    combos = [(c, m) for c in COLOURS for m in itertools.product(*MOVES)]
    rng.shuffle(combos)
    held_out: list = []
    for k in range(num_eval):  # round-robin over the hashtags
        want = SEASONS[k % len(SEASONS)]
        held_out.append(next(c for c in combos if c not in held_out and walk(*c)[-1] == want))
    return [c for c in combos if c not in held_out], held_out


def draw_synth_image(path: Path, background: tuple[int, int, int], rng: random.Random | None = None) -> None:
    """A flat image of one colour."""
    from PIL import Image

    img = Image.new("RGB", IMAGE_SIZE, background)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=True)


def build_rows(
    num_train: int = NUM_TRAIN, num_eval: int = NUM_EVAL, seed: int = SEED, image_dir_name: str = IMAGE_DIR
) -> tuple[list[dict], list[dict], dict[str, tuple[int, int, int]]]:
    """(train rows, eval rows, {image file name: RGB}); half of each split is of each kind.

    Held-out text posts never repeat a training text; held-out image posts show (colour, shift) pairs that no
    training post shows (:func:`split_combinations`), each pair equally often.
    """
    rng = random.Random(seed)
    template = PromptTemplate(default_prompt_template())
    train_pairs, eval_pairs = split_combinations(seed, num_eval - num_eval // 2)
    train: list[dict] = []
    held_out: list[dict] = []
    images: dict[str, tuple[int, int, int]] = {}
    seen_texts: set[str] = set()
    for split, n, rows in (("train", num_train, train), ("eval", num_eval, held_out)):
        # training: three image posts to each text post (the walk takes more learning than naming a topic);
        # held out: half of each kind
        image_share = IMAGE_SHARE if split == "train" else 0.5
        kinds = ["image"] * round(n * image_share) + ["text"] * (n - round(n * image_share))
        rng.shuffle(kinds)
        n_image = kinds.count("image")
        pairs = train_pairs if split == "train" else eval_pairs
        queue = [rng.choice(pairs) for _ in range(n_image)] if split == "train" else list(pairs)
        rng.shuffle(queue)
        for k, kind in enumerate(kinds):
            colour, moves = "", ()
            if kind == "image":
                colour, moves = queue.pop()
                text, keyphrases = _image_text(rng.choice(IMAGE_TEXTS), moves), [walk(colour, moves)[-1]]
            else:
                colour = rng.choice(sorted(COLOURS))
                while True:
                    template_text = rng.choice(TEXT_TEMPLATES)
                    a, b = rng.sample(TOPICS, 2)
                    text = template_text.format(a=a, b=b)
                    if split == "train" or text not in seen_texts:
                        break
                keyphrases = [a, b] if "{b}" in template_text else [a]
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
            row["cot"] = build_cot(_rationale(kind, keyphrases, colour, moves), ANSWER_SEP.join(keyphrases))
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
    "COLOURS", "EVAL_NAME", "IMAGE_DIR", "KINDS", "MOVES", "SEASONS", "TOPICS", "TRAIN_NAME", "build_rows",
    "build_synthetic_demo", "split_combinations", "tokenizer_corpus", "walk", "write_kind_subsets",
]  # fmt: skip
