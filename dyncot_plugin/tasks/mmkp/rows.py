"""An MMKP row's post text and gold keyphrases, read the same way by every tool (teacher, evaluator, statistics).

Rows written by ``dyncot-data convert-cmkp`` carry both as fields (``text``, ``keyphrases``); other sharegpt rows
fall back to their messages: the user message without ``<image>`` for the text, the assistant answer (plain
``kp1; kp2`` or a CoT) for the keyphrases.
"""

from __future__ import annotations

from typing import Any

from dyncot_plugin.io.datasets import IMAGE_TOKEN, assistant_text, user_text
from dyncot_plugin.tasks.mmkp.normalize import label_keyphrases


def post_text(row: dict[str, Any], *, fallback: bool = True) -> str | None:
    """The post text: the ``text`` field, else (``fallback``) the user message without ``<image>``; None if none."""
    text = row.get("text")
    if isinstance(text, str) and text.strip():
        return text
    if not fallback:
        return None
    user = user_text(row)
    return (user.replace(IMAGE_TOKEN, "").strip() or None) if user is not None else None


def row_keyphrases(row: dict[str, Any]) -> list[str] | None:
    """The gold keyphrases (stripped, in order): the ``keyphrases`` list, else the assistant answer split on ``;``
    (empty pieces dropped); None when the row has neither."""
    kps = row.get("keyphrases")
    if isinstance(kps, list) and all(isinstance(k, str) for k in kps):
        return [k.strip() for k in kps]
    answer = assistant_text(row)
    return label_keyphrases(answer) if answer is not None else None


__all__ = ["post_text", "row_keyphrases"]
