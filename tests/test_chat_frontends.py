"""LLaMA-Factory's own front ends (``chat``, ``api``, ``webchat``, Hugging Face engine) honour a recipe's
``dyncot_think`` and threshold for every reply, ignore training-only keys, refuse other backends by name, and stay
vanilla without ``dyncot_*`` keys.

One tiny Qwen2-VL with Qwen's real vocabulary (``<think>`` is three tokens), trained with ``cot`` so that, left alone,
it opens replies with the tag (the shared ``cot_real_vocab_model`` fixture); ``never``'s replies are held to the
property of README "Thinking at inference", not only to the literal tag. The engines run in this process through ``ChatModel`` (the class all three front ends
build) and, once each, through the real ``llamafactory-cli chat`` and ``api`` commands.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from dyncot_plugin.testing.lf_runner import chat_cli_ended, llamafactory_cli, make_image, offline_env, run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.no_think import violates

pytestmark = pytest.mark.slow

THINK = "<think>"
POSTS = ["a morning run by the river #", "new phone, who dis", "the match tonight was unreal",
         "coffee first, then the world", "rainy day reading list", "finally finished the marathon"]
GEN = dict(do_sample=False, max_new_tokens=12)


@pytest.fixture(scope="module")
def model_dir(cot_chat_model) -> Path:
    """The cot-trained tiny Qwen2-VL (real vocabulary) of ``conftest.cot_chat_model``; its data in ``../data``."""
    assert json.loads((cot_chat_model / "dyncot_think.json").read_text())["threshold"] == 0.5
    return cot_chat_model


def _recipe(model_dir: Path, **keys) -> dict:
    return {"model_name_or_path": str(model_dir), "template": "qwen2_vl", "infer_backend": "huggingface",
            "do_sample": False, **keys}


def _engine(model_dir: Path, **keys):
    from llamafactory.chat import ChatModel

    return ChatModel(_recipe(model_dir, **keys))


@contextmanager
def _decision_log():
    """The engine's per-reply decision lines (logged at DEBUG: ``LLAMAFACTORY_VERBOSITY=DEBUG``): think_prob each."""
    probs: list[float] = []
    handler = logging.Handler()
    handler.emit = lambda record: probs.extend(
        float(m.group(1)) for m in [re.search(r"think_prob ([0-9.e-]+)", record.getMessage())] if m)
    log = logging.getLogger("llamafactory.dyncot_plugin.chat")
    level = log.level
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        yield probs
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _replies(chat_model, stream: bool = False) -> list[str]:
    out = []
    for post in POSTS:
        messages = [{"role": "user", "content": post}]
        if stream:
            out.append("".join(chat_model.stream_chat(messages, **GEN)))
        else:
            out.append(chat_model.chat(messages, **GEN)[0].response_text)
    return out


def _think_probs(model_dir: Path) -> list[float]:
    """P(whole tag | prompt) per post, measured on a vanilla engine's own prompt with a greedy ThinkControl."""
    from llamafactory.chat.hf_engine import HuggingfaceEngine

    from dyncot_plugin.train.generation import ThinkControl, generate_with_think

    engine = _engine(model_dir).engine
    probs = []
    for post in POSTS:
        kwargs, _ = HuggingfaceEngine._process_args(engine.model, engine.tokenizer, engine.processor, engine.template,
                                                    engine.generating_args, [{"role": "user", "content": post}])
        control = ThinkControl.for_model("greedy", engine.tokenizer, 0.5, engine.model)
        generate_with_think(engine.model, {"input_ids": kwargs.pop("inputs"), **kwargs}, control, max_new_tokens=1)
        probs.append(float(control.think_prob[0]))
    return probs


@pytest.fixture(scope="module")
def replies(model_dir) -> dict:
    """Every mode's replies to the same posts, non-streamed and streamed; the posts' think_prob."""
    from dyncot_plugin import config as dyncot_config

    probs = _think_probs(model_dir)
    ordered = sorted(probs)  # a threshold in the widest gap between two posts: no post sits on it
    gap = max(range(1, len(ordered) - 2), key=lambda i: ordered[i + 1] - ordered[i])
    middle = (ordered[gap] + ordered[gap + 1]) / 2
    runs = {"think_prob": probs, "middle": middle}
    for name, keys in (("vanilla", {}), ("never", {"dyncot_think": "never"}), ("always", {"dyncot_think": "always"}),
                       ("auto_mid", {"dyncot_think": "auto", "dyncot_think_threshold": middle}),
                       ("auto_0", {"dyncot_think": "auto", "dyncot_think_threshold": 0.0}),
                       ("auto_1.5", {"dyncot_think_threshold": 1.5}),
                       ("training_keys", {"dyncot_think": "never", "dyncot_strategy": "dynamic", "dyncot_gamma": 0.3,
                                          "dyncot_target_cot_ratio": 0.4, "dyncot_eval_samples": 8})):
        chat_model = _engine(model_dir, **keys)
        assert (dyncot_config.get_current() is None) == (name == "vanilla")
        assert hasattr(chat_model.engine.model.generate, "__dyncot_think__") == (name != "vanilla")
        with _decision_log() as logged:
            runs[name] = (_replies(chat_model), _replies(chat_model, stream=True))
            # a streamed reply's generate thread logs right after its last token reached the reader: wait for it
            deadline = time.time() + 30
            while name != "vanilla" and len(logged) < 2 * len(POSTS) and time.time() < deadline:
                time.sleep(0.05)
        runs[f"{name}_logged"] = logged
    return runs


