"""A vLLM-loadable view of a checkpoint whose weight names vLLM 0.32 cannot map.

transformers 5 (5.5 of the training stack, 5.19 of the vLLM venv alike) saves LLaVA, Gemma 3 and InternVL (its
``llava`` conversion rules) with the language model under ``model.language_model.model.*`` and the head under
``language_model.lm_head.*``: its reverse renaming prefixes ``model.`` to the legacy name. vLLM 0.32's weight
mappers of those models take the legacy names (``language_model.model.*``) or the current ones
(``model.language_model.*``), and turn this mix into ``language_model.model.model.*``: the engine stops with "There
is no module or parameter named 'model' in LlamaModel". So every such model trained by ``llamafactory-cli`` fails to
load in vLLM.

:func:`vllm_checkpoint` renames those tensors to the current names (``model.language_model.*``, ``lm_head.*``, which
both transformers and vLLM load) in a copy of the ``*.safetensors`` files: the header is rewritten and the tensor
bytes copied as they are (streamed; nothing is converted or loaded into memory); every other file of the model folder
is a symbolic link to the original. The copy is made once per checkpoint (keyed by the folder's real path and each
weight file's size and mtime) under ``$DYNCOT_VLLM_CACHE`` (default ``~/.cache/dyncot-vllm``) ``/checkpoints``, and
published by an atomic rename, so a killed run leaves no half-written copy. A checkpoint without such names is used
in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile

RENAMES = (("model.language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."))
"""(old prefix, new prefix) of the names transformers 5 writes for the ``llava`` conversion family."""


def _header(path: str) -> tuple[dict, int]:
    """(safetensors header, offset of the tensor data)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(size)), 8 + size


def _renamed(name: str) -> str:
    for old, new in RENAMES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _weight_files(model_dir: str) -> list[str]:
    return sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))


def needs_renaming(model_dir: str) -> bool:
    """Whether ``model_dir`` holds transformers 5's mix: a tensor under ``model.language_model.model.``. A checkpoint
    saved with the legacy names throughout (``language_model.model.*`` and ``language_model.lm_head.*``, as
    transformers 4.57 and most checkpoints on the Hub write them) is one vLLM maps: used in place."""
    marker = RENAMES[0][0]
    return any(name.startswith(marker) for f in _weight_files(model_dir)
               for name in _header(os.path.join(model_dir, f))[0])


def _copy_renamed(src: str, dst: str) -> None:
    header, start = _header(src)
    new = {(_renamed(k) if k != "__metadata__" else k): v for k, v in header.items()}
    data = json.dumps(new, separators=(",", ":")).encode()
    data += b" " * (-len(data) % 8)  # the format pads the header to 8 bytes with spaces
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(struct.pack("<Q", len(data)) + data)
        fin.seek(start)
        shutil.copyfileobj(fin, fout, 16 * 2**20)


def cache_root() -> str:
    base = os.environ.get("DYNCOT_VLLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dyncot-vllm")
    return os.path.join(base, "checkpoints")


def vllm_checkpoint(model_dir: str, log=None) -> str:
    """``model_dir`` itself, or (see the module docstring) the path of its renamed copy, made where missing."""
    if not os.path.isdir(model_dir) or not needs_renaming(model_dir):
        return model_dir
    real = os.path.realpath(model_dir)
    key = hashlib.sha256(real.encode())
    for f in _weight_files(real):
        st = os.stat(os.path.join(real, f))
        key.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    dest = os.path.join(cache_root(), key.hexdigest()[:16])
    note = (f"{model_dir}: weights saved by transformers 5 under names vLLM cannot map "
            f"({', '.join(old + '*' for old, _ in RENAMES)}); vLLM loads a renamed copy: {dest}")
    if os.path.isdir(dest):
        if log is not None:
            log(note)
        return dest
    os.makedirs(cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=cache_root())
    try:
        for entry in os.listdir(real):
            src = os.path.join(real, entry)
            if entry.endswith(".safetensors"):
                _copy_renamed(src, os.path.join(tmp, entry))
            elif entry == "model.safetensors.index.json":
                with open(src, encoding="utf-8") as f:
                    index = json.load(f)
                index["weight_map"] = {_renamed(k): v for k, v in index.get("weight_map", {}).items()}
                with open(os.path.join(tmp, entry), "w", encoding="utf-8") as f:
                    json.dump(index, f, indent=2)
            else:
                os.symlink(src, os.path.join(tmp, entry))
        try:
            os.rename(tmp, dest)
        except OSError:  # another run published it first
            if not os.path.isdir(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if log is not None:
        log(note + " (written now; reused while the weights stay)")
    return dest


__all__ = ["RENAMES", "cache_root", "needs_renaming", "vllm_checkpoint"]
