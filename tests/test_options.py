"""LLaMA-Factory options with the plugin: each honoured as in vanilla, or refused by name before the model loads.

The README's table "LLaMA-Factory options" lists the outcome of each; this file is its evidence.
"""

from __future__ import annotations

import json

import pytest

from dyncot_plugin.config import DynCotArguments, DynCotConfigError
from dyncot_plugin.testing.lf_runner import (
    LlamaFactoryRunError,
    run_llamafactory,
    tiny_sft_config,
    toy_rows,
    write_sharegpt_dataset,
)
from dyncot_plugin.testing.plugin_data import read_log, read_losses, write_plugin_dataset
from dyncot_plugin.testing.tiny_families import build_tiny_model
from dyncot_plugin.train.workflow import check_compatibility

# ----------------------------------------------------------------------------- refused by name (before loading)
# LLaMA-Factory's parser itself demands these packages when the option is set (GPU-only, not installable here):
# the option is set on the parsed arguments instead, as the parser would have left it.
NEEDS_GPU_PACKAGE = {"enable_liger_kernel", "use_unsloth"}


def _check(tiny_model_dir, tmp_path, dyncot: dict, **lf):
    """check_compatibility on the arguments LLaMA-Factory parses from a recipe (it runs before the model loads)."""
    from llamafactory.hparams import get_train_args

    write_plugin_dataset(tmp_path / "data", "toy", n=2)
    late = {k: lf.pop(k) for k in list(lf) if k in NEEDS_GPU_PACKAGE}
    config = tiny_sft_config(tiny_model_dir, tmp_path / "data", "toy", tmp_path / "out", **lf)
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    for key, value in late.items():
        setattr(model_args, key, value)
    check_compatibility(DynCotArguments(**dyncot), model_args, data_args, training_args, finetuning_args)


REFUSED = [
    ({"dyncot_strategy": "dynamic"}, {"packing": True}, "`packing`"),
    ({"dyncot_strategy": "cot"}, {"packing": True, "neat_packing": True}, "`packing`"),
    ({"dyncot_strategy": "multitask"}, {"streaming": True, "max_steps": 2}, "`streaming`"),
    ({"dyncot_strategy": "multitask"}, {"use_dft_loss": True}, "`use_dft_loss`"),
    ({"dyncot_strategy": "multitask"}, {"use_eaft_loss": True}, "`use_eaft_loss`"),
    ({"dyncot_strategy": "dynamic"}, {"enable_liger_kernel": True}, "`enable_liger_kernel`"),
    ({"dyncot_strategy": "multitask"}, {"use_unsloth": True}, "`use_unsloth`"),
    ({"dyncot_strategy": "sft"}, {"template": "qwen3_vl"}, "use `template: qwen3_vl_nothink`"),
    ({"dyncot_strategy": "dynamic"}, {"template": "qwen3_vl", "enable_thinking": False}, "`template: qwen3_vl`"),
    ({"dyncot_strategy": "dynamic"}, {"train_on_prompt": True}, "`train_on_prompt`"),
    ({"dyncot_strategy": "multitask"}, {"train_on_prompt": True}, "`train_on_prompt`"),
    ({"dyncot_strategy": "cot", "dyncot_eval_samples": 2}, {"train_on_prompt": True}, "`train_on_prompt`"),
    ({"dyncot_strategy": "sft"}, {"predict_with_generate": True, "val_size": 0.5}, "`predict_with_generate`"),
    ({"dyncot_strategy": "dynamic"}, {"predict_with_generate": True, "val_size": 0.5}, "`predict_with_generate`"),
]


@pytest.mark.parametrize(("dyncot", "lf", "named"), REFUSED, ids=lambda x: str(x)[:40])
def test_options_the_plugin_cannot_honour_are_refused_by_name(tiny_model_dir, tmp_path, dyncot, lf, named):
    with pytest.raises(DynCotConfigError, match="dyncot-plugin cannot honour") as info:
        _check(tiny_model_dir, tmp_path, dyncot, **lf)
    assert named in str(info.value)