@pytest.mark.low_end
def test_never_always_and_auto_follow_the_recipe_in_every_reply(replies):
    vanilla, never, always = replies["vanilla"][0], replies["never"][0], replies["always"][0]
    assert sum(r.startswith(THINK) for r in vanilla) >= 3  # left alone, the cot-trained model thinks
    assert not any(violates(r) for r in never), never  # never's property, not only the literal tag
    assert all(r.startswith(THINK) for r in always)
    probs, middle = replies["think_prob"], replies["middle"]
    thinks = [p >= middle for p in probs]
    assert 0 < sum(thinks) < len(probs)
    assert replies["auto_mid"][0] == [(a if t else n) for a, n, t in zip(always, never, thinks)]
    # each reply's think_prob (the engine's debug line) is the one measured apart, non-streamed and streamed
    assert replies["auto_mid_logged"] == pytest.approx(probs * 2, rel=1e-6, abs=0)
    assert replies["vanilla_logged"] == []
    assert replies["auto_0"][0] == always and replies["auto_1.5"][0] == never
    # streamed replies (chat, webchat, api with stream) are the same texts
    for name in ("vanilla", "never", "always", "auto_mid"):
        assert replies[name][1] == replies[name][0], name


def test_training_only_keys_are_ignored(replies):
    assert replies["training_keys"] == replies["never"]


def test_the_threshold_defaults_to_the_models_saved_one(model_dir, replies, tmp_path):
    saved = tmp_path / "model"
    shutil.copytree(model_dir, saved)
    settings = json.loads((saved / "dyncot_think.json").read_text())
    (saved / "dyncot_think.json").write_text(json.dumps({**settings, "threshold": replies["middle"]}))
    assert _replies(_engine(saved, dyncot_think="auto")) == replies["auto_mid"][0]
    # the recipe's own threshold wins over the saved one
    assert _replies(_engine(saved, dyncot_think_threshold=0.0)) == replies["always"][0]


@pytest.mark.parametrize("args", [
    {"infer_backend": "vllm"}, ["--infer_backend", "vllm"], ["--infer-backend", "vllm"], ["--infer_backend=sglang"],
    ["--infer-back", "vllm"], ["--model_name_or_path", "m", "--infer_b=vllm"],
])
def test_every_spelling_of_another_backend_is_refused(args):
    from dyncot_plugin.chat import check_backend
    from dyncot_plugin.config import DynCotConfigError

    with pytest.raises(DynCotConfigError, match="cannot honour `infer_backend: (vllm|sglang)`"):
        check_backend(args)
    check_backend(["--infer-backend", "huggingface", "--infer_dtype", "auto"])  # and the Hugging Face one passes
    check_backend({"model_name_or_path": "m"})


