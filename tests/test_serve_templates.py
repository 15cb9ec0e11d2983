"""dyncot_plugin.serve.templates (the torch-free copy of LLaMA-Factory's prompt slots that dyncot-predict uses) gives
LLaMA-Factory's own token ids: every row of TEMPLATES against ``Template.encode_oneturn`` and the row's mm plugin
(``process_messages``, ``process_token_ids``): the Qwen rows on the tiny tokenizer and Qwen's real vocabulary, the
LLaVA, Gemma 3 and InternVL rows on the tiny model of their family. Fast (no model forward)."""

from __future__ import annotations

import copy

import pytest
from PIL import Image

from dyncot_plugin.serve import templates as T

MESSAGES = [
    [{"role": "user", "content": "<image>Post: sunny day at the beach\nImage: (none)"}, {"role": "assistant", "content": "beach; sun"}],
    [{"role": "user", "content": "no image here <think> odd"}, {"role": "assistant", "content": "<think>The x</think>"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "<image>c<image>"},
     {"role": "assistant", "content": ""}],
]


def _lf(template_name: str, tokenizer, default_system=None):
    from llamafactory.data.template import TEMPLATES, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    registered = TEMPLATES[template_name]
    kept = registered.default_system
    try:  # LLaMA-Factory sets default_system on its registered template, for every later call: keep it intact
        template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template_name,
                                                                           default_system=default_system))
        return copy.copy(template)
    finally:
        registered.default_system = kept


def _image(w, h, seed):
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 7 + seed) % 256, (y * 13) % 256, (x * y + seed) % 256) for y in range(h) for x in range(w)])
    return img


QWEN_ROWS = sorted(n for n, t in T.TEMPLATES.items() if t.mm_plugin in (*T.QWEN_PLUGINS, "base"))


@pytest.mark.slow  # builds the tiny models (the Qwen-vocabulary ones take ~30 s each)
@pytest.mark.parametrize("vocab", ["tiny", "qwen"])
@pytest.mark.parametrize("name", QWEN_ROWS)
def test_every_template_row_encodes_as_llamafactory(name, vocab, tiny_model_dir, real_vocab_model):
    from transformers import AutoProcessor

    model_dir = tiny_model_dir if vocab == "tiny" else real_vocab_model("qwen3_vl" if "qwen3" in name else "qwen2_vl")
    processor = AutoProcessor.from_pretrained(model_dir)
    ours_tok = AutoProcessor.from_pretrained(model_dir).tokenizer
    lf_template = _lf(name, processor.tokenizer)
    processor.image_max_pixels, processor.image_min_pixels = 64 * 64, 32 * 32
    images = [_image(90, 50, 1), _image(20, 300, 2)]
    for system in (None, "You tag posts."):
        for messages in MESSAGES:
            n_img = sum(m["content"].count("<image>") for m in messages)
            if n_img and lf_template.mm_plugin.image_token is None:
                continue
            imgs = images[:n_img]
            lf_messages = lf_template.mm_plugin.process_messages(copy.deepcopy(messages), imgs, [], [], processor)
            lf_prompt, lf_response = lf_template.encode_oneturn(processor.tokenizer, lf_messages, system)
            template = T.get_template(name)
            pre = [T.preprocess_image(i, template.mm_plugin, 64 * 64, 32 * 32) for i in imgs]
            ours = T.expand_images(template, messages, T.image_seqlens(processor.image_processor, pre))
            prompt, response = T.encode_oneturn(template, ours_tok, ours, system)
            assert (prompt, response) == (lf_prompt, lf_response), (name, system, messages)
    assert T.stop_token_ids(T.get_template(name), ours_tok)[0] == processor.tokenizer.eos_token_id


def test_default_system_override_and_truncation_match_llamafactory(tiny_model_dir):
    from llamafactory.data.processor.processor_utils import infer_seqlen
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    lf = _lf("qwen2_vl", tok, default_system="Be brief.")
    messages = MESSAGES[1]
    assert T.encode_oneturn(T.get_template("qwen2_vl", "Be brief."), tok, messages) == lf.encode_oneturn(tok, messages)
    for s in range(0, 40, 3):
        for t in range(0, 40, 5):
            for cutoff in (1, 7, 16, 33, 64):
                assert T.infer_seqlen(s, t, cutoff) == infer_seqlen(s, t, cutoff)


