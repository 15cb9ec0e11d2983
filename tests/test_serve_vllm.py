"""dyncot-predict on real vLLM (CPU) against a real ``llamafactory-cli train`` prediction run of the same model.

One tiny Qwen2-VL (hidden 128: vLLM's CPU attention needs a head size >= 32) trained with ``dynamic`` and a target
share; LLaMA-Factory predicts it with ``dyncot_think`` always, auto and never, dyncot-predict with ``--modes
auto,always,never`` from one engine load; greedy, float32. Then a run killed after its first committed chunk
resumes to the same files, and bad input stops with one error line.

Then the server: ``dyncot-serve --template qwen2_vl`` of a tiny Qwen2-VL with Qwen's real vocabulary (the session's
shared 3-token-tag server, ``conftest.dyncot_server``, started with ``--api-key`` and ``--root-path``).

The vLLM venv comes from ``scripts/make_vllm_venv.sh`` (cached; ~10 min to build the first time on 2 shared cores).
Where it cannot be built (no python3.11, no package index) or ``DYNCOT_SKIP_VLLM=1``, these tests skip and say why.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.serve_vllm import vllm_python as _vllm_python  # tests/test_serve_vllm_llava.py imports it from here

from dyncot_plugin.testing.lf_runner import offline_env, run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import write_plugin_dataset

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm_serve")]  # shares the session's dyncot-serve servers
REPO = Path(__file__).resolve().parents[1]
N_EVAL = 16


@pytest.fixture(scope="module")
def vllm_python() -> str:
    return _vllm_python()


def predict_cmd(python: str, recipe: Path, *args: str) -> list[str]:
    return ["nice", "-n", "10", python, "-m", "dyncot_plugin.serve.predict", str(recipe), *args]


def predict_env() -> dict[str, str]:
    env = offline_env({"PYTHONPATH": str(REPO)})
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _drop_training_keys(recipe: dict) -> None:
    """A prediction recipe from ``tiny_sft_config``: without the keys only training reads."""
    for key in ("logging_steps", "save_strategy", "per_device_train_batch_size", "gradient_accumulation_steps",
                "learning_rate", "num_train_epochs", "max_steps", "lr_scheduler_type", "plot_loss"):
        recipe.pop(key, None)


def run_predict(python: str, recipe: dict, path: Path, modes: tuple[str, ...], *args: str):
    """Write ``recipe`` to ``path``, run dyncot-predict on it with ``--modes`` (and ``args``) in the recipe's folder,
    check that it exited 0: (the finished process, {mode: rows of its file under the recipe's output_dir})."""
    import yaml

    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    proc = subprocess.run(predict_cmd(python, path, "--modes", ",".join(modes), *args), cwd=path.parent,
                          env=predict_env(), capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, {m: rows(Path(recipe["output_dir"]) / m / "generated_predictions.jsonl") for m in modes}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, vllm_python):
    """(model dir, data dir, work dir): a tiny Qwen2-VL trained with dynamic and a target share of 0.5."""
    import yaml

    from dyncot_plugin.testing.tiny_model import build_tiny_qwen2vl

    work = tmp_path_factory.mktemp("serve_vllm")
    base = build_tiny_qwen2vl(work / "base", seed=0, hidden_size=128)
    data = work / "data"
    write_plugin_dataset(data, "toy", n=16)
    write_plugin_dataset(data, "toy_eval", n=N_EVAL, image_size=(72, 60))
    model = work / "model"
    cfg = tiny_sft_config(base, data, "toy", model, dyncot_strategy="dynamic", dyncot_target_cot_ratio=0.5,
                          max_steps=24, num_train_epochs=3, learning_rate=3e-3)
    run_llamafactory("train", cfg, workdir=work)
    assert (model / "model.safetensors").exists()
    recipe = tiny_sft_config(model, data, None, work / "pred_vllm", do_train=False, do_predict=True,
                             predict_with_generate=True, eval_dataset="toy_eval", max_new_tokens=24, do_sample=False,
                             per_device_eval_batch_size=8, dyncot_think="auto")
    _drop_training_keys(recipe)
    return model, data, work, recipe


@pytest.fixture(scope="module")
def both_sides(trained, vllm_python):
    """LLaMA-Factory's prediction per mode, and dyncot-predict's three modes from one engine load."""
    model, data, work, recipe = trained
    lf = {}
    always = {**recipe, "dyncot_think": "always", "output_dir": str(work / "lf_always")}
    run_llamafactory("train", always, workdir=work, config_name="lf_always.yaml")
    lf["always"] = rows(work / "lf_always" / "generated_predictions.jsonl")
    probs = sorted(r["think_prob"] for r in lf["always"])
    threshold = round((probs[len(probs) // 2 - 1] + probs[len(probs) // 2]) / 2, 6)  # auto splits the posts
    for mode in ("auto", "never"):
        cfg = {**recipe, "dyncot_think": mode, "dyncot_think_threshold": threshold,
               "output_dir": str(work / f"lf_{mode}")}
        run_llamafactory("train", cfg, workdir=work, config_name=f"lf_{mode}.yaml")
        lf[mode] = rows(work / f"lf_{mode}" / "generated_predictions.jsonl")
    vrecipe = work / "vllm.yaml"
    started = time.time()
    proc, out = run_predict(vllm_python, {**recipe, "dyncot_think_threshold": threshold}, vrecipe,
                            ("auto", "always", "never"), "--chunk-size", "4")
    return lf, out, threshold, vrecipe, proc, time.time() - started


def test_parity_with_llamafactory_in_every_mode(both_sides):
    lf, ours, threshold, _, _, _ = both_sides
    for mode in ("auto", "always", "never"):
        assert len(ours[mode]) == len(lf[mode]) == N_EVAL
        same = 0
        for a, b in zip(lf[mode], ours[mode]):
            assert a["prompt"] == b["prompt"]  # byte-identical prompt (images expanded, system, slots)
            assert a["label"] == b["label"]
            assert abs(a["think_prob"] - b["think_prob"]) <= 1e-3, (mode, a["think_prob"], b["think_prob"])
            same += a["predict"] == b["predict"]
        assert same >= 0.95 * N_EVAL, (mode, same)
    # the decision on vLLM: always starts with the tag, never never spells it, auto is one of the two per post
    assert all(r["predict"].startswith("<think>") for r in ours["always"])
    assert not any("<think>" in r["predict"] for r in ours["never"])
    thinks = [r["think_prob"] >= threshold for r in ours["auto"]]
    assert 0 < sum(thinks) < N_EVAL
    for t, a, al, nv in zip(thinks, ours["auto"], ours["always"], ours["never"]):
        assert a["predict"] == (al["predict"] if t else nv["predict"])


def test_dyncot_eval_with_the_frontier_and_per_post_scores(both_sides, tmp_path):
    """--modes auto,always,never then dyncot-eval with the frontier works on dyncot-predict's files, and the per-post
    scores equal LLaMA-Factory's on every post whose prediction agrees (the same parsing and metrics)."""
    from dyncot_plugin.cot_format import parse_output
    from dyncot_plugin.tasks.mmkp.metrics import normalise_ks, post_outcomes, post_scores
    from dyncot_plugin.tasks.mmkp.normalize import label_keyphrases, split_keyphrases_cmkp

    lf, ours, threshold, vrecipe, _, _ = both_sides
    folder = vrecipe.parent / "pred_vllm"
    out = tmp_path / "eval.json"
    proc = subprocess.run([str(Path(sys.executable).with_name("dyncot-eval")), "mmkp", *[f"--predictions={m}={folder / m / 'generated_predictions.jsonl'}"
                                                    for m in ("auto", "always", "never")],
                           "--output", str(out), "--no-plot", "--threshold", str(threshold)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    frontier = result["frontier"]
    assert frontier[0]["think_rate"] == 0 and frontier[-1]["think_rate"] == 1
    ks = normalise_ks((1, 3, 5, "M"))
    for mode in ("auto", "always", "never"):
        golds = [label_keyphrases(r["label"]) for r in lf[mode]]
        scores = {}
        for side, rows_ in (("lf", lf[mode]), ("vllm", ours[mode])):
            preds = [split_keyphrases_cmkp(parse_output(r["predict"]).answer) for r in rows_]
            scores[side] = [post_scores(o[0], ks) for o in post_outcomes(preds, golds)]
        for a, b, x, y in zip(lf[mode], ours[mode], scores["lf"], scores["vllm"]):
            if a["predict"] == b["predict"]:
                assert x == y


def test_killed_run_resumes_to_the_same_files(both_sides, vllm_python, tmp_path):
    _, ours, _, vrecipe, _, _ = both_sides
    out = tmp_path / "resumed"
    args = predict_cmd(vllm_python, vrecipe, f"output_dir={out}", "--modes", "auto,always,never", "--chunk-size", "4")
    proc = subprocess.Popen(args, cwd=tmp_path, env=predict_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    partial = out / "never" / "generated_predictions.jsonl.partial"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_text().count("\n") >= 4:  # the first chunk is committed
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = partial.read_text().count("\n")
    assert 4 <= done < N_EVAL
    again = subprocess.run(args, cwd=tmp_path, env=predict_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming after {done} of {N_EVAL} posts" in again.stderr
    for mode in ("auto", "always", "never"):
        assert rows(out / mode / "generated_predictions.jsonl") == ours[mode]
        assert not (out / mode / "generated_predictions.jsonl.partial").exists()


@pytest.mark.parametrize("case", ["bad_key", "missing_image", "no_prompt"])
def test_bad_input_is_one_error_line(case, trained, vllm_python, tmp_path):
    import yaml

    model, data, work, recipe = trained
    recipe = {**recipe, "output_dir": str(tmp_path / "out")}
    expected = {"bad_key": "dyncot_thnk", "missing_image": "missing.png", "no_prompt": "row 1"}[case]
    if case == "bad_key":
        recipe["dyncot_thnk"] = "never"
        recipe.pop("dyncot_think")
    else:
        bad = tmp_path / "data"
        shutil.copytree(data, bad)
        rows_ = json.loads((bad / "toy_eval.json").read_text())
        if case == "missing_image":
            rows_[3]["images"] = ["missing.png"]
        else:
            rows_[1]["messages"] = []
        (bad / "toy_eval.json").write_text(json.dumps(rows_))
        recipe["dataset_dir"] = str(bad)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run(predict_cmd(vllm_python, path), cwd=tmp_path, env=predict_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[dyncot-plugin] error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------- a LoRA adapter
N_LORA = 8


@pytest.fixture(scope="module")
def lora_sides(qwen2vl_lora_adapter, vllm_python, tmp_path_factory):
    """The LoRA adapter (trained by llamafactory-cli, saved with threshold 0.0) predicted by LLaMA-Factory in
    always, never and auto (its prediction run takes the recipe's threshold: 0.0 given), and by dyncot-predict in the
    three modes from one engine load, its recipe giving no threshold: the adapter's dyncot_think.json decides."""
    lora = qwen2vl_lora_adapter
    work = tmp_path_factory.mktemp("lora_predict")
    recipe = tiny_sft_config(lora["base"], lora["data"], None, work / "pred_vllm", do_train=False, do_predict=True,
                             predict_with_generate=True, eval_dataset="toy_eval", max_new_tokens=16, do_sample=False,
                             per_device_eval_batch_size=8, finetuning_type="lora", adapter_name_or_path=lora["adapter"],
                             dyncot_think="auto")
    _drop_training_keys(recipe)
    lf = {}
    for mode in ("always", "never", "auto"):
        cfg = {**recipe, "dyncot_think": mode, "dyncot_think_threshold": 0.0, "output_dir": str(work / f"lf_{mode}")}
        run_llamafactory("train", cfg, workdir=work, config_name=f"lf_lora_{mode}.yaml")
        lf[mode] = rows(work / f"lf_{mode}" / "generated_predictions.jsonl")
    proc, ours = run_predict(vllm_python, recipe, work / "vllm_lora.yaml", ("auto", "always", "never"))
    return lf, ours, proc, work


def _hf_think_probs(lora: dict[str, str], rows_: list[dict], tag_id: int, n: int = 2) -> tuple[list, list]:
    """P(tag | prompt) of the first ``n`` posts by transformers: the base model alone, then with the adapter (PEFT)."""
    import re

    import torch
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    data = json.loads(Path(lora["data"], "toy_eval.json").read_text(encoding="utf-8"))
    processor = AutoProcessor.from_pretrained(lora["base"])
    model = AutoModelForImageTextToText.from_pretrained(lora["base"], dtype=torch.float32).eval()

    def probs(m):
        out = []
        for row, post in list(zip(rows_, data))[:n]:
            text = re.sub(r"(<\|image_pad\|>)+", "<|image_pad|>", row["prompt"])  # the processor expands it again
            inputs = processor(text=[text], images=[Image.open(post["images"][0]).convert("RGB")], return_tensors="pt")
            assert inputs["input_ids"].shape[1] == len(processor.tokenizer(row["prompt"])["input_ids"])
            with torch.no_grad():
                out.append(torch.softmax(m(**inputs).logits[0, -1].float(), -1)[tag_id].item())
        return out

    base = probs(model)
    return base, probs(PeftModel.from_pretrained(model, lora["adapter"]).eval())


def test_lora_adapter_parity_with_llamafactory_at_the_adapters_threshold(lora_sides, qwen2vl_lora_adapter):
    lf, ours, proc, work = lora_sides
    adapter = qwen2vl_lora_adapter["adapter"]
    assert f"threshold 0.0 (from {adapter}/dyncot_think.json); LoRA adapter {adapter}" in proc.stderr
    for mode in ("auto", "always", "never"):
        assert len(ours[mode]) == len(lf[mode]) == N_LORA
        same = 0
        for a, b in zip(lf[mode], ours[mode]):
            assert a["prompt"] == b["prompt"] and a["label"] == b["label"]
            assert abs(a["think_prob"] - b["think_prob"]) <= 1e-3, (mode, a["think_prob"], b["think_prob"])
            same += a["predict"] == b["predict"]
        assert same >= 0.95 * N_LORA, (mode, same)
    assert all(r["predict"].startswith("<think>") for r in ours["always"])
    assert not any("<think>" in r["predict"] for r in ours["never"])
    # the adapter's threshold 0.0: auto thinks on every post, exactly as always ...
    assert [r["predict"] for r in ours["auto"]] == [r["predict"] for r in ours["always"]]
    # ... where the model's default 0.5 would not have (so the test fails if the adapter's file were ignored)
    assert any(r["think_prob"] < 0.5 for r in ours["auto"])
    settings = json.loads((work / "pred_vllm" / "auto" / "dyncot_think.json").read_text())
    assert (settings["threshold"], settings["threshold_from"], settings["adapter"]) == (
        0.0, f"{adapter}/dyncot_think.json", adapter)
    # vLLM ran the adapter (not only the base model): its think_prob is the adapter's by transformers + PEFT, and the
    # base model's differs by more than the bound (a run that dropped the LoRARequest fails here). Relative: the
    # probabilities are about 1e-3 (an absolute 1e-3 bound could not tell the two apart); vLLM and PEFT agree to ~1e-9
    (tag_id,) = settings["tag_ids"]
    base, with_adapter = _hf_think_probs(qwen2vl_lora_adapter, ours["auto"], tag_id)
    for b, a, row in zip(base, with_adapter, ours["auto"]):
        bound = 1e-3 * row["think_prob"]
        assert abs(a - row["think_prob"]) <= bound and abs(b - row["think_prob"]) > 10 * bound, (b, a, row["think_prob"])


def test_an_adapter_carrying_embed_tokens_is_refused_before_the_engine_starts(qwen2vl_lora_adapter, vllm_python,
                                                                               tmp_path):
    import yaml

    lora = qwen2vl_lora_adapter
    adapter = tmp_path / "adapter"
    shutil.copytree(lora["adapter"], adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": ["embed_tokens"]}))
    recipe = {"model_name_or_path": lora["base"], "adapter_name_or_path": str(adapter), "template": "qwen2_vl",
              "dataset_dir": lora["data"], "eval_dataset": "toy_eval", "output_dir": str(tmp_path / "out"),
              "stage": "sft", "do_predict": True, "predict_with_generate": True, "finetuning_type": "lora"}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run(predict_cmd(vllm_python, path), cwd=tmp_path, env=predict_env(), capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[dyncot-plugin] error:")]
    assert len(errors) == 1 and "modules_to_save ['embed_tokens']" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "engine ready" not in proc.stderr and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def server(dyncot_server):
    """The session's ``dyncot-serve --template qwen2_vl`` (a real vLLM OpenAI-compatible server on loopback) of a tiny
    Qwen2-VL with Qwen's real vocabulary, where ``<think>`` is three tokens: the multi-token look-ahead and the
    text-level ban are exercised; it also serves a LoRA adapter (PEFT's own files, random B, saved with threshold 0.0) as
    ``dyn`` (``-- --lora-modules dyn=PATH``). (openai client, model path, base URL, server log)."""
    served = dyncot_server(3)
    return served.client(), served.model, served.base, served.log


LORA_NAME = "dyn"
POSTS = ["Post: Sunset at the beach with friends #summer\nGive keyphrases.",
         "Post: Morning coffee and a good book\nGive keyphrases.",
         "Post: What a comeback in the game last night #nba\nGive keyphrases."]


def _chat(client, model, post, **extra):
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": post}],
                                           max_tokens=24, temperature=0.0, extra_body=extra or None)
    return reply.choices[0].message


def test_server_enable_thinking_and_the_reasoning_parser(server):
    client, model, _, _ = server
    for post in POSTS:
        off = _chat(client, model, post, chat_template_kwargs={"enable_thinking": False})
        assert "<think>" not in (off.content or "") and getattr(off, "reasoning_content", None) is None
        on = _chat(client, model, post, chat_template_kwargs={"enable_thinking": True})
        assert on.reasoning_content is not None and on.reasoning_content == on.model_extra.get("reasoning")
        assert not on.reasoning_content.startswith("<think>") and "<answer>" not in (on.content or "")
        # an explicit vllm_xargs mode wins over enable_thinking
        forced = _chat(client, model, post, chat_template_kwargs={"enable_thinking": True},
                       vllm_xargs={"dyncot_think": "never"})
        assert forced.content == off.content and getattr(forced, "reasoning_content", None) is None
    # streaming: the deltas add up to the non-streamed reasoning and content, in vLLM's `reasoning` and in the
    # `reasoning_content` the middleware adds to every delta that has it
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": POSTS[0]}],
                                            max_tokens=24, temperature=0.0, stream=True,
                                            extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    reasoning, reasoning_content, content, deltas = "", "", "", 0
    for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is not None:
            extra = delta.model_extra or {}
            assert extra.get("reasoning_content") == extra.get("reasoning")
            deltas += extra.get("reasoning") is not None
            reasoning += extra.get("reasoning") or ""
            reasoning_content += extra.get("reasoning_content") or ""
            content += delta.content or ""
    on = _chat(client, model, POSTS[0], chat_template_kwargs={"enable_thinking": True})
    assert deltas > 1 and on.reasoning_content
    assert (reasoning, reasoning_content, content) == (on.reasoning_content, on.reasoning_content, on.content or "")


def test_server_default_decision_follows_think_prob_and_threshold(server):
    """auto (the default): think iff P(whole tag | prompt) >= the request's threshold (the middleware's look-ahead
    on the 3-token tag)."""
    import math

    client, model, _, _ = server
    for post in POSTS:
        probe = client.chat.completions.create(model=model, messages=[{"role": "user", "content": post}],
                                               max_tokens=3, temperature=0.0, logprobs=True,  # <th ink >
                                               extra_body={"vllm_xargs": {"dyncot_think": "always"}})
        tokens = probe.choices[0].logprobs.content
        p = math.exp(sum(t.logprob for t in tokens))
        assert "".join(t.token for t in tokens) == "<think>"
        below = _chat(client, model, post, vllm_xargs={"dyncot_think_threshold": max(p - 0.02, 0.0)})
        above = _chat(client, model, post, vllm_xargs={"dyncot_think_threshold": p + 0.02})
        assert below.reasoning_content is not None
        assert getattr(above, "reasoning_content", None) is None and "<think>" not in (above.content or "")


def test_server_template_prompts_are_llamafactorys(server):
    """--template qwen2_vl: the prompt ids vLLM builds for a chat (its /tokenize endpoint runs the chat template and
    the image processor as a chat completion does) equal ``templates``' own encoding of the same message, which
    tests/test_serve_templates.py ties to LLaMA-Factory: text only, an image part before the text, and
    LLaMA-Factory's ``<image>`` mark in the text with the image part after it; a chat completion with the image
    prefills exactly as many tokens."""
    import base64
    import io
    import urllib.request

    from PIL import Image
    from transformers import AutoProcessor

    from dyncot_plugin.serve import templates as T

    client, model, base, log = server
    assert "prompts use LLaMA-Factory's qwen2_vl template: " in log.read_text(errors="replace")
    processor = AutoProcessor.from_pretrained(model)
    template = T.get_template("qwen2_vl")
    image = Image.new("RGB", (56, 84))  # inside LLaMA-Factory's default pixel range, on Qwen-VL's 28-pixel grid
    image.putdata([((x * 9) % 256, (y * 5) % 256, (x * y) % 256) for y in range(84) for x in range(56)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    post = POSTS[0]

    def served(content) -> list[int]:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}).encode()
        request = urllib.request.Request(f"{base}/tokenize", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())["tokens"]

    def ours(text: str, images: list) -> list[int]:
        # LLaMA-Factory's default image_max_pixels / image_min_pixels
        pre = [T.preprocess_image(i, template.mm_plugin, 768 * 768, 32 * 32) for i in images]
        messages = T.expand_images(template, [{"role": "user", "content": text}, {"role": "assistant", "content": ""}],
                                   T.image_seqlens(processor.image_processor, pre))
        return T.encode_oneturn(template, processor.tokenizer, messages)[0]

    assert served(post) == ours(post, [])
    with_image = ours("<image>" + post, [image])
    assert with_image.count(processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")) > 1
    image_part = {"type": "image_url", "image_url": {"url": url}}
    assert served([image_part, {"type": "text", "text": post}]) == with_image
    assert served([{"type": "text", "text": "<image>" + post}, image_part]) == with_image
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
        {"type": "text", "text": "<image>" + post}, image_part]}], max_tokens=2, temperature=0.0,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert reply.usage.prompt_tokens == len(with_image)


def _probe(client, model, post) -> float:
    """P(whole <think> tag | prompt) as the middleware's look-ahead measures it: the tag forced, raw logprobs."""
    import math

    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": post}], max_tokens=3,
                                           temperature=0.0, logprobs=True,
                                           extra_body={"vllm_xargs": {"dyncot_think": "always"}})
    return math.exp(sum(t.logprob for t in reply.choices[0].logprobs.content))


def test_server_a_request_naming_the_adapter_uses_its_threshold_and_its_look_ahead(server):
    """``model: dyn`` (--lora-modules): the adapter's dyncot_think.json (threshold 0.0) makes auto think on every
    post, where the base model at its default 0.5 does not; and the look-ahead runs on the adapter: at a threshold
    between the base's and the adapter's think_prob, the decision follows the adapter's."""
    import math

    client, model, _, log = server
    text = log.read_text(errors="replace")
    assert f"LoRA adapter {LORA_NAME} (" in text and "): threshold 0.0 (from " in text
    for post in POSTS:
        base, dyn = _probe(client, model, post), _probe(client, LORA_NAME, post)
        assert dyn < 0.5 and abs(math.log(dyn / base)) > 0.1, (base, dyn)  # the adapter is applied, and 0.5 would not think
        assert getattr(_chat(client, LORA_NAME, post), "reasoning_content", None) is not None  # the adapter's 0.0
        assert getattr(_chat(client, model, post), "reasoning_content", None) is None  # the base: 0.5
        between = math.sqrt(base * dyn)
        reply = _chat(client, LORA_NAME, post, vllm_xargs={"dyncot_think_threshold": between})
        assert (getattr(reply, "reasoning_content", None) is not None) == (dyn >= between), (base, dyn)


# ------------------------------------------------------------------ never on a model that wants to think (issue 24)
COT_LORA_NAME = "cot"  # conftest.dyncot_server serves cot_lora_adapter's adapter under this name


def test_dyncot_predict_holds_never_on_a_model_that_opens_every_reply_with_the_tag(cot_lora_adapter, vllm_python,
                                                                                   tmp_path):
    """Acceptance: dyncot-predict (vLLM) of the cot-trained LoRA adapter (Qwen's real vocabulary, ``<think>`` three
    tokens), whose replies left alone (``greedy``) open with the tag on at least 90 % of the 16 posts: with ``never``
    no reply breaks never's property (README "Thinking at inference"), and ``auto`` at the adapter's saved threshold
    (0.5, above every post's think_prob) writes never's replies row for row. Same model, same checks as the
    prediction-run test in tests/test_think_decision.py."""
    from dyncot_plugin.testing.no_think import violates

    lora = cot_lora_adapter()
    recipe = tiny_sft_config(lora["base"], lora["data"], None, tmp_path / "pred", do_train=False, do_predict=True,
                             predict_with_generate=True, eval_dataset="toy", max_new_tokens=24, do_sample=False,
                             per_device_eval_batch_size=4, finetuning_type="lora",
                             adapter_name_or_path=lora["adapter"])
    _drop_training_keys(recipe)
    _, out = run_predict(vllm_python, recipe, tmp_path / "recipe.yaml", ("greedy", "never", "auto"))
    assert all(len(v) == 16 for v in out.values())
    opens = [r["predict"].startswith("<think>") for r in out["greedy"]]
    assert sum(opens) >= 0.9 * 16, [r["predict"] for r in out["greedy"]]
    assert not [r["predict"] for r in out["never"] if violates(r["predict"])]
    probs = [r["think_prob"] for r in out["never"]]
    assert probs == [r["think_prob"] for r in out["greedy"]] == [r["think_prob"] for r in out["auto"]]
    settings = json.loads((tmp_path / "pred" / "auto" / "dyncot_think.json").read_text())
    assert settings["threshold"] == 0.5 and settings["adapter"] == lora["adapter"] and max(probs) < 0.5
    assert [r["predict"] for r in out["auto"]] == [r["predict"] for r in out["never"]]


def test_server_holds_never_on_a_model_that_opens_every_reply_with_the_tag(server, cot_lora_adapter):
    """Acceptance: dyncot-serve (the shared 3-token server, ``model: cot``: the adapter above), the 16 image posts
    as chat completions (LLaMA-Factory's ``<image>`` mark, the image part after it): left alone (``greedy``) at least
    90 % of the replies open a think block; with ``never`` none breaks never's property, in its content or as a
    reasoning part; ``auto`` at the adapter's saved threshold (0.5, above every post's tag probability as the
    look-ahead measures it) answers exactly as ``never``."""
    import base64

    from dyncot_plugin.testing.no_think import violates

    client, _, _, _ = server
    posts = json.loads((Path(cot_lora_adapter()["data"]) / "toy.json").read_text(encoding="utf-8"))
    assert len(posts) == 16
    opened, probs = 0, []
    for post in posts:
        image = base64.b64encode(Path(post["images"][0]).read_bytes()).decode()
        messages = [{"role": "user", "content": [
            {"type": "text", "text": post["messages"][0]["content"]},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]}]

        def reply(messages=messages, **xargs):
            return client.chat.completions.create(model=COT_LORA_NAME, messages=messages, max_tokens=24,
                                                  temperature=0.0, extra_body={"vllm_xargs": xargs} if xargs else None)

        greedy = reply(dyncot_think="greedy").choices[0].message
        opened += getattr(greedy, "reasoning_content", None) is not None
        never = reply(dyncot_think="never").choices[0].message
        assert getattr(never, "reasoning_content", None) is None and not violates(never.content or ""), never
        probe = client.chat.completions.create(model=COT_LORA_NAME, messages=messages, max_tokens=3, temperature=0.0,
                                               logprobs=True, extra_body={"vllm_xargs": {"dyncot_think": "always"}})
        probs.append(math.exp(sum(t.logprob for t in probe.choices[0].logprobs.content)))
        auto = reply().choices[0].message
        assert (auto.content, getattr(auto, "reasoning_content", None)) == (never.content, None)
    assert opened >= 0.9 * 16 and max(probs) < 0.5, (opened, probs)
