"""Offline *demo* rationale writer: fills a fixed template from the CMKP side files. It is NOT a teacher model.

It exists so that the bundled demo dataset (``data_info/mmkp_demo*.json``, built by ``dyncot-data demo-data``)
has a CoT column in the project's format and every CoT strategy can be tried without any API. The texts are
rule-based: they list the predicted image attributes and the OCR text from CMKP's side files, quote the post,
say which gold keyphrases occur in the post (the evaluator's stemmed "present" rule) and which do not, and end
with the gold keyphrases. They carry no knowledge a model could learn beyond the answer itself; rows written by
it are marked ``"cot_source": "demo-offline"``. Real CoT data comes from ``dyncot-data gen-cot`` (a teacher
behind an OpenAI-compatible endpoint; see docs/teacher.md).

Output: ``<think>…</think><answer>kp1; kp2</answer>``, which :func:`dyncot_plugin.teacher.validate.validate_reply`
accepts with ``match="exact"`` for the same gold keyphrases.
"""

from __future__ import annotations

from dyncot_plugin.cot_format import ANSWER_SEP, build_cot
from dyncot_plugin.tasks.mmkp.normalize import is_present, stem_phrase

DEMO_COT_SOURCE = "demo-offline"
"""The ``cot_source`` value of every row whose CoT this module wrote."""


def _join(items: list[str]) -> str:
    items = [i for i in items if i]
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return (cut or text[:limit]) + " ..."


def _clean(text: str) -> str:
    """Angle brackets could look like the CoT tags; the demo text never needs them."""
    return text.replace("<", "(").replace(">", ")")


def write_demo_rationale(
    text: str,
    keyphrases: list[str],
    attributes: str | list[str] | None = None,
    ocr: str | None = None,
    sep: str = ANSWER_SEP,
) -> str:
    """The demo CoT target of one post. Deterministic: same inputs, same text."""
    if not keyphrases:
        raise ValueError("a demo rationale needs at least one gold keyphrase")
    attrs = attributes.split() if isinstance(attributes, str) else list(attributes or [])
    src = stem_phrase(text)
    ocr_text = " ".join((ocr or "").split())
    ocr_stem = stem_phrase(ocr_text)
    quoted = [f'"{kp}"' for kp in keyphrases]
    in_text = [q for kp, q in zip(keyphrases, quoted) if is_present(stem_phrase(kp), src)]
    in_ocr = [
        q
        for kp, q in zip(keyphrases, quoted)
        if q not in in_text and ocr_text and is_present(stem_phrase(kp), ocr_stem)
    ]
    absent = [q for q in quoted if q not in in_text and q not in in_ocr]

    parts = []
    if attrs:
        parts.append(f"The image shows {_join(attrs)}.")
    else:
        parts.append("The image gives no clear clue on its own.")
    if ocr_text:
        parts.append(f'The text in the image reads "{_clip(ocr_text, 80)}".')
    parts.append(f'The post says "{_clip(text, 120)}".')
    if in_text:
        parts.append(f"It names {_join(in_text)} directly.")
    if in_ocr:
        parts.append(f"{_join(in_ocr)} {'is' if len(in_ocr) == 1 else 'are'} written in the image.")
    if absent:
        verb = "is" if len(absent) == 1 else "are"
        parts.append(
            f"{_join(absent)} {verb} not written in the post, but {verb} the topic that the post and the "
            "image point to."
        )
    parts.append(f"So the keyphrases are {_join(quoted)}.")
    think = _clean(" ".join(parts))
    return build_cot(think, sep.join(keyphrases))


__all__ = ["DEMO_COT_SOURCE", "write_demo_rationale"]
