"""LoRA adapters on vLLM, the checks that need no engine (fast, no vLLM): what dyncot-predict and dyncot-serve accept
or refuse by name before the engine starts, the rank vLLM gets, the threshold each adapter is served with, and the
middleware giving a request that names an adapter that adapter's threshold. The engine side (parity with a
llamafactory-cli prediction run, the served adapter) is in tests/test_serve_vllm.py."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
import yaml

from dyncot_plugin.serve.adapters import (
    AdapterError,
    adapter_xargs,
    check_adapter,
    check_vocabulary,
    lora_modules,
    max_lora_rank,
    one_adapter,
)
from dyncot_plugin.testing.adapters import write_lora_adapter


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """Real PEFT adapters of the tiny Qwen2-VL: name -> path."""
    root = tmp_path_factory.mktemp("adapters")
    made = {
        "lm": write_lora_adapter(tiny_model_dir, root / "lm", think_threshold=0.0),
        "embed": write_lora_adapter(tiny_model_dir, root / "embed", modules_to_save=["embed_tokens"]),
        "lm_head_lora": write_lora_adapter(tiny_model_dir, root / "lm_head_lora", target_modules=["q_proj", "lm_head"]),
        "vision": write_lora_adapter(tiny_model_dir, root / "vision", target_modules=["qkv", "q_proj"]),
        "dora": write_lora_adapter(tiny_model_dir, root / "dora", use_dora=True),
        "ranked": write_lora_adapter(tiny_model_dir, root / "ranked", rank_pattern={"v_proj": 12}),
    }
    return {k: str(v) for k, v in made.items()}


def test_a_language_model_adapter_is_served_with_its_rank(adapters):
    assert check_adapter(adapters["lm"]).rank == 8 and check_adapter(adapters["lm"]).max_lora_rank == 8
    ranked = check_adapter(adapters["ranked"])  # rank_pattern raises the largest rank: vLLM's next allowed value
    assert (ranked.rank, ranked.max_lora_rank) == (12, 16)
    assert [max_lora_rank([r]) for r in (1, 2, 8, 9, 64, 300, 512)] == [1, 8, 8, 16, 64, 320, 512]
    with pytest.raises(AdapterError, match="LoRA rank 600 is above"):
        max_lora_rank([600])


@pytest.mark.parametrize("name, expected", [
    ("embed", "modules_to_save ['embed_tokens']"),
    ("lm_head_lora", "target_modules ['lm_head']"),
    ("vision", "weight base_model.model.model.visual.blocks.0.attn.qkv.lora_A.weight: LoRA on the vision tower"),
    ("dora", "use_dora: vLLM does not serve DoRA adapters"),
])
def test_what_vllm_would_not_serve_is_refused_by_name(adapters, name, expected):
    with pytest.raises(AdapterError) as e:
        check_adapter(adapters[name])
    assert adapters[name] in str(e.value) and expected in str(e.value)


def test_weights_alone_give_the_embeddings_away(adapters, tmp_path):
    """An adapter_config.json that says nothing (edited, or another tool's), whose file carries embed_tokens."""
    folder = tmp_path / "quiet"
    shutil.copytree(adapters["embed"], folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": None}))
    with pytest.raises(AdapterError, match=r"weight base_model\.model\.model\.language_model\.embed_tokens\.weight"):
        check_adapter(str(folder))
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(AdapterError, match="peft_type IA3: vLLM serves LoRA adapters only"):
        check_adapter(str(folder))
    with pytest.raises(AdapterError, match="not a LoRA adapter folder"):
        check_adapter(str(tmp_path))


def test_a_resized_vocabulary_is_refused(adapters, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    folder = tmp_path / "resized"
    shutil.copytree(adapters["lm"], folder)
    check_vocabulary(str(folder), tokenizer)  # no tokenizer saved with the adapter: the model's
    tokenizer.save_pretrained(str(folder))
    check_vocabulary(str(folder), tokenizer)  # the same tokenizer (LLaMA-Factory saves it with every adapter)
    grown = AutoTokenizer.from_pretrained(tiny_model_dir)
    grown.add_tokens(["<new_tag>"], special_tokens=True)
    grown.save_pretrained(str(folder))
    with pytest.raises(AdapterError, match=f"its tokenizer has {len(tokenizer) + 1} tokens, the model's {len(tokenizer)}"):
        check_vocabulary(str(folder), tokenizer)


def test_one_adapter_at_a_time():
    assert one_adapter(None) is None and one_adapter("a") == "a" and one_adapter(["a"]) == "a"
    with pytest.raises(AdapterError, match="2 adapters; vLLM applies one LoRA adapter per request"):
        one_adapter("a, b")


# ------------------------------------------------------------------------------------------------- dyncot-predict
def _recipe(tmp_path, model, **keys):
    recipe = {"model_name_or_path": model, "template": "qwen2_vl", "eval_dataset": "toy", "output_dir": str(tmp_path),
              "stage": "sft", "do_predict": True, "predict_with_generate": True, **keys}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, recipe


def test_predict_threshold_recipe_else_adapter_else_model_else_default(adapters, tiny_model_dir, tmp_path):
    from dyncot_plugin.serve.predict import think_threshold
    from dyncot_plugin.serve.recipe import check_recipe

    def resolved(**keys):
        config = check_recipe(_recipe(tmp_path, tiny_model_dir, **keys)[1])
        return think_threshold(config, tiny_model_dir, config.adapter_name_or_path)

    lm = adapters["lm"]
    assert resolved(adapter_name_or_path=lm) == (0.0, f"{lm}/dyncot_think.json")
    assert resolved(adapter_name_or_path=lm, dyncot_think_threshold=0.4) == (0.4, "the recipe")
    assert resolved(adapter_name_or_path=lm, finetuning_type="lora") == (0.0, f"{lm}/dyncot_think.json")
    assert resolved() == (0.5, "the default")  # the tiny model has no dyncot_think.json
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "dyncot_think.json").write_text(json.dumps({"think": "auto", "threshold": 0.7}))
    config = check_recipe(_recipe(tmp_path, str(model), adapter_name_or_path=adapters["ranked"])[1])
    assert think_threshold(config, str(model), adapters["ranked"]) == (0.7, f"{model}/dyncot_think.json")


@pytest.mark.parametrize("keys, expected", [
    ({"adapter_name_or_path": "EMBED"}, "modules_to_save ['embed_tokens']"),
    ({"adapter_name_or_path": "LM,LM"}, "adapter_name_or_path: 2 adapters"),
    ({"adapter_name_or_path": "LM", "finetuning_type": "full"}, "`adapter_name_or_path` needs `finetuning_type: lora`"),
])
def test_dyncot_predict_refuses_before_anything_loads(adapters, tiny_model_dir, tmp_path, capsys, keys, expected):
    from dyncot_plugin.serve import predict

    keys = {k: v.replace("EMBED", adapters["embed"]).replace("LM", adapters["lm"]) for k, v in keys.items()}
    path, _ = _recipe(tmp_path, tiny_model_dir, **keys)
    assert predict.main([str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("[dyncot-plugin] error: ") and expected in err[0], err


# ------------------------------------------------------------------------------------------------- dyncot-serve
def test_lora_modules_are_read_as_vllm_reads_them():
    extra = ["--enable-lora", "--lora-modules", "a=/x/a", '{"name": "b", "path": "/x/b", "base_model_name": "m"}',
             "--max-loras", "2", "--lora-modules=c=/x/c"]
    assert lora_modules(extra) == [("a", "/x/a"), ("b", "/x/b"), ("c", "/x/c")]
    assert lora_modules(["--port", "1"]) == []
    with pytest.raises(AdapterError, match="--lora-modules '{\"name\": 1}'"):
        lora_modules(["--lora-modules", '{"name": 1}'])


def test_dyncot_serve_checks_each_adapter_and_passes_its_threshold(adapters, tiny_model_dir, monkeypatch):
    from transformers import AutoTokenizer

    from dyncot_plugin.serve.fields import ADAPTERS_ENV
    from dyncot_plugin.serve.server import ServeError, lora_args

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    extra = ["--lora-modules", f"dyn={adapters['lm']}", f"wide={adapters['ranked']}"]
    argv, env, lines = lora_args(tiny_model_dir, extra, tokenizer)
    assert argv == ["--enable-lora", "--max-lora-rank", "16"]
    assert json.loads(env[ADAPTERS_ENV]) == {"dyn": 0.0, "wide": 0.5}
    dyn = f"[dyncot-plugin] LoRA adapter dyn ({adapters['lm']}): threshold 0.0 (from {adapters['lm']}/dyncot_think.json)"
    assert lines == [dyn, f"[dyncot-plugin] LoRA adapter wide ({adapters['ranked']}): threshold 0.5 (from the default)"]
    assert lora_args(tiny_model_dir, ["--enable-lora", "--max-lora-rank=64", *extra], tokenizer)[0] == []
    assert lora_args(tiny_model_dir, [], tokenizer) == ([], {}, [])
    with pytest.raises(ServeError, match=r"modules_to_save \['embed_tokens'\]"):
        lora_args(tiny_model_dir, ["--lora-modules", f"bad={adapters['embed']}"], tokenizer)

    monkeypatch.setenv(ADAPTERS_ENV, env[ADAPTERS_ENV])
    assert adapter_xargs("dyn") == {"dyncot_think_threshold": 0.0}
    assert adapter_xargs(tiny_model_dir) == {} and adapter_xargs(None) == {}


def test_the_middleware_gives_a_request_naming_an_adapter_its_threshold(monkeypatch):
    from dyncot_plugin.serve.fields import ADAPTERS_ENV
    from dyncot_plugin.serve.middleware import DyncotThinkMiddleware

    monkeypatch.setenv(ADAPTERS_ENV, json.dumps({"dyn": 0.0}))
    seen = []

    async def app(scope, receive, send):
        seen.append(json.loads((await receive())["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"choices": []}', "more_body": False})

    def call(request):
        body = json.dumps(request).encode()

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            pass

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
        asyncio.run(DyncotThinkMiddleware(app)(scope, receive, send))
        return seen[-1]["vllm_xargs"]

    messages = [{"role": "user", "content": "hi"}]
    assert call({"model": "dyn", "messages": messages, "vllm_xargs": {"dyncot_think": "never"}}) == {
        "dyncot_think": "never", "dyncot_think_threshold": 0.0}
    assert call({"model": "dyn", "messages": messages, "vllm_xargs": {"dyncot_think": "never",
                                                                      "dyncot_think_threshold": 0.3}}) == {
        "dyncot_think": "never", "dyncot_think_threshold": 0.3}  # the request's own wins
    assert call({"model": "base", "messages": messages, "vllm_xargs": {"dyncot_think": "never"}}) == {
        "dyncot_think": "never"}  # the base model: the logits processor's default (the model's saved threshold)
