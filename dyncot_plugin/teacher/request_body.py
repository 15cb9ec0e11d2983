"""The one chat request body gen-cot sends about a sample, online or in a batch file.

:func:`build_request_body` is the only place a body is made: the online asker posts it as it is
(:meth:`~dyncot_plugin.teacher.client.TeacherClient.complete`) and ``--batch-write`` puts it in the ``body`` of a
request line, so both paths send JSON-equal requests for the same sample and the same earlier replies.

A body is ``{"model", "messages", "max_tokens"[, "temperature"]}`` plus every key of ``--extra-body`` (which wins,
as the openai client's ``extra_body`` does). Its messages are the first request (system prompt, the images as
base64 data URLs of the checked files, the user prompt), then for each rejected earlier reply of the sample, in
order, that reply as the assistant turn and the feedback turn naming what was wrong.
"""

from __future__ import annotations

import argparse
from typing import Any

from dyncot_plugin.teacher.prompts import PromptSet, bytes_data_url
from dyncot_plugin.teacher.samples import Sample, read_checked


def request_params(args: argparse.Namespace) -> dict[str, Any]:
    """The body's keys besides model and messages, from the options."""
    params: dict[str, Any] = {"max_tokens": args.max_tokens}
    if args.temperature is not None:
        params["temperature"] = args.temperature
    params.update(args.extra_body or {})
    return params


def first_messages(s: Sample, prompts: PromptSet) -> list[dict]:
    """The first request's messages; reads the images that :func:`~dyncot_plugin.teacher.samples.check_images`
    checked (an ``OSError`` where one changed or went away since)."""
    if s.images and len(s.checked) != len(s.images):
        raise RuntimeError(f"{s.id}: images not checked (check_images) before they are sent")
    urls = [bytes_data_url(read_checked(c), m) for c, m in zip(s.checked, s.mimes)]
    messages = prompts.first_messages(s.id, s.text, s.keyphrases, urls[0] if urls else None)
    if len(s.images) > 1:  # several images: all go before the text, in order
        user = messages[-1]
        extra = [{"type": "image_url", "image_url": {"url": url}} for url in urls[1:]]
        if prompts.image_detail:
            for part in extra:
                part["image_url"]["detail"] = prompts.image_detail
        user["content"] = user["content"][:1] + extra + user["content"][1:]
    return messages


def build_request_body(
    s: Sample, history: list[dict], *, model: str, prompts: PromptSet, params: dict[str, Any]
) -> dict[str, Any]:
    """The request for the next attempt of ``s``; ``history``: its rejected replies since its last final record
    (cache ``attempt`` records: ``attempt``, ``reply``, ``reason``), in order."""
    messages = first_messages(s, prompts)
    for rec in history:
        messages += prompts.retry_messages(
            s.id, s.text, s.keyphrases, rec.get("reply") or "", rec.get("reason", ""), rec["attempt"] + 1
        )
    body: dict[str, Any] = {"model": model, "messages": messages}
    body.update(params)
    return body
