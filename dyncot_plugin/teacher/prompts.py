"""The prompt sent to the teacher, and the feedback sent when a reply is rejected.

The request for one sample is an OpenAI chat request:

- ``system``: :data:`DEFAULT_SYSTEM_PROMPT` (or ``--system-prompt-file``);
- ``user``: the image as a base64 data URL (``image_url`` part) followed by :data:`DEFAULT_USER_PROMPT`
  (or ``--user-prompt-file``) with its placeholders filled in;
- on a retry, the rejected reply is added as the ``assistant`` turn, followed by a ``user`` turn built from
  :data:`DEFAULT_RETRY_PROMPT` (or ``--retry-prompt-file``) that names what was wrong.

Placeholders (written ``{name}``; any other brace is left as it is, so prompts may contain JSON examples):

====================  =====================================================================
``{text}``            the post text
``{keyphrases}``      the gold keyphrases joined by ``"; "``
``{keyphrase_list}``  the gold keyphrases, one per line, each prefixed by ``- ``
``{num_keyphrases}``  how many gold keyphrases there are
``{id}``              the sample id (not used by the default prompts)
``{reason}``          retry prompt only: why the previous reply was rejected
``{attempt}``         retry prompt only: the number of the attempt being asked for (2, 3, …)
====================  =====================================================================
"""

from __future__ import annotations

import base64
import mimetypes
import re
from pathlib import Path
from typing import Any

from dyncot_plugin.io.read import read_text

DEFAULT_SYSTEM_PROMPT = (
    "You are an expert annotator of social-media posts. You write short, faithful explanations of why a post "
    "is labelled with its keyphrases (hashtag-like topics), using evidence from both the image and the text."
)

DEFAULT_USER_PROMPT = """\
Here is a social-media post: the image above and the text below.

Post text: {text}

Its correct keyphrases are:
{keyphrase_list}

Explain step by step why these are the keyphrases of this post: describe what the image shows, point out the \
words or clues in the text, and connect them to each keyphrase. Keyphrases that do not appear in the text must \
be explained from the image or the topic of the post. Do not mention that the keyphrases were given to you; \
reason as if you were finding them yourself.

Reply in exactly this format and nothing else:
<think>your explanation</think><answer>{keyphrases}</answer>

The <answer> block must list exactly the keyphrases above, separated by "; ", with no other keyphrase."""

DEFAULT_RETRY_PROMPT = """\
Your reply was rejected: {reason}.
Write attempt {attempt} for the same post. Reply in exactly this format and nothing else:
<think>your explanation</think><answer>{keyphrases}</answer>"""

PLACEHOLDERS = ("text", "keyphrases", "keyphrase_list", "num_keyphrases", "id", "reason", "attempt")
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")

# Media types LLaMA-Factory's API accepts as data URLs are png/jpg/jpeg/gif/bmp; OpenAI also takes webp.
_MIME_BY_SUFFIX = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
}


def fill(template: str, values: dict[str, Any]) -> str:
    """Replace the known ``{placeholders}`` only; other braces stay untouched."""
    return _PLACEHOLDER_RE.sub(lambda m: str(values.get(m.group(1), m.group(0))), template)


def image_data_url(path: str | Path, mime: str | None = None) -> str:
    """The image as a base64 data URL; ``mime``: its media type as decoded (``gen-cot`` checks every image with PIL
    first), else guessed from the suffix."""
    path = Path(path)
    mime = mime or _MIME_BY_SUFFIX.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "image/png"
    return bytes_data_url(path.read_bytes(), mime)


def bytes_data_url(data: bytes, mime: str) -> str:
    """Image bytes as a base64 data URL of media type ``mime``."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


class PromptSet:
    """The three templates, loaded from files when given. Reading a file happens once, up front."""

    def __init__(
        self,
        system: str | None = DEFAULT_SYSTEM_PROMPT,
        user: str = DEFAULT_USER_PROMPT,
        retry: str = DEFAULT_RETRY_PROMPT,
        image_detail: str | None = None,
    ) -> None:
        self.system = system
        self.user = user
        self.retry = retry
        self.image_detail = image_detail

    @classmethod
    def from_files(
        cls,
        system_file: str | None = None,
        user_file: str | None = None,
        retry_file: str | None = None,
        image_detail: str | None = None,
    ) -> PromptSet:
        def read(p: str | None, default: str) -> str:
            return default if p is None else read_text(p, "prompt file").strip()

        system = read(system_file, DEFAULT_SYSTEM_PROMPT)
        return cls(
            system or None, read(user_file, DEFAULT_USER_PROMPT), read(retry_file, DEFAULT_RETRY_PROMPT), image_detail
        )

    @staticmethod
    def values(sample_id: str, text: str, keyphrases: list[str]) -> dict[str, Any]:
        return {
            "id": sample_id,
            "text": text,
            "keyphrases": "; ".join(keyphrases),
            "keyphrase_list": "\n".join(f"- {kp}" for kp in keyphrases),
            "num_keyphrases": len(keyphrases),
        }

    def first_messages(self, sample_id: str, text: str, keyphrases: list[str], image: str | None) -> list[dict]:
        """``image``: a data URL (or any URL the endpoint accepts), or ``None`` for a text-only sample."""
        messages: list[dict] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        prompt = fill(self.user, self.values(sample_id, text, keyphrases))
        if image is None:
            messages.append({"role": "user", "content": prompt})
        else:
            image_url: dict[str, Any] = {"url": image}
            if self.image_detail:
                image_url["detail"] = self.image_detail
            messages.append(
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": image_url}, {"type": "text", "text": prompt}],
                }
            )
        return messages

    def retry_messages(
        self, sample_id: str, text: str, keyphrases: list[str], rejected_reply: str, reason: str, attempt: int
    ) -> list[dict]:
        """The two turns added for retry ``attempt`` (2, 3, …): the rejected reply and the feedback."""
        values = self.values(sample_id, text, keyphrases)
        values.update(reason=reason.rstrip("."), attempt=attempt)
        return [
            {"role": "assistant", "content": rejected_reply or "(empty reply)"},
            {"role": "user", "content": fill(self.retry, values)},
        ]


def describe_messages(messages: list[dict]) -> list[dict]:
    """A copy of a request's messages with image data shortened, for ``--dry-run`` and logs."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    short = url[:40] + f"…({len(url)} chars)" if len(url) > 60 else url
                    parts.append({**part, "image_url": {**part["image_url"], "url": short}})
                else:
                    parts.append(part)
            content = parts
        out.append({**m, "content": content})
    return out