def test_preprocess_image_is_llamafactorys():
    from llamafactory.data.mm_plugin import get_mm_plugin

    plugin = get_mm_plugin("qwen2_vl", image_token="<|image_pad|>")
    for size in ((300, 200), (10, 900), (3000, 12), (5, 5)):
        img = _image(*size, 3)
        ours = T.preprocess_image(img, "qwen2_vl", 128 * 128, 32 * 32)
        theirs = plugin._preprocess_image(img, image_max_pixels=128 * 128, image_min_pixels=32 * 32)
        assert ours.size == theirs.size and ours.tobytes() == theirs.tobytes()


def test_unknown_template_is_refused_by_name():
    with pytest.raises(KeyError, match="'llama3' is not supported by dyncot-predict"):
        T.get_template("llama3")
    with pytest.raises(KeyError, match="'mllama' is not supported by dyncot-predict: vLLM removed Mllama"):
        T.get_template("mllama")


# ------------------------------------------------------------------ LLaVA, Gemma 3, InternVL (their tiny models)
FAMILY_ROWS = {"llava": "llava", "gemma3": "gemma3", "internvl": "intern_vl"}  # tiny family -> LLaMA-Factory template
FAMILY_MESSAGES = MESSAGES + [  # images next to line breaks (Gemma 3's image sequence opens and ends with "\n\n")
    [{"role": "user", "content": "Post:\n<image>\nkeyphrases?"}, {"role": "assistant", "content": "a; b"}],
    [{"role": "user", "content": "<image>\n\n<image> two"}, {"role": "assistant", "content": "x"}],
]
SIZES = [(90, 50), (20, 300), (160, 120)]  # non-flat images: below, across and above the pixel bounds below
PIXELS = [(64 * 64, 32 * 32), (512 * 512, 16 * 16)]


@pytest.fixture(scope="module")
def family_model(tmp_path_factory):
    from dyncot_plugin.testing.tiny_families import build_tiny_model

    built: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in built:
            built[family] = str(build_tiny_model(tmp_path_factory.mktemp(f"tiny_{family}"), family, seed=0))
        return built[family]

    return get


def _lf_processor(model_dir, max_pixels, min_pixels):
    """The processor as LLaMA-Factory's ``patch_processor`` leaves it for a recipe with these pixel bounds."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    processor.image_max_pixels, processor.image_min_pixels = max_pixels, min_pixels
    processor.image_do_pan_and_scan, processor.crop_to_patches = False, False
    return processor


def _lf_eos_ids(tokenizer):
    """``gen_kwargs["eos_token_id"]`` of LLaMA-Factory's prediction run (``train/sft/workflow.py``, inline there)."""
    extra = getattr(tokenizer, "additional_special_tokens_ids", None)
    if not isinstance(extra, list):
        extra = tokenizer.convert_tokens_to_ids([str(t) for t in getattr(tokenizer, "_extra_special_tokens", [])])
    return list(dict.fromkeys([tokenizer.eos_token_id] + [i for i in extra if i != -1]))


@pytest.mark.parametrize("family", sorted(FAMILY_ROWS))
def test_family_rows_encode_as_llamafactory(family, family_model):
    """Each row's prompt and label ids = LLaMA-Factory's (its mm plugin's process_messages, Template.encode_oneturn,
    process_token_ids) on the family's tiny model: without an image, with one and with two (non-flat, of three
    sizes, at two pixel bounds), default and given system, default_system replaced; our side uses a tokenizer and
    processor loaded as dyncot-predict loads them (without LLaMA-Factory's token fixes). The stop ids equal the
    prediction run's eos_token_id list."""
    from transformers import AutoProcessor

    name = FAMILY_ROWS[family]
    model_dir = family_model(family)
    ours_proc = AutoProcessor.from_pretrained(model_dir)
    checked = 0
    for max_pixels, min_pixels in PIXELS:
        processor = _lf_processor(model_dir, max_pixels, min_pixels)
        for default_system in (None, "Be brief."):
            lf = _lf(name, processor.tokenizer, default_system)
            template = T.get_template(name, default_system)
            for k, messages in enumerate(FAMILY_MESSAGES):
                n_img = sum(m["content"].count("<image>") for m in messages)
                images = [_image(*SIZES[(k + i) % len(SIZES)], k + i) for i in range(n_img)]
                for system in (None, "You tag posts."):
                    lf_messages = lf.mm_plugin.process_messages(copy.deepcopy(messages), images, [], [], processor)
                    lf_prompt, lf_response = lf.encode_oneturn(processor.tokenizer, lf_messages, system)
                    lf_prompt, _ = lf.mm_plugin.process_token_ids(lf_prompt, None, images, [], [],
                                                                  processor.tokenizer, processor)
                    pre = [T.preprocess_image(i, template.mm_plugin, max_pixels, min_pixels) for i in images]
                    seqlens = T.image_seqlens(ours_proc, pre, template.mm_plugin)
                    ours = T.encode_oneturn(template, ours_proc.tokenizer, T.expand_images(template, messages, seqlens),
                                            system)
                    assert ours == (lf_prompt, lf_response), (name, default_system, system, messages)
                    image_id = ours_proc.tokenizer.convert_tokens_to_ids(template.image_token)
                    assert ours[0].count(image_id) == sum(seqlens) > 0 or n_img == 0
                    checked += 1
        assert T.stop_token_ids(T.get_template(name), ours_proc.tokenizer) == _lf_eos_ids(processor.tokenizer)
    assert checked == len(PIXELS) * 2 * len(FAMILY_MESSAGES) * 2


