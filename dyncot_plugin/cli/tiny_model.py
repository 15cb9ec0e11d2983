"""``dyncot-tiny-model OUT_DIR [--family NAME] [--seed N] [--tokenizer tiny|qwen]``: write a tiny random checkpoint
of a model family (offline, a few seconds): qwen2_vl (default), qwen2_5_vl, qwen3_vl, llava, gemma3, internvl,
qwen2 (text only). ``--tokenizer qwen`` gives a Qwen family its real vocabulary (151,643 BPE ranks, the family's
special tokens at their published ids, model vocab 151,936)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from dyncot_plugin.testing.tiny_families import FAMILIES, QWEN_SIZED

    parser = argparse.ArgumentParser(prog="dyncot-tiny-model", description=(__doc__ or "").strip())
    parser.add_argument("out_dir", help="folder to write (created if missing)")
    parser.add_argument("--family", choices=list(FAMILIES), default="qwen2_vl",
                        help="model family (default qwen2_vl); train it with its LLaMA-Factory template")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the random weights (default 0)")
    parser.add_argument("--tokenizer", choices=["tiny", "qwen"], default="tiny",
                        help="tiny (default): a small BPE trained on the spot, <think>/</think>/<answer>/</answer> one "
                             "token each; qwen: Qwen's real vocabulary and the family's special tokens at their "
                             "published ids (qwen2_vl, qwen2_5_vl, qwen3_vl; <think> is 3 tokens before Qwen3)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="--tokenizer tiny: max BPE vocab size to train (default 1024)")
    parser.add_argument("--corpus-from", metavar="DATASET_DIR", default=None,
                        help="qwen2_vl only: train the tokenizer on the synthetic demo set in DATASET_DIR "
                             "(`dyncot-data synth-demo-data`), so that each of its words is one token")
    parser.add_argument("--hidden-size", type=int, default=None,
                        help="qwen2_vl, qwen2_5_vl, qwen3_vl: text hidden size, a multiple of 16 (default 64)")
    parser.add_argument("--num-layers", type=int, default=None,
                        help="qwen2_vl, qwen2_5_vl, qwen3_vl: text layers (default 2)")
    args = parser.parse_args(argv)

    from dyncot_plugin.testing.tiny_families import build_tiny_model

    sizes = {k: v for k, v in (("hidden_size", args.hidden_size), ("num_layers", args.num_layers)) if v is not None}
    qwen_only = f"--family {', '.join(QWEN_SIZED)}"
    if args.tokenizer == "qwen":
        given = [flag for flag, value in (("--vocab-size", args.vocab_size), ("--corpus-from", args.corpus_from))
                 if value is not None]  # fmt: skip
        if given:
            parser.error(f"{' and '.join(given)} cannot be used with --tokenizer qwen (its vocabulary is Qwen's own)")
        if args.family not in QWEN_SIZED:
            parser.error(f"--tokenizer qwen is for {qwen_only}, not --family {args.family}")
    if sizes and args.family not in QWEN_SIZED:
        parser.error(f"--hidden-size and --num-layers are for {qwen_only}, not --family {args.family}")
    if args.hidden_size is not None and (args.hidden_size < 16 or args.hidden_size % 16):
        parser.error(f"--hidden-size must be a positive multiple of 16, got {args.hidden_size}")
    if args.num_layers is not None and args.num_layers < 1:
        parser.error(f"--num-layers must be at least 1, got {args.num_layers}")
    vocab_size = 1024 if args.vocab_size is None else args.vocab_size
    if args.corpus_from is not None:
        if args.family != "qwen2_vl":
            parser.error("--corpus-from is for --family qwen2_vl")
        from dyncot_plugin.io.read import InputError
        from dyncot_plugin.tasks.mmkp.synthetic_demo import tokenizer_corpus
        from dyncot_plugin.testing.tiny_model import build_tiny_qwen2vl

        try:
            corpus = tokenizer_corpus(args.corpus_from)
        except InputError as exc:
            print(f"dyncot-tiny-model: error: {exc}", file=sys.stderr)
            return 2
        path = build_tiny_qwen2vl(args.out_dir, seed=args.seed, vocab_size=vocab_size, corpus=corpus, **sizes)
    else:
        path = build_tiny_model(args.out_dir, args.family, seed=args.seed, vocab_size=vocab_size,
                                tokenizer=args.tokenizer, **sizes)  # fmt: skip
    print(path)
    print(f"template: {FAMILIES[args.family].template}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
