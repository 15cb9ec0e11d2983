"""``dyncot-tiny-model OUT_DIR [--family NAME] [--seed N]``: write a tiny random checkpoint of a model family
(offline, a few seconds): qwen2_vl (default), qwen2_5_vl, qwen3_vl, llava, gemma3, internvl, qwen2 (text only)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from dyncot_plugin.testing.tiny_families import FAMILIES

    parser = argparse.ArgumentParser(prog="dyncot-tiny-model", description=(__doc__ or "").strip())
    parser.add_argument("out_dir", help="folder to write (created if missing)")
    parser.add_argument("--family", choices=list(FAMILIES), default="qwen2_vl",
                        help="model family (default qwen2_vl); train it with its LLaMA-Factory template")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the random weights (default 0)")
    parser.add_argument("--vocab-size", type=int, default=1024, help="max BPE vocab size to train (default 1024)")
    parser.add_argument("--corpus-from", metavar="DATASET_DIR", default=None,
                        help="qwen2_vl only: train the tokenizer on the synthetic demo set in DATASET_DIR "
                             "(`dyncot-data synth-demo-data`), so that each of its words is one token")
    parser.add_argument("--hidden-size", type=int, default=None, help="qwen2_vl only: text hidden size (default 64)")
    parser.add_argument("--num-layers", type=int, default=None, help="qwen2_vl only: text layers (default 2)")
    args = parser.parse_args(argv)

    from dyncot_plugin.testing.tiny_families import build_tiny_model

    sizes = {k: v for k, v in (("hidden_size", args.hidden_size), ("num_layers", args.num_layers)) if v is not None}
    if args.corpus_from is not None or sizes:
        if args.family != "qwen2_vl":
            parser.error("--corpus-from, --hidden-size and --num-layers are for --family qwen2_vl")
        from dyncot_plugin.io.read import InputError
        from dyncot_plugin.tasks.mmkp.synthetic_demo import tokenizer_corpus
        from dyncot_plugin.testing.tiny_model import build_tiny_qwen2vl

        try:
            corpus = None if args.corpus_from is None else tokenizer_corpus(args.corpus_from)
        except InputError as exc:
            print(f"dyncot-tiny-model: error: {exc}", file=sys.stderr)
            return 2
        path = build_tiny_qwen2vl(args.out_dir, seed=args.seed, vocab_size=args.vocab_size, corpus=corpus,
                                  **sizes)
    else:
        path = build_tiny_model(args.out_dir, args.family, seed=args.seed, vocab_size=args.vocab_size)
    print(path)
    print(f"template: {FAMILIES[args.family].template}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
