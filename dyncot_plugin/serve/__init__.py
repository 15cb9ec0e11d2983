"""Prediction and serving on vLLM with the think decision intact (runs where vLLM is installed, LLaMA-Factory not).

* :mod:`~dyncot_plugin.serve.templates`: LLaMA-Factory's prompt slots and image preprocessing, torch-free, for the
  templates the plugin supports (tested token for token against LLaMA-Factory's own ``Template``);
* :mod:`~dyncot_plugin.serve.recipe`: a prediction recipe read as ``llamafactory-cli train`` reads it: keys honoured,
  ignored or refused by name; the dataset's rows turned into prompts and labels;
* :mod:`~dyncot_plugin.serve.logits`: the vLLM logits processor of ``dyncot_think`` (force the tag, ban it in text);
* :mod:`~dyncot_plugin.serve.predict`: ``dyncot-predict``;
* :mod:`~dyncot_plugin.serve.adapters`: the LoRA adapters vLLM serves (checked before the engine starts) and the
  threshold each is served with; :mod:`~dyncot_plugin.serve.checkpoint`: the renamed copy of transformers-5
  LLaVA / Gemma 3 / InternVL checkpoints, in a cache that cleans up after itself;
* :mod:`~dyncot_plugin.serve.fields`: the per-request ``vllm_xargs`` keys (vLLM-free, shared by the two below);
* :mod:`~dyncot_plugin.serve.reasoning` and :mod:`~dyncot_plugin.serve.middleware` (the mode, the look-ahead,
  ``reasoning_content`` in replies and streamed deltas): the OpenAI-compatible server, started by
  :mod:`~dyncot_plugin.serve.server` (``dyncot-serve``; ``--template`` formats chats with the rows of ``templates``).

Nothing here imports :mod:`dyncot_plugin.train` or LLaMA-Factory.
"""


def reasoning_path() -> str:
    """The file vLLM's ``--reasoning-parser-plugin`` imports (it takes a path)."""
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "reasoning.py")
