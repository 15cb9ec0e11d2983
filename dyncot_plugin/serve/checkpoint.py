"""A vLLM-loadable view of a checkpoint whose weight names vLLM 0.32 cannot map, kept in a cache that cleans up after
itself.

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
is a symbolic link to the original. A checkpoint without such names is used in place.

**The cache** (``$DYNCOT_VLLM_CACHE``, default ``~/.cache/dyncot-vllm``, ``/checkpoints``):

* *Key.* A copy is keyed by the folder's real path, its whole file list with each entry's size and mtime, and
  :data:`RULES_VERSION`: a file added to the model later (``dyncot_think.json``), a weight updated in place, or new
  renaming rules give a new copy, never a stale one. Where only non-weight files changed, the new copy hard-links the
  renamed weights of the previous copy of the same weights (no second copy of gigabytes; copied where links fail).
* *Publishing.* A copy is written under a ``.tmp-*`` name and published by an atomic rename, so no half-written copy
  is ever used. The process writing it holds an exclusive ``flock`` on that folder for the whole copy.
* *In use.* Every process using a copy (``dyncot-predict``, ``dyncot-serve`` and the vLLM server it becomes: the lock
  is inherited across ``exec``) holds a shared ``flock`` on it until it exits.
* *Cleaning.* Each call first removes the ``.tmp-*`` folders whose lock nobody holds (left by a killed copy or a
  killed eviction), never one in progress, then evicts the least recently used copies beyond
  ``$DYNCOT_VLLM_CACHE_KEEP`` (default 2, the new copy included), never one in use. An evicted copy is renamed to a
  ``.tmp-*`` name first (so a killed removal is cleaned by the next call). Creating a ``.tmp-*`` folder and taking
  its lock happen under a shared lock of the cache (``.lock``), cleaning under the exclusive one, so no folder is
  seen between the two.
* *Errors.* A full disk, or a cache folder that cannot be written, is a :class:`CheckpointError` (one
  ``[dyncot-plugin] error:`` line from the commands) naming the model, the cache folder and the space the copy
  needs; the partial copy is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterator

RENAMES = (("model.language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."))
"""(old prefix, new prefix) of the names transformers 5 writes for the ``llava`` conversion family."""

RULES_VERSION = 2
"""Part of every copy's key: raise it whenever :data:`RENAMES` or the way a copy is written changes (1: the copies of
the first release, keyed by the weight files only)."""

KEEP_ENV, DEFAULT_KEEP = "DYNCOT_VLLM_CACHE_KEEP", 2
SOURCE_FILE = ".dyncot-source.json"
"""Written in each copy: the source folder, its file list and the rules' version (what the key was made of)."""

_HELD: list[int] = []
"""Open descriptors whose shared locks mark the copies this process uses (kept until exit, inherited across exec)."""


class CheckpointError(ValueError):
    """The renamed copy cannot be made (a full disk, a folder that cannot be written): one line naming what."""


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


def keep_count() -> int:
    """``$DYNCOT_VLLM_CACHE_KEEP``: how many copies the cache keeps (at least the one in use)."""
    value = os.environ.get(KEEP_ENV, "").strip() or str(DEFAULT_KEEP)
    if not value.isdigit() or int(value) < 1:
        raise CheckpointError(f"{KEEP_ENV}={value!r}: expected a whole number >= 1 (copies kept in the cache)")
    return int(value)


def source_files(real: str) -> list[list]:
    """[name, size, mtime_ns] of every entry of the folder (links followed): what a copy's key is made of."""
    out = []
    for name in sorted(os.listdir(real)):
        st = os.stat(os.path.join(real, name))
        out.append([name, st.st_size, st.st_mtime_ns])
    return out


