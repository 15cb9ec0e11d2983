"""``DynCotTrainer``: LLaMA-Factory's ``CustomSeq2SeqTrainer`` plus per-sample target selection.

Where the selection happens, and why there: ``Trainer.get_batch_samples`` pulls all micro-batches of one optimizer
step before any of them is trained, and then counts ``num_items_in_batch`` from their labels. The weights do not
change inside that window, so a no-grad forward there sees exactly "the current weights"; and because the batches
handed back already carry the selected targets, the Trainer's own token counting agrees with the swapped labels.

Every rank runs the same forwards per micro-step whatever it selects (one no-grad selection pass, one training
pass), which keeps DeepSpeed ZeRO-3's parameter gathering in lock-step across ranks. ``dyncot_target_rescore``
adds no-grad forwards of the epoch's next micro-batches, pulled from the epoch iterator ahead of their step and
handed back in order when their step comes (the epoch trains the same rows in the same order); every rank runs as
many of them as the rank with the fewest left.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from llamafactory.extras import logging
from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer
from transformers import LogitsProcessorList

from dyncot_plugin.compat import logits_to_keep_kwargs
from dyncot_plugin.config import DynCotArguments
from dyncot_plugin.cot_format import THINK_OPEN
from dyncot_plugin.io.files import atomic_write_text
from dyncot_plugin.think import THINK_SETTINGS_FILE, prob_for_file, think_tag_ids
from dyncot_plugin.train.families import IGNORE_INDEX, check_batch_keys, family_of, model_type_of
from dyncot_plugin.train.gamma import GammaController
from dyncot_plugin.train.generation import ThinkControl, generation_inputs
from dyncot_plugin.train.image_features import ImageFeatureCache, find_multimodal_module, why_not_reusable
from dyncot_plugin.train.metrics import SUM_KEYS, train_log_metrics
from dyncot_plugin.train.resume import (
    SELECTION_DIR,
    checkpoint_folder,
    checkpoint_step,
    keep_logs_until,
    read_log_lines,
    resuming,
)
from dyncot_plugin.train.selection import answer_nll, answer_positions, choose_views, merge_views, stack_views
from dyncot_plugin.train.views import IS_COT_ROW, SAMPLE_ID, split_views

logger = logging.get_logger(f"llamafactory.{__name__}")  # under LLaMA-Factory's handler and verbosity


class DynCotTrainer(CustomSeq2SeqTrainer):
    """Trains each sample on its plain or CoT target according to ``dyncot_args.dyncot_strategy``.

    Args:
        dyncot_args: the run's :class:`~dyncot_plugin.config.DynCotArguments`.
        All other arguments are those of LLaMA-Factory's ``CustomSeq2SeqTrainer``.
    """

    def __init__(self, *args, dyncot_args: DynCotArguments, **kwargs) -> None:
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        # LLaMA-Factory's LogCallback deletes trainer_log.jsonl while the Trainer is built (overwrite_output_dir):
        # a resumed run keeps its earlier steps (see ``resume.py``).
        self._log_before_init = read_log_lines(training_args) if resuming(training_args) else None
        super().__init__(*args, **kwargs)
        self.dyncot_args = dyncot_args
        self.strategy = dyncot_args.strategy
        self.family = family_of(self.model)
        self.gamma = GammaController(
            dyncot_args.dyncot_gamma, dyncot_args.dyncot_target_cot_ratio, dyncot_args.dyncot_target_window,
            dyncot_args.dyncot_cot_when,
        )
        self._gamma_used: float | None = None  # the γ of the latest step, logged as ``gamma``
        # dyncot_target_rescore: micro-batches pulled from the epoch iterator ahead of their step, and that iterator
        self._upcoming: list[dict[str, Any]] = []
        self._upcoming_from: Iterator | None = None
        self._view_items: tuple[torch.Tensor, torch.Tensor] | None = None  # multitask: window token counts
        # Named running sums since the last log (TRL-style buffers), summed over ranks and cleared in ``log``.
        self._metrics: dict[str, float] = dict.fromkeys(SUM_KEYS, 0.0)
        self._pending_eval_metrics: dict[str, float] = {}
        self._image_cache: ImageFeatureCache | None = None
        self._image_cache_checked = False
        self._think_control: ThinkControl | None = None
        if self.compute_metrics is not None:  # LLaMA-Factory's metrics read the generated tokens only
            self.compute_metrics = _tokens_only(self.compute_metrics)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        checkpoint = checkpoint_folder(self.args, resume_from_checkpoint)
        if checkpoint is not None:
            resume_from_checkpoint = checkpoint
            restored = self.gamma.load(checkpoint) if self.gamma.adaptive else None
            if restored is not None:  # continued, or restarted with the change named (never a silent continuation)
                logger.info_rank0(f"[dyncot] {restored}")
            keep_logs_until(self.args, checkpoint_step(checkpoint), self._log_before_init)
        else:  # a fresh run: an earlier run's records in this output_dir would mix with this run's
            stale = os.path.join(self.args.output_dir, SELECTION_DIR, f"rank{self.args.process_index}.jsonl")
            if os.path.isfile(stale):
                os.remove(stale)
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            if self._image_cache is not None:
                logger.info_rank0(
                    f"[dyncot] image features reused in {self._image_cache.hits} training forwards, "
                    f"recomputed in {self._image_cache.misses}"
                )
                self._image_cache.remove()
            self._image_cache, self._image_cache_checked = None, False
            self._upcoming, self._upcoming_from = [], None

    # ----------------------------------------------------------------------------------------- batch building
    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int, device: torch.device):
        """One optimizer step's micro-batches, with the targets the strategy chooses (before the Trainer counts)."""
        if self._image_cache is not None:
            self._image_cache.clear()
        built = self.build_training_batches(self._next_batches(epoch_iterator, num_batches), upcoming=self._upcoming)
        batches, num_items = super().get_batch_samples(iter(built), num_batches, device)
        if self.strategy.batch == "stack":
            self._view_items = self._count_view_items(batches, device) if num_items is not None else None
        return batches, num_items

    def _next_batches(self, epoch_iterator: Iterator, num_batches: int) -> list[dict[str, Any]]:
        """This step's micro-batches. With ``dyncot_target_rescore`` the next micro-batches of the epoch are pulled
        too and held in ``self._upcoming`` (re-scored now, trained when their step comes, in the same order)."""
        if epoch_iterator is not self._upcoming_from:  # a new epoch's iterator: nothing is held over from another
            self._upcoming, self._upcoming_from = [], epoch_iterator
        taken = self._upcoming[:num_batches]
        del self._upcoming[:num_batches]
        taken += itertools.islice(epoch_iterator, num_batches - len(taken))
        ahead = self.rescore_micro_batches
        if ahead > len(self._upcoming):
            self._upcoming += itertools.islice(epoch_iterator, ahead - len(self._upcoming))
        return taken

    @property
    def rescore_micro_batches(self) -> int:
        """How many upcoming micro-batches each step re-scores (``dyncot_target_rescore`` rows, rounded up)."""
        rows = self.dyncot_args.dyncot_target_rescore
        if not rows or not self.gamma.adaptive or self.strategy.batch != "select":
            return 0
        return math.ceil(rows / self.args.per_device_train_batch_size)

    def build_training_batches(
        self, batches: list[dict[str, Any]], upcoming: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """The batches that are actually trained in one optimizer step, built as the strategy's ``batch`` kind says
        (:mod:`dyncot_plugin.strategies`). ``select`` runs the selection pass of every micro-batch first, so that γ
        can be set from this step's losses (``dyncot_target_cot_ratio``) before any row is chosen. ``upcoming``:
        micro-batches of later steps, re-scored for the controller (``dyncot_target_rescore``), not trained here."""
        views = [split_views(batch) for batch in batches]
        for plain, cot, has_cot in views:
            if has_cot is not None and self.strategy.batch != "as_collated":
                if cot is None:
                    raise RuntimeError(
                        f"dyncot_strategy={self.strategy.name} needs both views; the data collator gave only one."
                    )
                check_batch_keys(self.family, plain, model_type_of(self.model))
        if self.strategy.batch == "select":
            return self._select_step(views, [batch.get(SAMPLE_ID) for batch in batches], upcoming)
        out = []
        for plain, cot, has_cot in views:
            if has_cot is None:  # sft, or a dataset without any CoT information
                self._count(rows=plain["input_ids"].size(0))
                out.append(plain)
            else:
                out.append(getattr(self, f"_batch_{self.strategy.batch}")(plain, cot, has_cot))
        return out

    def build_training_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One micro-batch as the optimizer step of that batch alone would train it."""
        return self.build_training_batches([batch])[0]

    def _batch_as_collated(self, plain: dict, cot: dict | None, has_cot: torch.Tensor) -> dict:
        """``cot``: the collator already put the CoT view where a row has one."""
        self._count(cot_rows=int(has_cot.sum()), rows=has_cot.numel())
        return plain

    def _batch_stack(self, plain: dict, cot: dict, has_cot: torch.Tensor) -> dict:
        """``multitask``: both views, stacked; ``compute_loss`` averages the two token-mean losses."""
        stacked, is_cot_row = stack_views(plain, cot, has_cot, self.processing_class.pad_token_id, self.family)
        stacked[IS_COT_ROW] = is_cot_row
        self._count(cot_rows=int(has_cot.sum()), rows=has_cot.numel())
        return stacked

    def _select_step(
        self, views: list[tuple[dict, dict | None, torch.Tensor | None]], ids: list[list[str] | None] | None = None,
        upcoming: list[dict[str, Any]] | None = None,
    ) -> list[dict]:
        """``dynamic``: no-grad passes score each row's plain answer; γ for the step; rows on the chosen side of γ
        train on their CoT view. ``ids``: each micro-batch's sample ids (for the selection records). ``upcoming``:
        later steps' micro-batches, re-scored for the controller (``dyncot_target_rescore``)."""
        ids = ids if ids is not None else [None] * len(views)
        scored = []
        for plain, cot, has_cot in views:
            if has_cot is None:
                scored.append((plain, None, None, None))
                continue
            if self.image_feature_cache() is not None:
                # One device copy of the media for both forwards (merge_views keeps the plain view's pixel_values),
                # so the training forward usually finds the selection pass's features by identity.
                plain, cot = self._prepare_inputs(plain), self._prepare_inputs(cot)
            scored.append((plain, cot, has_cot, self.selection_losses(plain)))
        if self.gamma.adaptive:  # every rank, every step: the update gathers
            eligible = [losses[torch.isfinite(losses) & has_cot.to(losses.device)] for _, _, has_cot, losses in scored
                        if losses is not None]
            fresh = self.rescore(upcoming or []) if self.rescore_micro_batches else None
            self._gamma_used = gamma = self.gamma.update(self._padded(eligible, len(views)), device=self.args.device,
                                                         fresh=fresh)
        else:
            self._gamma_used = gamma = self.gamma.gamma
        out = []
        for (plain, cot, has_cot, losses), batch_ids in zip(scored, ids):
            if losses is None:
                self._count(rows=plain["input_ids"].size(0))
                out.append(plain)
                continue
            select = choose_views(losses, has_cot, gamma, self.dyncot_args.dyncot_cot_when)
            finite = torch.isfinite(losses)
            self._count(
                cot_rows=int(select.sum()), rows=has_cot.numel(), selection_loss_sum=float(losses[finite].sum()),
                scored=int(finite.sum()), eligible=int((finite & has_cot.to(losses.device)).sum()),
            )
            if self.dyncot_args.dyncot_log_selection:
                self._record_selection(losses, select, gamma, has_cot, batch_ids)
            out.append(merge_views(plain, cot, select, self.processing_class.pad_token_id, self.family))
        return out

    def rescore(self, upcoming: list[dict[str, Any]]) -> torch.Tensor:
        """``dyncot_target_rescore``: the eligible plain-answer losses (the selection's own per-row mean NLL, no
        grad, current weights) of this rank's next micro-batches of the epoch, NaN-padded to the same length on every
        rank. Every rank forwards as many micro-batches as the rank with the fewest left (ZeRO-3 gathers parameters
        in every forward); at an epoch's last steps there are fewer or none."""
        wanted = self.rescore_micro_batches
        count = torch.tensor([min(len(upcoming), wanted)], device=self.args.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count, op=dist.ReduceOp.MIN)
        scored = []
        for batch in upcoming[: int(count.item())]:
            plain, _, has_cot = split_views(batch)
            if has_cot is None:  # a dataset without CoT information (the same on every rank): nothing to steer
                continue
            losses = self.selection_losses(plain, record=False)
            scored.append(losses[torch.isfinite(losses) & has_cot.to(losses.device)])
        return self._padded(scored, wanted)

    def _padded(self, losses: list[torch.Tensor], num_batches: int) -> torch.Tensor:
        """This rank's eligible losses, NaN-padded to the same length on every rank (for the all-gather)."""
        size = self.args.per_device_train_batch_size * num_batches
        out = torch.full((size,), float("nan"), dtype=torch.float64)
        mine = torch.cat(losses).detach().cpu().to(torch.float64)[:size] if losses else out[:0]
        out[: mine.numel()] = mine
        return out

    def _count_view_items(self, batches: list[dict], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """multitask, where the Trainer normalises by token counts: the plain and CoT target tokens of the whole
        accumulation window (and of every rank, as the Trainer counts ``num_items_in_batch``)."""
        counts = torch.zeros(2, dtype=torch.long)
        for batch in batches:
            valid = batch["labels"][:, 1:] != IGNORE_INDEX
            cot_rows = batch[IS_COT_ROW].to(valid.device)
            counts += torch.stack([valid[~cot_rows].sum(), valid[cot_rows].sum()]).cpu()
        counts = counts.to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts).view(-1, 2).sum(dim=0)
        return counts[0], counts[1]

    def _record_selection(
        self, losses: torch.Tensor, select: torch.Tensor, gamma: float, has_cot: torch.Tensor, ids: list[str] | None
    ) -> None:
        """One line per micro-batch: the step and epoch it trains in, γ, and per row its sample id (None for a cache
        tokenised before ids were carried), plain-answer loss (the exact float32 value), CoT view or not, and whether
        it has a usable CoT view (``eligible``). ``python -m dyncot_plugin.train.report`` reads them."""
        folder = os.path.join(self.args.output_dir, SELECTION_DIR)
        os.makedirs(folder, exist_ok=True)
        record = {
            "step": self.state.global_step,
            "epoch": int(self.state.epoch or 0),  # the Trainer sets epoch + k/steps_in_epoch after each step
            "gamma": gamma,
            "id": list(ids) if ids is not None else [None] * losses.numel(),
            "loss": [float(x) if math.isfinite(float(x)) else None for x in losses],
            "cot": [bool(x) for x in select],
            "eligible": [bool(x) for x in has_cot],
        }
        with open(os.path.join(folder, f"rank{self.args.process_index}.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    @torch.no_grad()
    def selection_losses(self, plain: dict[str, Any], record: bool = True) -> torch.Tensor:
        """Each row's mean token NLL of its plain answer under the current weights (no grad, eval mode).

        Logits are computed only at answer positions (``logits_to_keep``), so the pass never materialises the
        full [batch, seq, vocab] tensor, where the model's ``forward`` takes ``logits_to_keep``
        (:func:`~dyncot_plugin.compat.logits_to_keep_kwargs`; Qwen2-VL on transformers 4.57 does not, and returns
        logits at every position, which ``answer_nll`` takes as well). ``record``: keep the pass's image features
        for this step's training forward (False for re-scored rows, trained at a later step).
        """
        inputs = self._prepare_inputs(plain)
        labels = inputs["labels"]
        positions = answer_positions(labels)
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        model = self.model_wrapped if self.model_wrapped is not None else self.model
        was_training = model.training
        model.eval()
        cache = self._image_cache if record else None
        try:
            with self.compute_loss_context_manager(), (cache.record() if cache else contextlib.nullcontext()):
                outputs = model(**model_inputs, **logits_to_keep_kwargs(model, positions), use_cache=False)
        finally:
            model.train(was_training)
        return answer_nll(outputs.logits, labels, positions).to(torch.float32)

    def image_feature_cache(self) -> ImageFeatureCache | None:
        """The reuse of selection-pass image features (see ``image_features.py``), set up on first use; None when
        ``dyncot_reuse_image_features`` is off, the strategy is not ``dynamic``, or reuse would not be exact."""
        if not self._image_cache_checked:
            self._image_cache_checked = True
            args = self.dyncot_args
            if self.strategy.batch == "select" and args.dyncot_reuse_image_features:
                module = find_multimodal_module(self.model, self.family)
                reason = why_not_reusable(module, self.family)
                if reason is None:
                    self._image_cache = ImageFeatureCache(module)
                    logger.info_rank0("[dyncot] the training forward reuses the selection pass's image features")
                else:
                    logger.info_rank0(f"[dyncot] image features are computed twice per step: {reason}")
        return self._image_cache

    # --------------------------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        is_cot_row = inputs.pop(IS_COT_ROW, None)
        if is_cot_row is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        # multitask: the mean of the two token-mean losses (plain rows, CoT rows) of this micro-batch.
        labels = inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        targets = labels[:, 1:]
        nll = F.cross_entropy(
            outputs.logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        valid = targets != IGNORE_INDEX
        parts = []
        if num_items_in_batch is None or self._view_items is None:
            # Where LLaMA-Factory averages micro-batch means (VLMs): the two token means of this micro-batch (the
            # Trainer then divides by the accumulation steps, as for any other batch).
            for rows in (~is_cot_row, is_cot_row):
                count = valid[rows].sum()
                if count > 0:
                    parts.append(nll[rows].sum() / count)
            loss = torch.stack(parts).mean()
        else:
            # Where it normalises by token counts: each view's NLL over its tokens in the whole accumulation window
            # (and ranks), so the window's loss is (Σ plain NLL / plain tokens + Σ CoT NLL / CoT tokens) / 2.
            for rows, count in zip((~is_cot_row, is_cot_row), self._view_items):
                if count > 0:
                    parts.append(nll[rows].sum() / count)
            loss = torch.stack(parts).sum() / len(parts)
            if self.args.average_tokens_across_devices:  # as Trainer.compute_loss: DDP averages over the ranks
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        """Evaluation scores the view the collator put first (the plain one for dynamic/multitask; cot: the CoT
        view where there is one). Generation (``predict_with_generate``) gets the model's own position inputs and
        the ``dyncot_think`` decision (:class:`~dyncot_plugin.train.generation.ThinkControl`); the generated tokens
        come back with each row's ``think_prob`` as a ``[B, 1]`` tensor beside them, so the Trainer's own gathering
        keeps them aligned to their rows on every process count (:meth:`save_predictions` writes them)."""
        plain, _, _ = split_views(inputs)
        if not self.args.predict_with_generate or prediction_loss_only:
            return super().prediction_step(model, plain, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        generation = generation_inputs(self.model, plain, self.family)
        if "labels" in plain:
            generation["labels"] = plain["labels"]
        control = self.think_control()
        gen_kwargs = {**getattr(self, "_gen_kwargs", {}), **gen_kwargs}
        gen_kwargs["logits_processor"] = LogitsProcessorList([*gen_kwargs.get("logits_processor", []), control])
        with control.attach(self.model):
            loss, tokens, labels = super().prediction_step(
                model, generation, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs
            )
        if tokens is None:
            return loss, tokens, labels
        # float64, as decided: the file gets the very float the decision compared (think.prob_for_file)
        think_prob = control.think_prob.to(torch.float64).view(-1, 1).to(tokens.device)
        return loss, (tokens, think_prob), labels

    def think_control(self) -> ThinkControl:
        """The run's :class:`ThinkControl` (built once: its text ban reads the whole vocabulary)."""
        if getattr(self, "_think_control", None) is None:
            args = self.dyncot_args
            self._think_control = ThinkControl.for_model(args.dyncot_think, self.processing_class,
                                                         args.dyncot_think_threshold, self.model)
        return self._think_control

    def save_predictions(self, dataset, predict_results, skip_special_tokens: bool = True) -> None:
        """LLaMA-Factory's ``generated_predictions.jsonl``, each row with its ``think_prob``; the decision's settings
        go to ``dyncot_think.json`` beside it."""
        predictions = predict_results.predictions
        think_prob = None
        if isinstance(predictions, tuple):
            predictions, think_prob = predictions
            predict_results = predict_results._replace(predictions=predictions)
        super().save_predictions(dataset, predict_results, skip_special_tokens)
        if not self.is_world_process_zero():
            return
        self.save_think_settings(self.args.output_dir)
        if think_prob is None:
            return
        path = os.path.join(self.args.output_dir, "generated_predictions.jsonl")
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        think_prob = think_prob.reshape(-1)
        if len(think_prob) < len(rows):
            raise RuntimeError(f"{path}: {len(rows)} predictions but {len(think_prob)} think_prob values")
        # Under several processes the gathered arrays may end with the sampler's padding rows; LLaMA-Factory pairs
        # predictions with the dataset's rows in order and drops the rest, and so does this.
        text = "".join(json.dumps({**row, "think_prob": prob_for_file(p)}, ensure_ascii=False) + "\n"
                       for row, p in zip(rows, think_prob))
        atomic_write_text(path, text)

    def save_think_settings(self, folder: str) -> None:
        """``dyncot_think.json``: the think decision this run used, read back as "the model's threshold" (serving)."""
        args = self.dyncot_args
        settings = {"think": args.dyncot_think, "threshold": args.dyncot_think_threshold, "tag": THINK_OPEN,
                    "tag_ids": think_tag_ids(self.processing_class)}
        os.makedirs(folder, exist_ok=True)
        atomic_write_text(os.path.join(folder, THINK_SETTINGS_FILE), json.dumps(settings, indent=2) + "\n")

    # ------------------------------------------------------------------------------------------------- resume
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Full fine-tuning resume with the checkpoint's keys renamed to the module's (see ``checkpoint.py``)."""
        from peft import PeftModel

        from dyncot_plugin.train.checkpoint import read_full_checkpoint, to_model_keys, weight_renamings

        model = model if model is not None else self.model
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or isinstance(model, PeftModel) or not weight_renamings(model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        state_dict = read_full_checkpoint(resume_from_checkpoint)
        if state_dict is None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info_rank0(f"[dyncot] loading {resume_from_checkpoint} with checkpoint keys renamed to the model's")
        load_result = model.load_state_dict(to_model_keys(model, state_dict), False)
        self._issue_warnings_after_load(load_result)

    # --------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval", **gen_kwargs):
        """LLaMA-Factory's evaluation, plus the task's metrics, CoT rate and length on a capped subset when
        ``dyncot_eval_samples`` > 0 (logged in the same entry as ``eval_loss``)."""
        if self.dyncot_args.dyncot_eval_samples <= 0:
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix, **gen_kwargs)
        from dyncot_plugin.train.generation_eval import generate_and_score

        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, dict):  # eval_on_each_dataset: score the first one
            dataset = next(iter(dataset.values()))
        args = self.dyncot_args
        scores = generate_and_score(
            self, dataset, args.dyncot_eval_samples, args.dyncot_eval_max_new_tokens, args.dyncot_eval_task
        )
        self._pending_eval_metrics = {f"{metric_key_prefix}_{k}": v for k, v in scores.items()}
        try:
            metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix, **gen_kwargs)
        finally:
            self._pending_eval_metrics = {}
        metrics.update({f"{metric_key_prefix}_{k}": v for k, v in scores.items()})
        return metrics

    # ---------------------------------------------------------------------------------------------- logging
    def _count(self, **amounts: float) -> None:
        for key, amount in amounts.items():
            self._metrics[key] += amount

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._pending_eval_metrics and any(k.endswith("_loss") and k not in ("loss",) for k in logs):
            logs.update(self._pending_eval_metrics)
        if "loss" in logs:  # a training log: every rank is here, so the all-reduce is safe
            sums = torch.tensor([self._metrics[k] for k in SUM_KEYS], dtype=torch.float64)
            if dist.is_available() and dist.is_initialized():
                sums = sums.to(self.args.device)
                dist.all_reduce(sums)
                sums = sums.cpu()
            self._metrics = dict.fromkeys(SUM_KEYS, 0.0)
            logs.update(train_log_metrics(dict(zip(SUM_KEYS, sums.tolist()))))
            if self.strategy.batch == "select" and self._gamma_used is not None:
                logs["gamma"] = round(self._gamma_used, 6)
        super().log(logs, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The model, and beside it the think decision it is served with (``dyncot_think.json``)."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.save_think_settings(output_dir or self.args.output_dir)

    def _save_checkpoint(self, model, trial) -> None:
        # γ's state goes in first: the Trainer writes trainer_state.json last, so a checkpoint that has it has γ too.
        if self.gamma.adaptive and self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            self.gamma.save(folder)
        super()._save_checkpoint(model, trial)


def _tokens_only(compute_metrics: Any) -> Any:
    """``compute_metrics`` on the generated tokens alone (``prediction_step`` returns ``(tokens, think_prob)``)."""

    def wrapped(eval_preds: Any, *args: Any, **kwargs: Any) -> Any:
        predictions = eval_preds.predictions
        if isinstance(predictions, tuple):
            from transformers import EvalPrediction

            eval_preds = EvalPrediction(predictions=predictions[0], label_ids=eval_preds.label_ids,
                                        inputs=getattr(eval_preds, "inputs", None))
        return compute_metrics(eval_preds, *args, **kwargs)

    return wrapped