HONOURED = [
    ({"dyncot_strategy": "sft"}, {"packing": True}),
    ({"dyncot_strategy": "sft"}, {"streaming": True, "max_steps": 2}),
    ({"dyncot_strategy": "dynamic"}, {"use_dft_loss": True}),
    ({"dyncot_strategy": "cot"}, {"enable_liger_kernel": True}),
    ({"dyncot_strategy": "dynamic"}, {"mask_history": True}),
    ({"dyncot_strategy": "dynamic"}, {"freeze_vision_tower": False}),
    ({"dyncot_strategy": "dynamic"}, {"template": "qwen3_vl_nothink"}),
    ({"dyncot_strategy": "cot"}, {"train_on_prompt": True}),
    ({"dyncot_strategy": "sft"}, {"train_on_prompt": True}),
    ({"dyncot_strategy": "dynamic"}, {"do_train": False, "do_predict": True, "predict_with_generate": True,
                                      "val_size": 0.5}),
]


@pytest.mark.parametrize(("dyncot", "lf"), HONOURED, ids=lambda x: str(x)[:40])
def test_options_the_plugin_honours_pass_the_check(tiny_model_dir, tmp_path, dyncot, lf):
    _check(tiny_model_dir, tmp_path, dyncot, **lf)


@pytest.mark.slow
def test_a_refusal_stops_the_cli_with_one_line_and_no_traceback(tiny_model_dir, tmp_path):
    write_plugin_dataset(tmp_path / "data", "toy", n=2)
    config = tiny_sft_config(tiny_model_dir, tmp_path / "data", "toy", tmp_path / "out", dyncot_strategy="multitask",
                             use_dft_loss=True)
    with pytest.raises(LlamaFactoryRunError) as info:
        run_llamafactory("train", config, tmp_path)
    assert info.value.proc.returncode == 2
    err = info.value.proc.stderr
    assert "[dyncot-plugin] error: dyncot-plugin cannot honour `use_dft_loss`" in err
    assert "Traceback" not in err and "trainable params" not in info.value.proc.stdout + err


@pytest.mark.slow
@pytest.mark.parametrize(("dyncot", "lf", "named"), [
    ({"dyncot_strategy": "dynamic"}, {"train_on_prompt": True}, "`train_on_prompt`"),
    ({"dyncot_strategy": "cot"}, {"predict_with_generate": True, "val_size": 0.5}, "`predict_with_generate`"),
], ids=["train_on_prompt", "do_train+predict_with_generate"])
def test_train_on_prompt_and_training_with_predict_with_generate_stop_the_cli(tiny_model_dir, tmp_path, dyncot, lf,
                                                                              named):
    write_plugin_dataset(tmp_path / "data", "toy", n=2)
    config = tiny_sft_config(tiny_model_dir, tmp_path / "data", "toy", tmp_path / "out", **dyncot, **lf)
    with pytest.raises(LlamaFactoryRunError) as info:
        run_llamafactory("train", config, tmp_path)
    err, out = info.value.proc.stderr, info.value.proc.stdout
    assert info.value.proc.returncode == 2 and err.count("[dyncot-plugin] error:") == 1
    assert f"[dyncot-plugin] error: dyncot-plugin cannot honour {named}" in err
    assert "Traceback" not in err and "trainable params" not in out + err


def _save_fake_cache(path, columns: dict) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict(columns)}).save_to_disk(str(path))


def test_a_tokenized_cache_without_cot_views_or_with_missing_cot_is_refused(tmp_path):
    from dyncot_plugin.validate import COT_MISSING, COT_OK, COT_STATUS, check_tokenized_cache

    plain = {"input_ids": [[1, 2], [3, 4]], "labels": [[-100, 2], [-100, 4]]}
    _save_fake_cache(tmp_path / "sft", plain)
    with pytest.raises(DynCotConfigError, match="cannot honour `tokenized_path: .*sft`: that cache was tokenised without"):
        check_tokenized_cache(str(tmp_path / "sft"), DynCotArguments(dyncot_strategy="cot"))
    _save_fake_cache(tmp_path / "partial", {**plain, COT_STATUS: [COT_OK, COT_MISSING]})
    with pytest.raises(DynCotConfigError, match="1 of its 2 training samples have no CoT text"):
        check_tokenized_cache(str(tmp_path / "partial"), DynCotArguments(dyncot_strategy="dynamic"))
    check_tokenized_cache(str(tmp_path / "partial"), DynCotArguments(dyncot_strategy="dynamic", dyncot_missing_cot="sft"))
    check_tokenized_cache(str(tmp_path / "not_yet"), DynCotArguments(dyncot_strategy="cot"))  # this run writes it


