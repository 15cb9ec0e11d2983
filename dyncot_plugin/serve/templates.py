"""LLaMA-Factory 0.9.5's prompts without LLaMA-Factory: template slots, ``<image>`` expansion, image preprocessing.

``dyncot-predict`` runs where vLLM is installed and LLaMA-Factory is not (their transformers pins conflict), yet its
prompts must be token for token those of a ``llamafactory-cli train`` prediction run. The ``chat_template.jinja`` a
run saves is not enough (for ``qwen2_vl`` it keeps the base model's template, and LLaMA-Factory tokenises each slot
on its own, not the rendered string), so the slots are copied here, one row per template (LLaMA-Factory's own
``register_template`` calls in ``llamafactory/data/template.py``). ``tests/test_serve_templates.py`` checks every row
against LLaMA-Factory's ``Template.encode_oneturn`` and its mm plugin, so a drifting copy fails a test.

What one row holds: the slots (``{{content}}`` filled, each slot tokenised separately with
``add_special_tokens=False``, as ``Template._convert_elements_to_ids`` does), ``default_system``, the stop words
(the first replaces the EOS token when ``replace_eos``), and the image placeholder's expansion of the mm plugin.
A template without a row is refused by name.

``dyncot-serve --template NAME`` serves with the same rows: :func:`chat_template_jinja` renders a row as a Jinja chat
template for vLLM (tested id for id against LLaMA-Factory in the same test file; where vLLM's tokenising of the
rendered string can differ from the per-slot tokenising: :mod:`dyncot_plugin.serve.server`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
QWEN_PLUGINS = ("qwen2_vl", "qwen3_vl")  # the mm plugins with a 28-pixel short side and image grids


@dataclass(frozen=True)
class PromptTemplate:
    """One LLaMA-Factory template (string slots only: every supported template has them)."""

    name: str
    user: str
    assistant: str
    system: str
    prefix: str = ""
    default_system: str = ""
    stop_words: tuple[str, ...] = ()
    replace_eos: bool = False
    efficient_eos: bool = False
    mm_plugin: str = "base"  # "qwen2_vl" (Qwen2-VL, Qwen2.5-VL), "qwen3_vl", "llava", "gemma3", "intern_vl", "base"
    image_token: str | None = None
    vision_bos: str = "<|vision_start|>"
    vision_eos: str = "<|vision_end|>"
    bos_prefix: bool = False  # format_prefix is {"bos_token"}: the tokenizer's BOS id opens turn 0 (if it has one)
    assistant_eos: bool = False  # the default assistant slot ["{{content}}", {"eos_token"}]: EOS id after a response
    system_in_user: bool = False  # Llama2Template: the system slot's text opens the first user slot's content
    engine_image: str | None = None  # what vLLM's processor expands for one image (None: vision_bos+token+vision_eos)

    @property
    def engine_image_text(self) -> str:
        """One image as vLLM's multimodal processor wants it in a prompt (the target of its prompt replacement)."""
        if self.engine_image is not None:
            return self.engine_image
        return f"{self.vision_bos}{self.image_token}{self.vision_eos}"


_CHATML_USER = "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
_CHATML_ASSISTANT = "{{content}}<|im_end|>\n"
_CHATML_SYSTEM = "<|im_start|>system\n{{content}}<|im_end|>\n"

TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        PromptTemplate("qwen2_vl", _CHATML_USER, _CHATML_ASSISTANT, _CHATML_SYSTEM,
                       default_system="You are a helpful assistant.", stop_words=("<|im_end|>",), replace_eos=True,
                       mm_plugin="qwen2_vl", image_token="<|image_pad|>"),
        PromptTemplate("qwen3_vl_nothink", _CHATML_USER, _CHATML_ASSISTANT, _CHATML_SYSTEM,
                       stop_words=("<|im_end|>",), replace_eos=True, mm_plugin="qwen3_vl",
                       image_token="<|image_pad|>"),
        PromptTemplate("qwen", _CHATML_USER, _CHATML_ASSISTANT, _CHATML_SYSTEM,
                       default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                       stop_words=("<|im_end|>",), replace_eos=True),
        # LLaVA-1.5: no assistant slot of its own (LLaMA-Factory's default: the response, then the EOS id), the
        # system slot is the bare text; LlavaPlugin: <image> -> <image> * n (n from the first processed image).
        PromptTemplate("llava", "USER: {{content}} ASSISTANT:", "{{content}}", "{{content}}",
                       default_system=("A chat between a curious user and an artificial intelligence assistant. "
                                       "The assistant gives helpful, detailed, and polite answers to the user's "
                                       "questions."),
                       assistant_eos=True, mm_plugin="llava", image_token="<image>", vision_bos="", vision_eos=""),
        # Gemma 3 (Llama2Template: the system text + "\n\n" opens the first user turn; BOS prefix);
        # Gemma3Plugin without pan-and-scan: <image> -> processor.full_image_sequence; vLLM expands the BOI token.
        PromptTemplate("gemma3", "<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n",
                       "{{content}}<end_of_turn>\n", "{{content}}\n\n", stop_words=("<end_of_turn>",),
                       replace_eos=True, bos_prefix=True, system_in_user=True, mm_plugin="gemma3",
                       image_token="<image_soft_token>", vision_bos="\n\n<start_of_image>",
                       vision_eos="<end_of_image>\n\n", engine_image="<start_of_image>"),
        # InternVL (the transformers-native -hf checkpoints): ChatML with a BOS prefix, EOS kept (<|im_end|> is an
        # extra stop word); InternVLPlugin: <image> -> <img> + <IMG_CONTEXT> * image_seq_length * patches + </img>.
        PromptTemplate("intern_vl", _CHATML_USER, _CHATML_ASSISTANT, _CHATML_SYSTEM,
                       default_system=("你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的"
                                       "多模态大语言模型。"),
                       stop_words=("<|im_end|>",), bos_prefix=True, mm_plugin="intern_vl",
                       image_token="<IMG_CONTEXT>", vision_bos="<img>", vision_eos="</img>",
                       engine_image="<IMG_CONTEXT>"),
    )
}
"""The templates ``dyncot-predict`` reproduces (``qwen2_vl`` serves Qwen2-VL and Qwen2.5-VL)."""

REFUSED_TEMPLATES: dict[str, str] = {
    "mllama": ("vLLM removed Mllama (MllamaForConditionalGeneration, an encoder-decoder model) after 0.10.2, so "
               "vLLM cannot run it; predict with llamafactory-cli (the plugin does not train mllama either)"),
}
"""LLaMA-Factory templates of the plugin's families that ``dyncot-predict`` refuses by name, with the reason."""


def get_template(name: str, default_system: str | None = None) -> PromptTemplate:
    if name in REFUSED_TEMPLATES:
        raise KeyError(f"template: {name!r} is not supported by dyncot-predict: {REFUSED_TEMPLATES[name]}")
    if name not in TEMPLATES:
        raise KeyError(f"template: {name!r} is not supported by dyncot-predict (supported: {', '.join(TEMPLATES)})")
    template = TEMPLATES[name]
    if default_system is not None:  # LLaMA-Factory's `default_system` data argument replaces the template's
        template = PromptTemplate(**{**template.__dict__, "default_system": default_system})
    return template


def _slot(slot: str, content: str) -> str:
    return slot.replace("{{content}}", content)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


def encode_oneturn(template: PromptTemplate, tokenizer: Any, messages: Sequence[dict[str, str]],
                   system: str | None = None) -> tuple[list[int], list[int]]:
    """``Template.encode_oneturn``: (prompt ids, response ids) of alternating user/assistant ``messages``, the last
    being the response; turn 0 carries the prefix and the system slot (``system`` or the default system)."""
    system = system or template.default_system
    encoded: list[list[int]] = []
    for i, message in enumerate(messages):
        ids: list[int] = []
        system_text = ""  # Llama2Template: the formatted system text, put in front of the first user's content
        if i == 0:
            if template.bos_prefix and tokenizer.bos_token_id is not None:
                ids.append(tokenizer.bos_token_id)
            ids += _encode(tokenizer, template.prefix)
            if system:
                if template.system_in_user:
                    system_text = _slot(template.system, system)
                else:
                    ids += _encode(tokenizer, _slot(template.system, system))
        if message["role"] == "user":
            ids += _encode(tokenizer, _slot(template.user, system_text + message["content"]))
        elif message["role"] == "assistant":
            ids += _encode(tokenizer, _slot(template.assistant, message["content"]))
            if template.assistant_eos:  # the EOS as fix_special_tokens left it (the first stop word if replaced)
                eos = (tokenizer.convert_tokens_to_ids(template.stop_words[0]) if template.replace_eos
                       else tokenizer.eos_token_id)
                ids += [eos] if eos is not None else []
        else:
            raise ValueError(f"unsupported role {message['role']!r} (dyncot-predict takes user/assistant turns)")
        encoded.append(ids)
    return [i for ids in encoded[:-1] for i in ids], encoded[-1]