def copy_key(real: str, files: list[list]) -> str:
    blob = json.dumps({"source": real, "files": files, "rules": RULES_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------- locking
@contextlib.contextmanager
def _cache_lock(root: str, exclusive: bool) -> Iterator[None]:
    fd = os.open(os.path.join(root, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _lock(path: str, how: int) -> int | None:
    """An open descriptor of folder ``path`` holding ``how`` (``LOCK_SH`` / ``LOCK_EX``, ``| LOCK_NB``), or None when
    the folder is gone or (non-blocking) another process holds a conflicting lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, how)
    except OSError:
        os.close(fd)
        return None
    return fd


def _hold(fd: int) -> None:
    """Keep ``fd``'s lock for the life of this process, and of the program it ``exec``s (dyncot-serve → vLLM)."""
    os.set_inheritable(fd, True)
    _HELD.append(fd)


def _copies(root: str) -> list[str]:
    return [os.path.join(root, e) for e in os.listdir(root) if not e.startswith(".")
            and os.path.isdir(os.path.join(root, e))]


def tidy(root: str, keep: int, protect: str | None = None) -> list[str]:
    """Remove the ``.tmp-*`` folders nobody holds, then evict the least recently used copies until at most
    ``keep`` - 1 remain besides ``protect`` (the copy about to be used or written), skipping copies in use. Returns
    the folders removed."""
    doomed: list[tuple[int, str]] = []
    with _cache_lock(root, exclusive=True):
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            if entry.startswith(".tmp-") and os.path.isdir(path):
                fd = _lock(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if fd is not None:  # its writer is gone: a killed copy or a killed eviction
                    doomed.append((fd, path))
        others = sorted((p for p in _copies(root) if p != protect), key=lambda p: os.stat(p).st_mtime_ns)
        excess = len(others) - (keep - 1)
        for path in others:
            if excess <= 0:
                break
            fd = _lock(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if fd is None:
                continue  # in use: kept
            gone = os.path.join(root, f".tmp-evicted-{os.path.basename(path)}-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(path, gone)
            except OSError:  # a folder that cannot be renamed (permissions): left as it is
                os.close(fd)
                continue
            doomed.append((fd, gone))
            excess -= 1
    removed = []
    for fd, path in doomed:  # outside the cache lock; a killed removal leaves a .tmp-* nobody holds
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)
        removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------------- the copy
def _reusable_weights(root: str, real: str, files: list[list]) -> tuple[str, int] | None:
    """A published copy of the same source with the same weight files (name, size, mtime) and rules, locked shared
    while its renamed weights are linked: (folder, descriptor)."""
    weights = [f for f in files if f[0].endswith(".safetensors")]
    for path in _copies(root):
        try:
            with open(os.path.join(path, SOURCE_FILE), encoding="utf-8") as f:
                source = json.load(f)
        except (OSError, ValueError):
            continue
        if (source.get("source") == real and source.get("rules") == RULES_VERSION
                and [f for f in source.get("files", []) if f[0].endswith(".safetensors")] == weights):
            fd = _lock(path, fcntl.LOCK_SH | fcntl.LOCK_NB)
            if fd is not None:
                return path, fd
    return None


def _write_copy(real: str, tmp: str, files: list[list], root: str) -> None:
    reuse = _reusable_weights(root, real, files)
    try:
        for name, _, _ in files:
            src = os.path.join(real, name)
            if name.endswith(".safetensors"):
                if reuse is not None:
                    with contextlib.suppress(OSError):
                        os.link(os.path.join(reuse[0], name), os.path.join(tmp, name))
                        continue
                _copy_renamed(src, os.path.join(tmp, name))
            elif name == "model.safetensors.index.json":
                with open(src, encoding="utf-8") as f:
                    index = json.load(f)
                index["weight_map"] = {_renamed(k): v for k, v in index.get("weight_map", {}).items()}
                with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                    json.dump(index, f, indent=2)
            else:
                os.symlink(src, os.path.join(tmp, name))
        with open(os.path.join(tmp, SOURCE_FILE), "w", encoding="utf-8") as f:
            json.dump({"source": real, "files": files, "rules": RULES_VERSION}, f)
    finally:
        if reuse is not None:
            os.close(reuse[1])


def _use(dest: str) -> int | None:
    """A shared lock on published copy ``dest`` (its last use stamped on its mtime), or None where there is none."""
    fd = _lock(dest, fcntl.LOCK_SH)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.utime(dest)
    return fd


def vllm_checkpoint(model_dir: str, log: Callable[[str], None] | None = None) -> str:
    """``model_dir`` itself, or (see the module docstring) the path of its renamed copy, made where missing. The
    copy stays locked as in use until this process (or the program it execs) exits."""
    if not os.path.isdir(model_dir) or not needs_renaming(model_dir):
        return model_dir
    real = os.path.realpath(model_dir)
    files = source_files(real)
    root = cache_root()
    dest = os.path.join(root, copy_key(real, files))
    note = (f"{model_dir}: weights saved by transformers 5 under names vLLM cannot map "
            f"({', '.join(old + '*' for old, _ in RENAMES)}); vLLM loads a renamed copy: {dest}")
    size = sum(f[1] for f in files if f[0].endswith(".safetensors"))

    def failed(e: OSError, doing: str) -> CheckpointError:
        why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
        need = f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
        return CheckpointError(f"{model_dir}: cannot {doing} vLLM's renamed copy in {root}: {why} (the copy needs "
                               f"{need}; set DYNCOT_VLLM_CACHE to a folder with room, or lower {KEEP_ENV}); the model "
                               "folder is unchanged")

    keep = keep_count()
    tmp = tmp_fd = None
    try:
        os.makedirs(root, exist_ok=True)
        with _cache_lock(root, exclusive=False):
            fd = _use(dest)
            if fd is None:
                tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
                tmp_fd = _lock(tmp, fcntl.LOCK_EX)
    except OSError as e:
        raise failed(e, "make") from None
    if fd is not None:
        _hold(fd)
        tidy(root, keep, protect=dest)
        if log is not None:
            log(note)
        return dest
    try:
        tidy(root, keep, protect=dest)  # room first: stale folders and old copies go before the new copy is written
        _write_copy(real, tmp, files, root)
        with _cache_lock(root, exclusive=False):
            try:
                os.rename(tmp, dest)
                fcntl.flock(tmp_fd, fcntl.LOCK_SH)  # the writer's lock becomes a user's (no cleaner runs meanwhile)
                fd, tmp_fd, tmp = tmp_fd, None, None
            except OSError:
                if not os.path.isdir(dest):
                    raise
                fd = _use(dest)  # another process published the same copy first
    except OSError as e:
        raise failed(e, "write") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if tmp_fd is not None:
            os.close(tmp_fd)
    if fd is not None:
        _hold(fd)
    if log is not None:
        log(note + " (written now; reused while the model folder's files stay as they are)")
    return dest


__all__ = ["DEFAULT_KEEP", "KEEP_ENV", "RENAMES", "RULES_VERSION", "CheckpointError", "cache_root", "copy_key",
           "keep_count", "needs_renaming", "source_files", "tidy", "vllm_checkpoint"]
