"""The plugin's recipe keys: one dataclass, validated before LLaMA-Factory loads anything.

Every key starts with ``dyncot_`` and sits in the same YAML recipe as LLaMA-Factory's own keys (or on the command
line as ``dyncot_gamma=0.3``). The argument reader (see :mod:`dyncot_plugin.patches`) takes them out before
LLaMA-Factory's ``HfArgumentParser`` sees the rest, so LLaMA-Factory never learns about them.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dyncot_plugin.strategies import STRATEGIES as _STRATEGY_TABLE
from dyncot_plugin.strategies import Strategy
from dyncot_plugin.think import DEFAULT_THRESHOLD, THINK_MODES, check_threshold

PREFIX = "dyncot_"
STRATEGIES = tuple(_STRATEGY_TABLE)
MISSING_COT_POLICIES = ("error", "sft")
EVAL_TASKS = ("auto", "mmkp", "scienceqa")
COT_WHEN = ("below", "above")
MISMATCH_POLICIES = ("warn", "error")


class DynCotConfigError(ValueError):
    """A ``dyncot_*`` key is unknown or has a value outside what is allowed."""


def _choice(default: str, allowed: tuple[str, ...]) -> Any:
    """A field whose value is one of ``allowed`` (validated in ``__post_init__``; a drop-down in LlamaBoard)."""
    return field(default=default, metadata={"choices": tuple(allowed)})


@dataclass
class DynCotArguments:
    """Arguments of the Dynamic CoT plugin.

    Fields:
        dyncot_strategy (`str`, default ``"sft"``):
            What each training sample is trained on. ``sft``: the plain answer (the keyphrases), identical to
            vanilla LLaMA-Factory SFT. ``cot`` (Fine-tune-CoT): the ``<think>…</think><answer>…</answer>`` target.
            ``multitask``: both targets at every step, loss = mean of the two token-mean losses. ``dynamic``: a
            no-grad forward with the current weights gives each sample's plain-answer loss (mean token NLL); a
            sample whose loss is below ``dyncot_gamma`` is trained on its CoT target, otherwise on the plain one.
        dyncot_gamma (`float`, default ``0.4``):
            The selection threshold γ of ``dynamic`` (the paper's value). ``0`` never selects CoT (same as
            ``sft``); a value above any possible loss always selects CoT (same as ``cot``). Must be finite, >= 0.
            With ``dyncot_target_cot_ratio`` γ is steered instead, and ``dyncot_gamma`` is its value only until the
            first eligible selection loss is seen (the first such step selects with the target quantile of its own
            losses).
        dyncot_target_cot_ratio (`float` or null, default ``null``):
            ``dynamic``: instead of a fixed γ, the share of samples (among those with a usable CoT view) to train
            on CoT, in (0, 1). γ stays an absolute plain-answer loss threshold (comparable with ``dyncot_gamma``),
            set before each optimizer step's rows are selected from the losses of the latest steps (all ranks): the
            look-back is chosen by its out-of-sample quantile loss (short and drift-compensated while losses fall
            fast, long once they settle) and an integral correction repays the share the run has trained off
            target, so no window needs setting. The γ each step selects with is logged as ``gamma`` and saved in
            checkpoints; a resume with another target, rule or window restarts the controller and says so
            (``dyncot_plugin/train/gamma.py``; measured shares in ``docs/benchmarks.md``).
        dyncot_target_window (`int`, default ``4096``):
            An upper bound on how far the target-share controller looks back, in **rows** (eligible selection
            losses, all ranks together; at most 512 optimizer steps in any case). The controller picks its own
            look-back below it; lower it only to forbid long ones. Must be >= 1.
        dyncot_target_rescore (`int`, default ``0``):
            Off at ``0``. With ``dyncot_target_cot_ratio``: at every optimizer step, each process also scores (no-grad
            forward, the same per-row plain-answer mean NLL the selection uses) the rows of its next micro-batches of
            this epoch, at least this many rows (whole micro-batches: ``ceil(K / per_device_train_batch_size)`` of
            them), and the controller sets γ from those fresh losses (they alone when they are at least twice a
            step's rows, else as the newest entry of its look-back). For runs whose losses fall faster than any
            look-back at past steps follows (one row per step with losses falling by their spread per step). Cost:
            that many extra no-grad micro-batch forwards per step (measured in ``docs/benchmarks.md``). Rows re-scored
            are trained later in the epoch as usual (the last steps of an epoch have fewer or none to re-score).
            Must be an integer >= 0.
        dyncot_cot_when (`str`, default ``"below"``):
            ``dynamic``: which side of γ trains on CoT. ``below`` (the paper's rule): plain-answer loss < γ.
            ``above`` (the reverse ablation): loss >= γ, so ``dyncot_gamma: 0`` is ``cot`` and a γ above every
            loss is ``sft``.
        dyncot_cot_mismatch (`str`, default ``"warn"``):
            A CoT text whose ``<answer>`` names other keyphrases than the row's plain answer (compared as stemmed
            sets, as ``gen-cot --match exact`` does; ScienceQA by answer letter): ``warn`` counts and logs them (the
            first rows named) and trains on them; ``error`` stops before the model loads, naming dataset and rows.
        dyncot_missing_cot (`str`, default ``"error"``):
            What ``cot``/``multitask``/``dynamic`` do with a sample that has no CoT text: ``error`` stops with the
            dataset name and row; ``sft`` trains it on its plain target and logs how many samples did so.
        dyncot_eval_samples (`int`, default ``0``):
            Size of the capped evaluation subset on which, every ``eval_steps``, the model generates and the
            task's metrics (``dyncot_eval_task``), the CoT rate and the generation length are logged as
            ``eval_<metric>``. ``0`` turns it off (no cost).
        dyncot_eval_max_new_tokens (`int`, default ``256``):
            Generation budget of that evaluation per sample.
        dyncot_eval_task (`str`, default ``"auto"``):
            What that evaluation scores: ``mmkp`` (keyphrase F1@1 and F1@M, CMKP protocol), ``scienceqa`` (answer
            accuracy), or ``auto``: ``scienceqa`` when every gold label reads ``The answer is (X).``, else ``mmkp``.
        dyncot_think (`str`, default ``"auto"``):
            Thinking at inference, for prediction runs (``do_predict`` with ``predict_with_generate``) and the
            training-time evaluation (the rule: :mod:`dyncot_plugin.think`). ``auto``: the model's probability of
            opening its reply with ``<think>`` (``think_prob``, written to every prediction row) decides: at or
            above ``dyncot_think_threshold`` the reply is generated exactly as ``always`` generates it, below exactly
            as ``never`` does. ``always``: every reply starts with the ``<think>`` tag (part of the written
            prediction). ``never``: no decoded reply contains ``<think>``, however it is spelled in tokens.
            ``greedy``: no control (the tag wins when its first token beats every plain first token); for
            comparison. Setting it routes predictions through the plugin (which also passes the model's own position
            inputs to ``generate``).
        dyncot_think_threshold (`float`, default ``0.5``):
            The threshold of ``auto`` on ``think_prob``: a finite number >= 0; ``0`` is ``always``, above ``1`` is
            ``never``. Saved with the run's outputs (``dyncot_think.json``) as the model's threshold.
        dyncot_log_selection (`bool`, default ``False``):
            Also write every selection decision to ``<output_dir>/dyncot_selection/rank<N>.jsonl``, one file per
            rank and one line per micro-batch: global step, epoch, γ, and per sample its id (the row's ``id``, else
            ``<dataset>#<row index>``), plain-answer loss, CoT or not, and whether it has a usable CoT view.
            ``python -m dyncot_plugin.train.report OUTPUT_DIR`` prints from them, per epoch, the share of samples
            whose view changed since the previous epoch.
        dyncot_reuse_image_features (`bool`, default ``True``):
            ``dynamic`` only: the training forward reuses the image features the selection pass computed for the
            same batch instead of running the vision tower again. Applied only where it is exact (vision tower and
            projector frozen, as LLaMA-Factory's ``freeze_vision_tower`` / ``freeze_multi_modal_projector``
            defaults leave them, and no dropout in the tower); the log says whether it is in use. ``false`` runs
            the vision tower in both forwards.
    """

    dyncot_strategy: str = _choice("sft", STRATEGIES)
    dyncot_gamma: float = 0.4
    dyncot_target_cot_ratio: float | None = None
    dyncot_target_window: int = 4096
    dyncot_target_rescore: int = 0
    dyncot_cot_when: str = _choice("below", COT_WHEN)
    dyncot_cot_mismatch: str = _choice("warn", MISMATCH_POLICIES)
    dyncot_missing_cot: str = _choice("error", MISSING_COT_POLICIES)
    dyncot_eval_samples: int = 0
    dyncot_eval_max_new_tokens: int = 256
    dyncot_eval_task: str = _choice("auto", EVAL_TASKS)
    dyncot_think: str = _choice("auto", THINK_MODES)
    dyncot_think_threshold: float = DEFAULT_THRESHOLD
    dyncot_log_selection: bool = False
    dyncot_reuse_image_features: bool = True

    def __post_init__(self) -> None:
        for key, allowed in CHOICES.items():  # every field with a fixed set of values (dyncot_strategy first)
            if getattr(self, key) not in allowed:
                raise DynCotConfigError(f"{key}: got {getattr(self, key)!r}; allowed values are {', '.join(allowed)}.")
        if not isinstance(self.dyncot_gamma, (int, float)) or isinstance(self.dyncot_gamma, bool):
            raise DynCotConfigError(f"dyncot_gamma: got {self.dyncot_gamma!r}; expected a number >= 0.")
        if not math.isfinite(self.dyncot_gamma) or self.dyncot_gamma < 0:
            raise DynCotConfigError(f"dyncot_gamma: got {self.dyncot_gamma!r}; expected a finite number >= 0.")
        try:
            self.dyncot_think_threshold = check_threshold(self.dyncot_think_threshold)
        except ValueError as exc:
            raise DynCotConfigError(str(exc)) from None
        ratio = self.dyncot_target_cot_ratio
        if ratio is not None:
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
                raise DynCotConfigError(
                    f"dyncot_target_cot_ratio: got {ratio!r}; expected a share strictly between 0 and 1 (or null)."
                )
            if self.dyncot_strategy != "dynamic":
                raise DynCotConfigError(
                    f"dyncot_target_cot_ratio steers the selection of dyncot_strategy=dynamic; this recipe has "
                    f"dyncot_strategy={self.dyncot_strategy}."
                )
        for key in ("dyncot_log_selection", "dyncot_reuse_image_features"):
            if not isinstance(getattr(self, key), bool):
                raise DynCotConfigError(f"{key}: got {getattr(self, key)!r}; expected true or false.")
        for key, low in (("dyncot_eval_samples", 0), ("dyncot_eval_max_new_tokens", 0), ("dyncot_target_window", 1),
                         ("dyncot_target_rescore", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DynCotConfigError(f"{key}: got {value!r}; expected an integer >= {low}.")
        if self.dyncot_target_rescore and ratio is None:
            raise DynCotConfigError(
                f"dyncot_target_rescore={self.dyncot_target_rescore} feeds the target-share controller; this recipe "
                "has no dyncot_target_cot_ratio (set one, or dyncot_target_rescore: 0)."
            )

    @property
    def strategy(self) -> Strategy:
        """The row of :data:`dyncot_plugin.strategies.STRATEGIES` for ``dyncot_strategy``."""
        return _STRATEGY_TABLE[self.dyncot_strategy]

    @property
    def needs_cot(self) -> bool:
        """Whether the strategy reads the CoT column at all."""
        return self.strategy.needs_cot

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


KNOWN_KEYS = tuple(f.name for f in fields(DynCotArguments))
CHOICES: dict[str, tuple[str, ...]] = {f.name: f.metadata["choices"] for f in fields(DynCotArguments)
                                       if "choices" in f.metadata}
"""Key -> its allowed values, for every key with a fixed set of them."""


def _field_docs(doc: str) -> dict[str, str]:
    """The ``Fields:`` section of :class:`DynCotArguments`'s docstring: key -> its text, the RST literals as Markdown
    code spans (``<think>`` stays visible where the text is rendered as Markdown)."""
    docs: dict[str, list[str]] = {}
    current = None
    for line in doc.split("Fields:", 1)[-1].splitlines():
        head = re.match(r"^ {8}(dyncot_\w+) \(", line)
        if head:
            current = head.group(1)
            docs[current] = []
        elif current and line.startswith(" " * 12):
            docs[current].append(line.strip())
        elif line.strip():
            current = None
    plain = {key: " ".join(lines) for key, lines in docs.items()}
    for pattern, repl in ((r":\w+:`([^`]*)`", r"`\1`"), (r"``([^`]*)``", r"`\1`"), (r"\*\*([^*]*)\*\*", r"\1")):
        plain = {key: re.sub(pattern, repl, text) for key, text in plain.items()}
    return plain


FIELD_DOCS: dict[str, str] = _field_docs(DynCotArguments.__doc__ or "")
"""Key -> what it means (its paragraph of the docstring, Markdown): the help LlamaBoard shows under each field."""
_TYPES = {
    "dyncot_gamma": float,
    "dyncot_think_threshold": float,
    "dyncot_target_cot_ratio": float,
    "dyncot_target_window": int,
    "dyncot_target_rescore": int,
    "dyncot_eval_samples": int,
    "dyncot_eval_max_new_tokens": int,
    "dyncot_log_selection": bool,
    "dyncot_reuse_image_features": bool,
}


def _coerce(key: str, value: Any) -> Any:
    """Command-line values arrive as strings; turn them into the field's type, naming the key when that fails."""
    kind = _TYPES.get(key)
    if kind is None or not isinstance(value, str):
        return value
    if key == "dyncot_target_cot_ratio" and value.strip().lower() in ("null", "none", ""):
        return None
    if kind is bool:
        if value.strip().lower() in ("true", "1", "yes"):
            return True
        if value.strip().lower() in ("false", "0", "no"):
            return False
        raise DynCotConfigError(f"{key}: got {value!r}; expected true or false.")
    try:
        return kind(value)
    except ValueError:
        raise DynCotConfigError(f"{key}: got {value!r}; expected {'a number' if kind is float else 'an integer'}.")


def check_key(key: str) -> None:
    if key not in KNOWN_KEYS:
        close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.0)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        raise DynCotConfigError(f"Unknown dyncot-plugin key `{key}`.{hint} Valid keys: {', '.join(KNOWN_KEYS)}.")


def split_args(args: dict[str, Any] | list[str]) -> tuple[dict[str, Any] | list[str], dict[str, Any]]:
    """Separate ``dyncot_*`` keys from LLaMA-Factory's own, in either form ``read_args`` returns.

    Returns ``(rest, dyncot)``; ``rest`` is a new object (the caller's is never mutated) and is the very same
    object when there is no ``dyncot_*`` key, so vanilla recipes pass through untouched.
    """
    found: dict[str, Any] = {}
    if isinstance(args, dict):
        if not any(isinstance(k, str) and k.startswith(PREFIX) for k in args):
            return args, found
        rest = {}
        for key, value in args.items():
            if isinstance(key, str) and key.startswith(PREFIX):
                check_key(key)
                found[key] = _coerce(key, value)
            else:
                rest[key] = value
        return rest, found

    # list form: ["--key", "value", "--key2=value2", ...]
    if not any(isinstance(a, str) and a.startswith("--" + PREFIX) for a in args):
        return args, found
    rest_list: list[str] = []
    i = 0
    while i < len(args):
        item = args[i]
        if isinstance(item, str) and item.startswith("--" + PREFIX):
            key, sep, value = item[2:].partition("=")
            check_key(key)
            if not sep:
                if i + 1 >= len(args) or str(args[i + 1]).startswith("--"):
                    raise DynCotConfigError(f"{key}: a value is required after --{key}.")
                value = args[i + 1]
                i += 1
            found[key] = _coerce(key, value)
        else:
            rest_list.append(item)
        i += 1
    return rest_list, found


def parse_dyncot_args(found: dict[str, Any]) -> DynCotArguments:
    for key in found:
        check_key(key)
    return DynCotArguments(**found)


# The arguments of the recipe this process is running; ``None`` when the recipe has no ``dyncot_*`` key
# (then the plugin stays out of the way and LLaMA-Factory runs exactly as without it).
_CURRENT: DynCotArguments | None = None
_GIVEN: frozenset[str] = frozenset()  # the keys the recipe itself set (the rest are the dataclass's defaults)


def set_current(args: DynCotArguments | None, given: Any = ()) -> None:
    global _CURRENT, _GIVEN
    _CURRENT, _GIVEN = args, frozenset(given if args is not None else ())


def get_current() -> DynCotArguments | None:
    return _CURRENT


def given_keys() -> frozenset[str]:
    """The ``dyncot_*`` keys the current recipe sets (e.g. a chat recipe without ``dyncot_think_threshold`` takes
    the model's saved threshold)."""
    return _GIVEN