def test_a_backend_that_cannot_honour_the_decision_is_refused_by_name(model_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _engine(model_dir, infer_backend="vllm", dyncot_think="never")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "[dyncot-plugin] error: dyncot-plugin cannot honour `infer_backend: vllm`" in err and "dyncot-serve" in err


def _write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_llamafactory_cli_chat_with_never(model_dir, replies, tmp_path):
    recipe = _write_recipe(tmp_path / "chat.yaml", _recipe(model_dir, dyncot_think="never", max_new_tokens=12))
    # `clear` between posts: the CLI keeps the conversation, and the replies compared were each a first turn
    stdin = "\nclear\n".join(POSTS[:3]) + "\nexit\n"
    proc = subprocess.run([llamafactory_cli(), "chat", str(recipe)], input=stdin, capture_output=True, text=True,
                          env=offline_env(), timeout=600)
    assert chat_cli_ended(proc.returncode, proc.stdout, 3), proc.stderr[-3000:]
    assert "[dyncot-plugin] active" in proc.stderr
    assert "dyncot_think=never, threshold 0.5 (from " in proc.stdout + proc.stderr
    answers = [chunk.split("\n\n")[0].strip() for chunk in proc.stdout.split("Assistant: ")[1:]]
    assert answers == [r.strip() for r in replies["never"][0][:3]]
    assert not any(violates(a) for a in answers)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _api_server(recipe: Path, tmp_path: Path):
    """``llamafactory-cli api RECIPE`` on a free loopback port (log in ``tmp_path/api.log``): an OpenAI client of it,
    the server stopped on exit."""
    from openai import OpenAI

    port = _free_port()
    env = {**offline_env(), "API_HOST": "127.0.0.1", "API_PORT": str(port)}
    with open(tmp_path / "api.log", "w") as log:
        server = subprocess.Popen([llamafactory_cli(), "api", str(recipe)], stdout=log, stderr=subprocess.STDOUT,
                                  env=env)
        try:
            deadline = time.time() + 300
            while True:
                assert server.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                    break
                except OSError:
                    assert time.time() < deadline, "api server did not start"
                    time.sleep(1)
            yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        finally:
            server.terminate()
            server.wait(timeout=60)


def test_llamafactory_cli_api_with_never(model_dir, replies, tmp_path):
    recipe = _write_recipe(tmp_path / "api.yaml", _recipe(model_dir, dyncot_think="never"))
    with _api_server(recipe, tmp_path) as client:
        image = base64.b64encode(Path(make_image(tmp_path / "post.png", seed=3)).read_bytes()).decode()
        texts = []
        for i, post in enumerate(POSTS[:3]):
            content = [{"type": "text", "text": post}]
            if i == 2:  # an image post, as LLaMA-Factory's API takes it. The API puts `<image>` where the item sits in
                # `content`; ChatModel.chat(images=...) puts it before the text: the image goes first so that both
                # prompts are the same tokens (text first, the api's prompt differs from the in-process one in
                # vanilla LLaMA-Factory too, pixel_values and image_grid_thw being equal)
                content.insert(0, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}})
            reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}],
                                                   temperature=0, max_tokens=12)
            texts.append(reply.choices[0].message.content)
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": POSTS[0]}],
                                                temperature=0, max_tokens=12, stream=True)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert texts[:2] == replies["never"][0][:2] and streamed == replies["never"][0][0]
    assert not any(violates(t) for t in texts + [streamed])
    # the image post as the API got it (base64) is the reply the engine gives the same image from its file, and the
    # image reached the model: the same text without it gets another reply
    in_process = _engine(model_dir, dyncot_think="never").chat([{"role": "user", "content": POSTS[2]}],
                                                               images=[str(tmp_path / "post.png")], **GEN)
    assert texts[2] == in_process[0].response_text != replies["never"][0][2]


def test_webchat_builds_its_engine_from_the_recipe(model_dir, replies, tmp_path, monkeypatch):
    """``llamafactory-cli webchat recipe.yaml`` builds ``WebChatModel(lazy_init=False)``, which reads the command
    line: the same construction here, then the reply the web UI streams."""
    from llamafactory.webui.engine import Engine

    recipe = _write_recipe(tmp_path / "web.yaml", _recipe(model_dir, dyncot_think="never"))
    monkeypatch.setattr(sys, "argv", ["llamafactory-cli", str(recipe)])
    monkeypatch.chdir(tmp_path)  # the web UI keeps its llamaboard_cache/ in the working directory
    engine = Engine(pure_chat=True)
    chat_model = engine.chatter
    assert chat_model.loaded
    assert _replies(chat_model, stream=True)[:2] == replies["never"][0][:2]


# the error also ends LLaMA-Factory's generation thread, as it should: pytest reports that thread's exception
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_streamed_reply_whose_generation_raises_ends_with_that_error(model_dir):
    """A request whose ``max_length`` is below its prompt's length makes ``generate`` raise in LLaMA-Factory's
    generation thread: the streamed reply ends within seconds with that error (before the fix the reader waited
    forever on a stream nobody closed), and the engine serves the next request."""
    chat_model = _engine(model_dir, dyncot_think="never")
    outcome: dict = {}

    def read() -> None:
        try:
            outcome["text"] = "".join(chat_model.stream_chat([{"role": "user", "content": POSTS[0]}], max_length=2))
        except Exception as error:  # noqa: BLE001 - the error is what is checked
            outcome["error"] = error

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "the streamed reply did not end within 10 s"
    assert isinstance(outcome.get("error"), ValueError) and "max_length" in str(outcome["error"]), outcome
    assert "".join(chat_model.stream_chat([{"role": "user", "content": POSTS[1]}], **GEN)) != ""