@pytest.mark.slow
def test_an_sft_tokenized_cache_is_refused_by_cot_and_a_plugin_cache_trains_the_same(tiny_model_dir, tmp_path):
    """LLaMA-Factory loads a `tokenized_path` cache instead of the datasets and skips alignment, so a cache an sft
    run wrote would train plain targets under cot: refused before the model loads. A cache the plugin wrote holds
    both views: a cot run reading it trains exactly what the run that wrote it trained."""
    write_plugin_dataset(tmp_path / "data", "toy", n=8)

    def run(name, cache, **extra):
        config = tiny_sft_config(tiny_model_dir, tmp_path / "data", "toy", tmp_path / name / "out", max_steps=2,
                                 tokenized_path=str(tmp_path / cache), overwrite_cache=False, **extra)
        proc = run_llamafactory("train", config, tmp_path / name)
        return read_losses(tmp_path / name / "out"), proc.stdout + proc.stderr

    run("sft", "sft_cache", dyncot_strategy="sft")
    assert (tmp_path / "sft_cache" / "dataset_dict.json").is_file()
    with pytest.raises(LlamaFactoryRunError) as info:
        run("cot_on_sft_cache", "sft_cache", dyncot_strategy="cot")
    err = info.value.proc.stderr
    assert info.value.proc.returncode == 2 and err.count("[dyncot-plugin] error:") == 1
    assert f"cannot honour `tokenized_path: {tmp_path / 'sft_cache'}`: that cache was tokenised without CoT views" in err
    assert "trainable params" not in info.value.proc.stdout + err

    written, _ = run("cot_writes", "cot_cache", dyncot_strategy="cot")
    read, output = run("cot_reads", "cot_cache", dyncot_strategy="cot")
    assert "Loaded tokenized dataset from" in output
    assert len(written) == 2 and read == written
    assert read != run("sft_again", "sft_cache", dyncot_strategy="sft")[0]  # the cache's CoT targets were trained


# ------------------------------------------------------------------------------------- honoured as in vanilla
@pytest.mark.slow
@pytest.mark.slow
def test_sft_packs_exactly_like_vanilla(tiny_model_dir, tmp_path):
    write_plugin_dataset(tmp_path / "data", "toy", n=8)
    losses = {}
    for name, extra, env in (("vanilla", {}, {"DYNCOT_DISABLE": "1"}), ("sft", {"dyncot_strategy": "sft"}, {})):
        config = tiny_sft_config(tiny_model_dir, tmp_path / "data", "toy", tmp_path / name / "out", max_steps=3,
                                 packing=True, **extra)
        run_llamafactory("train", config, tmp_path / name, env=env)
        losses[name] = read_losses(tmp_path / name / "out")
    assert len(losses["sft"]) == 3 and losses["sft"] == losses["vanilla"]


@pytest.mark.slow
def test_sft_streams_exactly_like_vanilla(tmp_path):
    """On a text-only model: LLaMA-Factory 0.9.5's own streaming of multimodal rows fails in the vision tower
    (vanilla too), and a streamed local file is cut into `dataloader_num_workers` shards, so 0 workers is an empty
    dataset. The README's option table says both."""
    model = build_tiny_model(tmp_path / "model", "qwen2")
    write_sharegpt_dataset(tmp_path / "data", "text", _text_rows(8))
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text())
    info["text"]["columns"] = {"messages": "messages", "cot": "cot"}
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(info))
    losses = {}
    for name, extra, env in (("vanilla", {}, {"DYNCOT_DISABLE": "1"}), ("sft", {"dyncot_strategy": "sft"}, {})):
        config = tiny_sft_config(model, tmp_path / "data", "text", tmp_path / name / "out", template="qwen",
                                 max_steps=3, streaming=True, dataloader_num_workers=1, **extra)
        run_llamafactory("train", config, tmp_path / name, env=env)
        losses[name] = read_losses(tmp_path / name / "out")
    assert len(losses["sft"]) == 3 and losses["sft"] == losses["vanilla"]