def stop_token_ids(template: PromptTemplate, tokenizer: Any) -> list[int]:
    """The ``eos_token_id`` list of LLaMA-Factory's prediction run: the (replaced) EOS, then the tokenizer's extra
    special tokens (``sft/workflow.py``) as ``fix_special_tokens`` left them with the remaining stop words."""
    eos = tokenizer.convert_tokens_to_ids(template.stop_words[0]) if template.replace_eos else tokenizer.eos_token_id
    if eos is None:
        eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    extra = getattr(tokenizer, "additional_special_tokens_ids", None)
    if not isinstance(extra, list):
        extra = [tokenizer.convert_tokens_to_ids(str(t)) for t in getattr(tokenizer, "_extra_special_tokens", [])]
    rest = template.stop_words[1 if template.replace_eos else 0:]
    if rest:  # fix_special_tokens adds them with replace_additional_special_tokens=False; transformers 5 has no such
        # argument, and LLaMA-Factory's fallback call then replaces the extra special tokens by the stop words
        import inspect

        if "replace_additional_special_tokens" not in inspect.signature(tokenizer.add_special_tokens).parameters:
            extra = []
        extra = extra + [tokenizer.convert_tokens_to_ids(w) for w in rest]
    return list(dict.fromkeys([eos] + [i for i in extra if i is not None and i != -1]))


# ------------------------------------------------------------------------------------------------ chat template
def _literal(text: str) -> str:
    """A Jinja string literal of ``text``: JSON's escapes for quotes, backslashes and control characters, other
    characters as they are (Jinja reads a literal as Python's unicode escapes; an ASCII-escaped character outside the
    BMP would come back as two lone surrogates)."""
    return json.dumps(text, ensure_ascii=False)


def servable(template: PromptTemplate) -> bool:
    """Whether :func:`chat_template_jinja` renders the row exactly: string slots only (no BOS/EOS id slots, no
    system text inside the user slot) and an image whose served form is ``vision_bos + image_token + vision_eos``."""
    return not (template.bos_prefix or template.assistant_eos or template.system_in_user
                or template.engine_image is not None)


SERVED_TEMPLATES = tuple(name for name, t in TEMPLATES.items() if servable(t))
"""The rows ``dyncot-serve --template`` renders (the others are served with the model's own chat template)."""


