"""The per-request fields of ``dyncot_think`` on vLLM (``vllm_xargs`` keys) and the server's environment, vLLM-free:
the logits processor reads them inside vLLM, the ASGI middleware writes them before vLLM parses the request (and is
unit-tested without vLLM installed)."""

MODE_KEY, THRESHOLD_KEY, PROB_KEY = "dyncot_think", "dyncot_think_threshold", "dyncot_think_prob"
DEFAULT_MODE_ENV = "DYNCOT_THINK_DEFAULT"  # the server's default mode (dyncot-serve --think), else auto
TAG_LEN_ENV = "DYNCOT_THINK_TAG_LEN"  # tokens of the think tag (> 1: the middleware's look-ahead)
ADAPTERS_ENV = "DYNCOT_THINK_ADAPTERS"  # JSON {served LoRA name: its threshold}, from dyncot-serve's --lora-modules

__all__ = ["ADAPTERS_ENV", "DEFAULT_MODE_ENV", "MODE_KEY", "PROB_KEY", "TAG_LEN_ENV", "THRESHOLD_KEY"]