@pytest.mark.slow
def test_mask_history_trains_the_last_turn_in_both_views(tiny_model_dir, tmp_path):
    """Two-turn rows: with mask_history only the last answer is a target, in the plain and the CoT view alike, so
    dynamic γ=0 equals vanilla and dynamic γ huge equals cot."""
    rows = toy_rows(tmp_path / "data", n=8, cot=False)
    for i, row in enumerate(rows):
        first = {"role": "user", "content": "<image>Describe the picture."}
        row["messages"] = [first, {"role": "assistant", "content": "A picture."}] + [
            {"role": "user", "content": row["messages"][0]["content"].replace("<image>", "")}, row["messages"][1]
        ]
        row["cot"] = f"<think>Turn two, post {i}.</think><answer>{row['messages'][-1]['content']}</answer>"
        row["id"] = f"mh_{i}"
    write_sharegpt_dataset(tmp_path / "data", "mh", rows)
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text())
    info["mh"]["columns"]["cot"] = "cot"
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(info))

    def run(name, env=None, **extra):
        config = tiny_sft_config(tiny_model_dir, tmp_path / "data", "mh", tmp_path / name / "out", max_steps=2,
                                 mask_history=True, **extra)
        run_llamafactory("train", config, tmp_path / name, env=env)
        return read_losses(tmp_path / name / "out")

    vanilla = run("vanilla", env={"DYNCOT_DISABLE": "1"})
    assert run("dyn0", dyncot_strategy="dynamic", dyncot_gamma=0.0) == vanilla
    assert run("dyn_huge", dyncot_strategy="dynamic", dyncot_gamma=1.0e6) == run("cot", dyncot_strategy="cot")


# --------------------------------------------------------------------------- multitask and token normalisation
def _text_rows(n: int) -> list[dict]:
    texts = ["sunset at the beach", "a comeback in the game", "coffee and a book", "rain over the city",
             "cherry blossoms in tokyo", "the new release shipped", "twenty km for the marathon", "a cat on a keyboard"]
    answers = ["sunset; beach", "nba; basketball", "coffee; reading", "weather; rain", "travel; japan",
               "startup; tech", "running; fitness", "cats; pets"]
    return [
        {"id": f"t{i}", "messages": [{"role": "user", "content": f"Post: {texts[i % 8]}\nGive keyphrases."},
                                     {"role": "assistant", "content": answers[i % 8]}],
         "cot": f"<think>The post is about {texts[i % 8]}{' and more' * (i % 3)}.</think><answer>{answers[i % 8]}</answer>"}
        for i in range(n)
    ]


@pytest.mark.slow
def test_multitask_under_accumulation_on_a_text_only_model_equals_one_big_batch(tmp_path):
    """Text-only models normalise by token counts (num_items_in_batch): the window's loss is
    (Σ plain NLL / plain tokens + Σ CoT NLL / CoT tokens) / 2 whatever the accumulation."""
    model = build_tiny_model(tmp_path / "model", "qwen2")
    write_sharegpt_dataset(tmp_path / "data", "text", _text_rows(8))
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text())
    info["text"]["columns"] = {"messages": "messages", "cot": "cot"}
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(info))

    def run(name, batch, accumulation):
        config = tiny_sft_config(model, tmp_path / "data", "text", tmp_path / name / "out", template="qwen",
                                 max_steps=2, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                                 disable_shuffling=True, dyncot_strategy="multitask")
        run_llamafactory("train", config, tmp_path / name)
        state = json.loads((tmp_path / name / "out" / "trainer_state.json").read_text())
        return [(e["loss"], e["grad_norm"]) for e in state["log_history"] if "loss" in e]

    big = run("big", 4, 1)
    accumulated = run("accumulated", 2, 2)
    assert len(big) == 2
    for (loss_a, grad_a), (loss_b, grad_b) in zip(big, accumulated):
        assert loss_b == pytest.approx(loss_a, rel=1e-5)
        assert grad_b == pytest.approx(grad_a, rel=1e-4)
    log = read_log(tmp_path / "big" / "out")
    assert all(e["cot_ratio"] == 1.0 for e in log)