def chat_template_jinja(template: PromptTemplate) -> str:
    """A Jinja chat template (``dyncot-serve --template``, vLLM's ``--chat-template``) that renders a chat as
    :func:`encode_oneturn` lays out its slots: ``prefix``; the system slot with the first message's system text, or
    the row's ``default_system`` when there is none (or it is empty), as ``system or default_system`` does; then a
    user slot (which ends with the assistant header) and an assistant slot per turn, user first, alternating.

    Content is a string or OpenAI parts (vLLM's ``openai`` content format: ``{"type": "text", "text": ...}`` and
    ``{"type": "image"}``), parts joined with nothing between them as LLaMA-Factory's API server joins them. An
    image becomes ``vision_bos + image_token + vision_eos`` (one token: vLLM's Qwen-VL processor expands it to the
    image's grid), placed where the message's text has ``<image>`` (LLaMA-Factory's data) when it has any (their
    number must equal its images), else where the image part stands. Anything else (another role, a video, an
    image in the system message, turns out of order, ``<image>`` without an image) is refused with
    ``raise_exception`` (vLLM answers HTTP 400 with the message).
    ``add_generation_prompt`` changes nothing: the user slot already ends with the assistant header, as in
    LLaMA-Factory's prompts; a chat ending on an assistant message ends with its closed assistant slot."""
    if not servable(template):
        raise ValueError(f"template {template.name!r} is not rendered as a chat template (rendered: "
                         f"{', '.join(SERVED_TEMPLATES)})")

    def halves(slot: str) -> tuple[str, str]:
        before, sep, after = slot.partition("{{content}}")
        if not sep:
            raise ValueError(f"template {template.name!r}: a slot without {{{{content}}}}: {slot!r}")
        return before, after

    user, assistant, system = halves(template.user), halves(template.assistant), halves(template.system)
    image = (f"{template.vision_bos}{template.image_token}{template.vision_eos}" if template.image_token else None)
    lines = [
        (f"{{#- LLaMA-Factory's {template.name} template (written by dyncot-serve from "
        "dyncot_plugin/serve/templates.py) -#}"),
        f"{{%- set placeholder = {_literal(IMAGE_PLACEHOLDER)} -%}}",
        f"{{%- set image = {_literal(image or '')} -%}}",
        # one message's content as text: (images at their <image> marks, else at their parts)
        "{%- macro render(content, allow_images) -%}",
        "{%- if content is none -%}",
        "{%- elif content is string -%}",
        ("  {%- if placeholder in content -%}{{- raise_exception('<image> in a message without an image part') -}}"
        "{%- endif -%}{{- content -}}"),
        "{%- else -%}",
        "  {%- set n = namespace(marks=0, images=0) -%}",
        "  {%- for part in content -%}",
        "    {%- if part.type == 'text' -%}{%- set n.marks = n.marks + (part.text.split(placeholder) | length) - 1 -%}",
        "    {%- elif part.type == 'image' -%}{%- set n.images = n.images + 1 -%}",
        ("    {%- else -%}{{- raise_exception('content parts of type ' ~ part.type ~ ' are not supported "
        f"(template {template.name}: text and images)') -}}}}"),
        "    {%- endif -%}",
        "  {%- endfor -%}",
        ("  {%- if n.images and not allow_images -%}{{- raise_exception('a system message takes no images') -}}"
        "{%- endif -%}"),
        ("  {%- if n.images and not image -%}"
        f"{{{{- raise_exception('template {template.name} takes no images') -}}}}{{%- endif -%}}"),
        ("  {%- if n.marks and n.marks != n.images -%}{{- raise_exception('a message has ' ~ n.marks ~ ' <image> "
        "marks and ' ~ n.images ~ ' images') -}}{%- endif -%}"),
        "  {%- for part in content -%}",
        "    {%- if part.type == 'text' -%}{{- part.text | replace(placeholder, image) if n.marks else part.text -}}",
        "    {%- elif not n.marks -%}{{- image -}}",
        "    {%- endif -%}",
        "  {%- endfor -%}",
        "{%- endif -%}",
        "{%- endmacro -%}",
        f"{{%- set ns = namespace(system={_literal(template.default_system)}, start=0) -%}}",
        "{%- if messages and messages[0].role == 'system' -%}",
        "  {%- set text = render(messages[0].content, false) -%}",
        "  {%- if text -%}{%- set ns.system = text -%}{%- endif -%}",
        "  {%- set ns.start = 1 -%}",
        "{%- endif -%}",
        f"{{{{- {_literal(template.prefix)} -}}}}",
        f"{{%- if ns.system -%}}{{{{- {_literal(system[0])} ~ ns.system ~ {_literal(system[1])} -}}}}{{%- endif -%}}",
        "{%- for message in messages[ns.start:] -%}",
        "  {%- if message.role != (loop.index0 % 2 == 0 and 'user' or 'assistant') -%}",
        ("    {{- raise_exception('turn ' ~ loop.index0 ~ ' has role ' ~ message.role ~ '; expected user and "
        "assistant turns, user first, after an optional system message') -}}"),
        "  {%- elif message.role == 'user' -%}",
        f"    {{{{- {_literal(user[0])} ~ render(message.content, true) ~ {_literal(user[1])} -}}}}",
        "  {%- else -%}",
        f"    {{{{- {_literal(assistant[0])} ~ render(message.content, true) ~ {_literal(assistant[1])} -}}}}",
        "  {%- endif -%}",
        "{%- endfor -%}",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ images
def preprocess_image(image: Any, plugin: str, max_pixels: int, min_pixels: int) -> Any:
    """The mm plugin's ``_preprocess_image``: LLaMA-Factory resizes (PIL's default filter) into
    [``image_min_pixels``, ``image_max_pixels``] and converts to RGB before the processor sees the image (all plugins:
    ``BasePlugin._preprocess_image``); the Qwen-VL plugins then enforce a 28-pixel short side and an aspect ratio of
    at most 200."""
    if image.width * image.height > max_pixels:
        factor = math.sqrt(max_pixels / (image.width * image.height))
        image = image.resize((int(image.width * factor), int(image.height * factor)))
    if image.width * image.height < min_pixels:
        factor = math.sqrt(min_pixels / (image.width * image.height))
        image = image.resize((int(image.width * factor), int(image.height * factor)))
    if image.mode != "RGB":
        image = image.convert("RGB")
    if plugin in QWEN_PLUGINS:
        if min(image.width, image.height) < 28:
            image = image.resize((max(image.width, 28), max(image.height, 28)))
        if image.width / image.height > 200:
            image = image.resize((image.height * 180, image.height))
        if image.height / image.width > 200:
            image = image.resize((image.width, image.width * 180))
    return image


def image_seqlens(processor: Any, images: Sequence[Any], plugin: str = "qwen2_vl",
                  crop_to_patches: bool = False) -> list[int]:
    """How many ``image_token`` each (preprocessed) image becomes in LLaMA-Factory's prompt, per mm plugin.

    ``processor``: the model's processor (``AutoProcessor``; the Qwen-VL plugins also take its image processor).
    Qwen-VL: ``grid_t * grid_h * grid_w // merge_size**2``; LLaVA: the first processed image's
    ``(H // patch_size) * (W // patch_size) + num_additional_image_tokens`` (minus 1 for the ``default`` feature
    strategy), for every image, as ``LlavaPlugin`` does; Gemma 3: ``processor.image_seq_length``; InternVL:
    ``image_seq_length`` times the image's patch count (``crop_to_patches``: LLaMA-Factory's model argument, which
    sets 1..12 patches; else the image processor's own setting)."""
    if not images:
        return []
    image_processor = getattr(processor, "image_processor", processor)
    if plugin in QWEN_PLUGINS:
        grid = image_processor(images=list(images), return_tensors="np")["image_grid_thw"]
        merge = getattr(image_processor, "merge_size", 2) ** 2
        return [int(math.prod(int(v) for v in row)) // merge for row in grid]
    if plugin == "llava":
        pixels = image_processor(images=list(images), return_tensors="np")["pixel_values"][0]
        height, width = (int(v) for v in pixels.shape[-2:])  # channels first (LLaMA-Factory's get_image_size)
        patch = int(processor.patch_size)
        n = (height // patch) * (width // patch) + int(processor.num_additional_image_tokens)
        if processor.vision_feature_select_strategy == "default":
            n -= 1
        return [n] * len(images)
    if plugin == "gemma3":
        return [int(processor.image_seq_length)] * len(images)
    if plugin == "intern_vl":
        kwargs = {"crop_to_patches": True, "max_patches": 12, "min_patches": 1} if crop_to_patches else {}
        patches = image_processor(images=list(images), return_tensors="np", **kwargs)["num_patches"]
        return [int(processor.image_seq_length) * int(p) for p in patches]
    raise ValueError(f"mm plugin {plugin!r} takes no images")


def expand_images(template: PromptTemplate, messages: Sequence[dict[str, str]], seqlens: Sequence[int],
                  expand: bool = True) -> list[dict[str, str]]:
    """``process_messages`` of the mm plugin: every ``<image>`` becomes ``vision_bos + image_token * n +
    vision_eos`` in order (``expand=False``: :attr:`PromptTemplate.engine_image_text`, the form vLLM's processor
    expands itself)."""
    count = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if count != len(seqlens):
        raise ValueError(f"the number of images ({len(seqlens)}) does not match the number of {IMAGE_PLACEHOLDER} "
                         f"tokens ({count})")
    if any(VIDEO_PLACEHOLDER in m["content"] for m in messages):
        raise ValueError("videos are not supported by dyncot-predict")
    if count and template.image_token is None:
        raise ValueError(f"template {template.name!r} has no image slot, but a row has {IMAGE_PLACEHOLDER}")
    out, k = [], 0
    for message in messages:  # split, not replace in a loop: LLaVA's expansion is <image> itself
        pieces = message["content"].split(IMAGE_PLACEHOLDER)
        content = pieces[0]
        for piece in pieces[1:]:
            content += (f"{template.vision_bos}{template.image_token * seqlens[k]}{template.vision_eos}" if expand
                        else template.engine_image_text) + piece
            k += 1
        out.append({**message, "content": content})
    return out


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory's ``processor_utils.infer_seqlen``: how ``cutoff_len`` cuts a prompt and its label."""
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    max_source_len = max(cutoff_len - new_target_len, 0)
    return min(max_source_len, source_len), new_target_len


__all__ = ["IMAGE_PLACEHOLDER", "PromptTemplate", "REFUSED_TEMPLATES", "SERVED_TEMPLATES", "TEMPLATES",
           "chat_template_jinja", "encode_oneturn", "expand_images", "get_template", "image_seqlens", "infer_seqlen",
           "preprocess_image", "servable", "stop_token_ids"]
