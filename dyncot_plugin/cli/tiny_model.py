"""``dyncot-tiny-model OUT_DIR [--seed N]``: write a tiny random Qwen2-VL checkpoint (offline, a few seconds)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dyncot-tiny-model", description=(__doc__ or "").strip())
    parser.add_argument("out_dir", help="folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the random weights (default 0)")
    parser.add_argument("--vocab-size", type=int, default=1024, help="max BPE vocab size to train (default 1024)")
    args = parser.parse_args(argv)

    from dyncot_plugin.testing.tiny_model import build_tiny_qwen2vl

    path = build_tiny_qwen2vl(args.out_dir, seed=args.seed, vocab_size=args.vocab_size)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