@pytest.mark.parametrize("family", sorted(FAMILY_ROWS))
def test_family_rows_engine_form(family, family_model):
    """What dyncot-predict hands vLLM for an image (one engine_image per image, which vLLM's processor expands):
    LLaVA and Gemma 3: LLaMA-Factory's own unexpanded form (its plugin with expand_mm_tokens=False, what its vLLM
    engine sends); InternVL: the prompt ids with each <img> <IMG_CONTEXT>*n </img> span as one <IMG_CONTEXT>, the
    target of vLLM's InternVL prompt replacement (LLaMA-Factory's unexpanded form keeps <img> and </img>)."""
    from transformers import AutoProcessor

    name = FAMILY_ROWS[family]
    model_dir = family_model(family)
    processor = _lf_processor(model_dir, 64 * 64, 32 * 32)
    tokenizer = AutoProcessor.from_pretrained(model_dir).tokenizer
    lf = _lf(name, processor.tokenizer)
    template = T.get_template(name)
    for k, messages in enumerate(FAMILY_MESSAGES):
        n_img = sum(m["content"].count("<image>") for m in messages)
        if not n_img:
            continue
        images = [_image(*SIZES[i % len(SIZES)], i) for i in range(n_img)]
        seqlens = T.image_seqlens(processor, [T.preprocess_image(i, template.mm_plugin, 64 * 64, 32 * 32)
                                              for i in images], template.mm_plugin)
        engine, _ = T.encode_oneturn(template, tokenizer, T.expand_images(template, messages, seqlens, expand=False))
        if family == "internvl":
            full, _ = T.encode_oneturn(template, tokenizer, T.expand_images(template, messages, seqlens))
            start, ctx, end = tokenizer.convert_tokens_to_ids(["<img>", "<IMG_CONTEXT>", "</img>"])
            expanded = [t for i in engine for t in ([start] + [ctx] * seqlens[0] + [end] if i == ctx else [i])]
            assert expanded == full and engine.count(ctx) == n_img
            continue
        plugin = copy.copy(lf.mm_plugin)
        plugin.expand_mm_tokens = False
        lf_prompt, _ = lf.encode_oneturn(processor.tokenizer, plugin.process_messages(copy.deepcopy(messages), images,
                                                                                      [], [], processor))
        assert engine == lf_prompt, messages


def test_preprocess_image_is_llamafactorys_for_every_plugin():
    """LLaMA-Factory resizes and converts before the image processor, the same way for LLaVA, Gemma 3 and InternVL
    (BasePlugin) and with the Qwen-VL extras for those: PIL images byte for byte, RGB and palette inputs."""
    from llamafactory.data.mm_plugin import get_mm_plugin

    plugins = {"llava": get_mm_plugin("llava", image_token="<image>"),
               "gemma3": get_mm_plugin("gemma3", image_token="<image_soft_token>"),
               "intern_vl": get_mm_plugin("intern_vl", image_token="<image>"),
               "qwen3_vl": get_mm_plugin("qwen3_vl", image_token="<|image_pad|>")}
    for name, plugin in plugins.items():
        for size in ((300, 200), (10, 900), (3000, 12), (5, 5)):
            for img in (_image(*size, 3), _image(*size, 4).convert("P")):
                ours = T.preprocess_image(img, T.TEMPLATES[{"intern_vl": "intern_vl", "qwen3_vl": "qwen3_vl_nothink"}
                                                            .get(name, name)].mm_plugin, 128 * 128, 32 * 32)
                theirs = plugin._preprocess_image(img, image_max_pixels=128 * 128, image_min_pixels=32 * 32)
                assert (ours.mode, ours.size, ours.tobytes()) == (theirs.mode, theirs.size, theirs.tobytes()), name


