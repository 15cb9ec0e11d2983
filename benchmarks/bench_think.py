"""What measuring ``think_prob`` costs a prediction run: ``generate`` with and without the think decision's
instruments, side by side on the same batches (interleaved, same outputs).

Arms, on a tiny random Qwen2-VL with Qwen's real vocabulary (151,936 ids; ``<think>`` is three tokens, so the
look-ahead runs), assembled the way ``llamafactory-cli train`` builds a plugin run (``testing/assemble.py``):

* ``plain``: ``model.generate`` with the model's own position inputs, no logits processor, no hook;
* ``think_prob``: the same call under :class:`~dyncot_plugin.train.generation.ThinkControl` in ``greedy`` mode (the
  prefill hook, the 2-token look-ahead on the KV cache, the per-step processor): the same tokens, plus
  ``think_prob`` per row. The benchmark checks that the outputs are identical.

Besides the side-by-side ratio (sensitive to other load on the machine), the measured arm times its own
instruments (the prefill hook with the look-ahead, and the processor) and reports their share of its time.

Run: ``python benchmarks/bench_think.py [--posts 208] [--batch 16] [--max-new-tokens 64] [--repeats 3]``.
The last line is ``BENCH_JSON {...}`` (``--json-out`` writes it to a file too).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model, emit_json  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=208)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--family", choices=("qwen2_vl", "qwen3_vl"), default="qwen2_vl",
                        help="qwen2_vl: <think> is 3 tokens (look-ahead); qwen3_vl: one token")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from dyncot_plugin.testing.assemble import assemble_sft
    from dyncot_plugin.testing.lf_runner import tiny_sft_config
    from dyncot_plugin.testing.plugin_data import write_plugin_dataset
    from dyncot_plugin.testing.tiny_families import build_tiny_model
    from dyncot_plugin.train.generation import ThinkControl, generate_with_think, generation_inputs
    from dyncot_plugin.train.generation_eval import _prompt_feature

    work = Path(tempfile.mkdtemp(prefix="bench_think_"))
    model_dir = build_tiny_model(work / "model", args.family, tokenizer="qwen", hidden_size=args.hidden_size)
    write_plugin_dataset(work / "data", "toy", n=args.posts)
    template = {"qwen2_vl": "qwen2_vl", "qwen3_vl": "qwen3_vl_nothink"}[args.family]
    built = assemble_sft(tiny_sft_config(model_dir, work / "data", "toy", work / "out", dyncot_strategy="cot",
                                         template=template))
    model, tokenizer = built.model.eval(), built.tokenizer
    features = [_prompt_feature(built.train_dataset[i])[0] for i in range(args.posts)]
    tokenizer.padding_side = "left"
    batches = []
    for start in range(0, args.posts, args.batch):
        collated = built.collator([dict(f) for f in features[start : start + args.batch]])
        batches.append(generation_inputs(model, collated, built.trainer.family))
    tokenizer.padding_side = "right"
    control = ThinkControl("greedy", tokenizer)  # built once per run, as the trainer does
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)

    def plain(batch):
        return model.generate(**batch, **common)

    def measured(batch):
        return generate_with_think(model, batch, control, **common)

    # The instruments' own time inside the measured arm (robust to a machine shared with other work): the prefill
    # hook (the tag's look-ahead included) and the per-step processor.
    inside = {"hook": 0.0, "processor": 0.0}

    def timed(name, function):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                inside[name] += time.perf_counter() - start
        return wrapper

    control._after_forward = timed("hook", control._after_forward)
    call = ThinkControl.__call__
    ThinkControl.__call__ = timed("processor", call)
    seconds = {"plain": 0.0, "think_prob": 0.0}
    with torch.no_grad():
        for batch in batches[:1]:  # warm-up
            plain(batch), measured(batch)
        inside.update(hook=0.0, processor=0.0)
        for _ in range(args.repeats):
            for batch in batches:
                for name, arm in (("plain", plain), ("think_prob", measured)) if _ % 2 == 0 else (
                        ("think_prob", measured), ("plain", plain)):
                    start = time.perf_counter()
                    out = arm(batch)
                    seconds[name] += time.perf_counter() - start
                    if name == "plain":
                        reference = out
                    else:
                        produced = out
                if not torch.equal(reference, produced):
                    raise SystemExit("the arms generated different tokens")
    ratio = seconds["think_prob"] / seconds["plain"]
    share = (inside["hook"] + inside["processor"]) / seconds["think_prob"]
    report = {
        "benchmark": "bench_think", "family": args.family, "cpu": cpu_model(), "threads": torch.get_num_threads(), "posts": args.posts,
        "batch": args.batch, "max_new_tokens": args.max_new_tokens, "hidden_size": args.hidden_size,
        "tag_tokens": len(control.tag), "repeats": args.repeats,
        "plain_s": round(seconds["plain"], 3), "think_prob_s": round(seconds["think_prob"], 3),
        "ratio": round(ratio, 4), "hook_s": round(inside["hook"], 3), "processor_s": round(inside["processor"], 3),
        "instrument_share": round(share, 4),
    }
    print(f"{args.posts} posts x {args.repeats}, batch {args.batch}, {args.max_new_tokens} new tokens, "
          f"tag of {len(control.tag)} tokens: plain {seconds['plain']:.2f} s, with think_prob "
          f"{seconds['think_prob']:.2f} s, ratio {ratio:.4f}; inside the measured arm the prefill hook (with the "
          f"look-ahead) took {inside['hook']:.2f} s and the processor {inside['processor']:.2f} s: {100 * share:.2f} %")
    emit_json(report, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