@pytest.mark.low_end  # transformers 4.57 computes positions without mm_token_type_ids
def test_image_post_replies_equal_the_prediction_runs(model_dir, tmp_path):
    """A chat reply to an image post is the reply a ``llamafactory-cli train`` prediction run writes for the same row
    (same prompt, same M-RoPE positions: the engine gets the per-token type ids prediction runs pass to generate)."""
    data = model_dir.parent / "data"
    config = tiny_sft_config(model_dir, data, None, tmp_path / "pred", do_train=False, do_predict=True,
                             predict_with_generate=True, eval_dataset="toy", max_samples=4, max_new_tokens=12,
                             do_sample=False, per_device_eval_batch_size=1, dyncot_think="always")
    run_llamafactory("train", config, tmp_path)
    predictions = [json.loads(line) for line in (tmp_path / "pred" / "generated_predictions.jsonl").open()]
    rows = json.loads((data / "toy.json").read_text())[:4]
    chat_model = _engine(model_dir, dyncot_think="always")
    with _decision_log() as probs:
        replies = [chat_model.chat([{"role": "user", "content": row["messages"][0]["content"]}],
                                   images=row["images"], **GEN)[0].response_text for row in rows]
    assert len(predictions) == 4 and all(r.startswith(THINK) for r in replies)
    assert replies == [p["predict"] for p in predictions]
    # think_prob is a continuous function of the prompt's positions: 1-D positions on the image prompt move it
    assert probs == pytest.approx([p["think_prob"] for p in predictions], rel=1e-5, abs=0)


# ------------------------------------------------------------------ never on a model that wants to think (issue 24)
def _post_messages(post: dict) -> list[dict]:
    """A ``toy`` row's user turn without LLaMA-Factory's ``<image>`` mark: ChatModel puts the image first itself."""
    return [{"role": "user", "content": post["messages"][0]["content"].replace("<image>", "")}]


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen3_vl"])
def lora_chat(request, cot_lora_adapter, cot_real_vocab_model) -> dict:
    """A model on Qwen's real vocabulary that opens every reply with the tag when left alone, in ChatModel (the engine
    of chat, api and webchat), on its 16 image posts: Qwen2-VL (``<think>`` three tokens) the shared cot-trained LoRA
    adapter (``conftest.cot_lora_adapter``), Qwen3-VL (one token) the shared ``cot_real_vocab_model``.
    {"posts", "recipe", name: replies} for vanilla (no dyncot key), never, and auto just above every post's
    think_prob (the engine's decision line)."""
    if request.param == "qwen2_vl":
        lora = cot_lora_adapter()
        base, data = Path(lora["base"]), Path(lora["data"])
        recipe = {"adapter_name_or_path": lora["adapter"], "finetuning_type": "lora"}
    else:
        root = cot_real_vocab_model(request.param)
        base, data, recipe = root / "cot", root / "data", {"template": "qwen3_vl_nothink"}
    posts = json.loads((data / "toy.json").read_text(encoding="utf-8"))
    out = {"posts": posts, "recipe": {**_recipe(base), **recipe}}

    def replies(**keys) -> tuple[list[str], list[float]]:
        engine = _engine(base, **recipe, **keys)
        with _decision_log() as logged:
            texts = [engine.chat(_post_messages(p), images=p["images"], **GEN)[0].response_text for p in posts]
        return texts, logged

    out["vanilla"], _ = replies()
    out["never"], out["think_prob"] = replies(dyncot_think="never")
    above = max(out["think_prob"]) * (1 + 1e-7)  # the line prints 8 significant digits: above every true value
    out["auto_above"], logged = replies(dyncot_think="auto", dyncot_think_threshold=above)
    assert logged == out["think_prob"] and len(logged) == len(posts) == 16
    return out


def test_chat_holds_never_on_a_model_that_opens_every_reply_with_the_tag(lora_chat):
    """Acceptance (Qwen2-VL and Qwen3-VL): left alone at least 90 % of the replies open with the tag; with never none
    breaks never's property; auto above every post's think_prob answers exactly as never."""
    assert sum(r.startswith(THINK) for r in lora_chat["vanilla"]) >= 0.9 * 16, lora_chat["vanilla"]
    assert not [r for r in lora_chat["never"] if violates(r)]
    assert lora_chat["auto_above"] == lora_chat["never"]


def test_llamafactory_cli_api_holds_never_on_a_model_that_opens_every_reply_with_the_tag(lora_chat, tmp_path):
    """``llamafactory-cli api`` of the same adapter with ``dyncot_think: never``: the 16 image posts (image part
    first, base64) get never's in-process replies, none breaking never's property."""
    recipe = _write_recipe(tmp_path / "api.yaml", {**lora_chat["recipe"], "dyncot_think": "never"})
    with _api_server(recipe, tmp_path) as client:
        texts = []
        for post in lora_chat["posts"]:
            image = base64.b64encode(Path(post["images"][0]).read_bytes()).decode()
            content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                       {"type": "text", "text": _post_messages(post)[0]["content"]}]
            reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}],
                                                   temperature=0, max_tokens=GEN["max_new_tokens"])
            texts.append(reply.choices[0].message.content)
    assert texts == lora_chat["never"]
    assert not [t for t in texts if violates(t)]