def _predict_cli(tmp_path, **keys):
    """dyncot-predict on a recipe with these keys (refused before anything loads: no vLLM needed)."""
    import subprocess
    import sys

    import yaml

    recipe = {"model_name_or_path": str(tmp_path / "no_model"), "template": "llava", "stage": "sft",
              "do_predict": True, "predict_with_generate": True, "eval_dataset": "x", "output_dir": str(tmp_path),
              **keys}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run([sys.executable, "-m", "dyncot_plugin.serve.predict", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[dyncot-plugin] error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def test_dyncot_predict_refuses_mllama_and_unreproduced_options(tmp_path):
    error = _predict_cli(tmp_path, template="mllama")
    assert "'mllama'" in error and "vLLM removed Mllama" in error and "0.10.2" in error
    error = _predict_cli(tmp_path, template="gemma3", image_do_pan_and_scan=True)
    assert "`image_do_pan_and_scan: true`" in error and "pan-and-scan" in error
    error = _predict_cli(tmp_path, template="intern_vl", crop_to_patches=True)
    assert "`crop_to_patches: true`" in error
    from dyncot_plugin.serve.recipe import check_recipe

    base = {"model_name_or_path": "m", "stage": "sft", "do_predict": True, "predict_with_generate": True,
            "eval_dataset": "x", "output_dir": "o", "image_do_pan_and_scan": False, "crop_to_patches": False}
    for name in ("llava", "gemma3", "intern_vl"):  # their defaults are accepted
        assert check_recipe({**base, "template": name}).template == name


# ------------------------------------------------------------------------- dyncot-serve --template (chat template)
POST = "Post: Sunset at the beach with friends #summer\nGive keyphrases."
IMAGE_PART = {"type": "image"}  # the form vLLM hands a chat template (content format "openai")


def _rendered_ids(tokenizer, jinja: str, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, chat_template=jinja, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


# (OpenAI-style chat as vLLM passes it, the same chat in LLaMA-Factory's form: system, user/assistant turns)
CHATS = [
    ([{"role": "user", "content": POST}], None, [POST]),
    ([{"role": "system", "content": "You tag posts."}, {"role": "user", "content": [{"type": "text", "text": POST}]}],
     "You tag posts.", [POST]),
    ([{"role": "system", "content": ""}, {"role": "user", "content": POST}], None, [POST]),  # empty: the default
    ([{"role": "user", "content": [IMAGE_PART, {"type": "text", "text": POST}]}], None, ["<image>" + POST]),
    ([{"role": "user", "content": [{"type": "text", "text": "<image>" + POST}, IMAGE_PART]}], None, ["<image>" + POST]),
    ([{"role": "user", "content": [{"type": "text", "text": "a "}, IMAGE_PART, {"type": "text", "text": " b"}]}],
     None, ["a <image> b"]),
    ([{"role": "user", "content": "first post"}, {"role": "assistant", "content": "beach; sun"},
      {"role": "user", "content": [IMAGE_PART, {"type": "text", "text": POST}]}], None,
     ["first post", "beach; sun", "<image>" + POST]),
]


@pytest.mark.parametrize("name", sorted(T.SERVED_TEMPLATES))
def test_served_chat_template_gives_llamafactorys_prompt_ids(name, tiny_model_dir):
    """The Jinja template dyncot-serve --template passes to vLLM, rendered and tokenised as vLLM does, gives
    LLaMA-Factory's own prompt ids (Template.encode_oneturn) on Qwen's real vocabulary and the tiny one, with the
    images left as one image token each (vLLM's processor expands it; the expansion is tested above)."""
    from transformers import AutoTokenizer

    from dyncot_plugin.testing.qwen_vocab import qwen_tokenizer

    for tokenizer in (qwen_tokenizer("qwen2_vl"), AutoTokenizer.from_pretrained(tiny_model_dir)):
        # the last: characters outside the BMP, quotes, a backslash, a new line survive the Jinja literal
        for default_system in (None, "Be brief.", 'Be brief \U0001F600 "ok" \\ é\nnow'):
            template = T.get_template(name, default_system)
            jinja = T.chat_template_jinja(template)
            lf = _lf(name, tokenizer, default_system)
            for chat, system, turns in CHATS:
                if template.image_token is None and any("<image>" in t for t in turns):
                    with pytest.raises(Exception, match="takes no images"):
                        _rendered_ids(tokenizer, jinja, chat)
                    continue
                lf_messages = [{"role": "user" if k % 2 == 0 else "assistant", "content": t}
                               for k, t in enumerate(turns + [""])]
                lf_messages = T.expand_images(template, lf_messages, [1] * sum(t.count("<image>") for t in turns))
                prompt, _ = lf.encode_oneturn(tokenizer, lf_messages, system)
                assert _rendered_ids(tokenizer, jinja, chat) == prompt, (name, chat)


def test_per_slot_tokenisation_differs_only_where_documented():
    """LLaMA-Factory tokenises slot by slot, vLLM the rendered string: on Qwen's vocabulary they differ at the
    user | assistant seam of a history's assistant turn starting with a whitespace run holding a line break (the
    header's \\n and that run are one pre-token), and nowhere else in these chats."""
    from dyncot_plugin.testing.qwen_vocab import qwen_tokenizer

    tokenizer = qwen_tokenizer("qwen2_vl")
    jinja = T.chat_template_jinja(T.TEMPLATES["qwen2_vl"])
    lf = _lf("qwen2_vl", tokenizer)
    nl, nl2 = tokenizer.encode("\n"), tokenizer.encode("\n\n")
    assert len(nl) == len(nl2) == 1
    for answer, same in (("beach", True), (" beach", True), ("  beach", True), ("\tbeach", True), ("\r\nbeach", True),
                         ("\nbeach", False), (" \nbeach", False), ("\n\nbeach", False)):
        chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": answer},
                {"role": "user", "content": "b"}]
        prompt, _ = lf.encode_oneturn(tokenizer, chat + [{"role": "assistant", "content": ""}])
        ours = _rendered_ids(tokenizer, jinja, chat)
        assert (ours == prompt) is same, answer
        if answer == "\nbeach":  # one "\n\n" where LLaMA-Factory has "\n" "\n"
            k = next(i for i, (x, y) in enumerate(zip(ours, prompt)) if x != y)
            assert ours[k] == nl2[0] and prompt[k:k + 2] == nl * 2 and ours[k + 1:] == prompt[k + 2:]


def test_served_chat_template_refuses_what_llamafactory_cannot_prompt():
    from dyncot_plugin.testing.qwen_vocab import qwen_tokenizer

    tokenizer = qwen_tokenizer("qwen2_vl")
    jinja = T.chat_template_jinja(T.TEMPLATES["qwen2_vl"])
    for chat, message in (
        ([{"role": "user", "content": "an <image> mark without an image"}], "without an image part"),
        ([{"role": "user", "content": [{"type": "text", "text": "<image><image>"}, IMAGE_PART]}], "2 <image> marks"),
        ([{"role": "assistant", "content": "a"}], "turn 0 has role assistant"),
        ([{"role": "user", "content": "a"}, {"role": "tool", "content": "x"}], "turn 1 has role tool"),
        ([{"role": "user", "content": [{"type": "video"}]}], "type video"),
        ([{"role": "system", "content": [IMAGE_PART]}, {"role": "user", "content": "a"}], "system message"),
    ):
        with pytest.raises(Exception, match=message):
            _rendered_ids(tokenizer, jinja, chat)


def test_dyncot_serve_template_option(tmp_path, monkeypatch):
    """--template writes the rendered template into a fresh temp folder and passes it to vLLM; without it a line
    says the model's own template is used; an unknown name (or both --template and --chat-template) is one error
    line and exit 2, before anything loads."""
    import subprocess
    import sys
    import tempfile

    from dyncot_plugin.serve.server import ServeError, chat_template_args

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv, note = chat_template_args("qwen2_vl", "Be brief.", [])
    path = argv[argv.index("--chat-template") + 1]
    assert path.startswith(str(tmp_path)) and path.endswith("qwen2_vl.jinja") and path in note
    assert argv[argv.index("--chat-template-content-format") + 1] == "openai"
    with open(path, encoding="utf-8") as f:
        assert f.read() == T.chat_template_jinja(T.get_template("qwen2_vl", "Be brief."))
    argv, note = chat_template_args(None, None, ["--max-model-len", "512"])
    assert argv == [] and "model's own chat template" in note
    for args, expected in (((None, "x", []), "--default-system"), (("qwen2_vl", None, ["--chat-template", "t.j"]),
                                                                      "--chat-template")):
        with pytest.raises(ServeError, match=expected):
            chat_template_args(*args)
    proc = subprocess.run([sys.executable, "-m", "dyncot_plugin.serve.server", str(tmp_path / "no_model"),
                           "--template", "llava"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[dyncot-plugin] error:")]
    assert len(errors) == 1 and "'llava'" in errors[0] and "qwen2_vl" in errors[0], proc.stderr
    assert "model's own chat template" in errors[0]  # a row dyncot-predict has, not rendered as a chat template
    assert "Traceback" not in proc.stderr
    assert set(T.SERVED_TEMPLATES) == {"qwen2_vl", "qwen3_vl_nothink", "qwen"}
    with pytest.raises(ValueError, match="'gemma3' is not rendered"):
        T.chat_template_jinja(T.get_template("gemma3"))
