"""Helpers to drive a real ``llamafactory-cli`` run from tests (tiny data sets, YAML config, subprocess).

Typical use::

    from dyncot_plugin.testing.lf_runner import write_sharegpt_dataset, run_llamafactory, tiny_sft_config

    rows = [{"messages": [{"role": "user", "content": "<image>Keyphrases?"},
                          {"role": "assistant", "content": "sunset; beach"}],
             "images": [make_image(data_dir / "img0.png", seed=0)]}]
    write_sharegpt_dataset(data_dir, "toy", rows)
    cfg = tiny_sft_config(model_dir, data_dir, "toy", out_dir)
    proc = run_llamafactory("train", cfg, workdir=tmp_path)

All functions are offline and deterministic.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "LlamaFactoryRunError",
    "llamafactory_cli",
    "make_image",
    "offline_env",
    "run_llamafactory",
    "tiny_sft_config",
    "toy_rows",
    "write_sharegpt_dataset",
]


class LlamaFactoryRunError(RuntimeError):
    """``llamafactory-cli`` exited non-zero; the message carries the command and the tails of stdout/stderr."""

    def __init__(self, message: str, proc: subprocess.CompletedProcess):
        super().__init__(message)
        self.proc = proc


def make_image(path: str | Path, seed: int = 0, size: tuple[int, int] = (64, 64)) -> str:
    """Draw a deterministic PNG (coloured background + a few coloured shapes) at ``path``; return ``str(path)``."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    w, h = size
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.randrange(w // 2), rng.randrange(h // 2)
        x1, y1 = x0 + rng.randrange(8, w // 2 + 1), y0 + rng.randrange(8, h // 2 + 1)
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.choice(("rectangle", "ellipse", "polygon"))
        if shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return str(path)


def write_sharegpt_dataset(
    dataset_dir: str | Path,
    name: str,
    rows: list[dict[str, Any]],
    file_name: str | None = None,
    with_images: bool = True,
) -> Path:
    """Write ``rows`` as ``<dataset_dir>/<file_name>`` (JSON list) and declare it in ``dataset_info.json``.

    Each row is ``{"messages": [{"role": "user"|"assistant"|"system", "content": str}, ...], "images": [path, ...]}``
    (sharegpt format, OpenAI-style tags). Image paths may be absolute or relative to ``dataset_dir``; user
    messages reference them with ``<image>``. An existing ``dataset_info.json`` is updated, not replaced, so
    several data sets can share one folder. Returns the path of ``dataset_info.json``.
    """
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    file_name = file_name or f"{name}.json"
    (dataset_dir / file_name).write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    columns = {"messages": "messages"}
    if with_images:
        columns["images"] = "images"
    entry = {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": columns,
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    }
    info_path = dataset_dir / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    info[name] = entry
    info_path.write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info_path


_TOY_TEXTS = [
    ("Sunset at the beach with friends #summer", "sunset; beach; friends"),
    ("What a comeback in the game last night #nba", "nba; basketball; playoffs"),
    ("Morning coffee and a good book", "coffee; reading; weekend"),
    ("Heavy rain expected across the city tonight", "weather; storm; rain"),
    ("Just landed in Tokyo, cherry blossoms everywhere", "travel; japan; sakura"),
    ("Our team shipped the new release today", "startup; launch; tech"),
    ("Training for the marathon, 20 km done", "running; marathon; fitness"),
    ("My cat refuses to leave the keyboard", "cats; pets; work from home"),
]


def toy_rows(dataset_dir: str | Path, n: int = 8, cot: bool = True, image_size: tuple[int, int] = (64, 64)) -> list:
    """``n`` deterministic keyphrase rows with one generated PNG each (saved in ``dataset_dir``).

    With ``cot=True`` answers look like ``<think>...</think><answer>k1; k2</answer>``, else just ``k1; k2``.
    Image paths are absolute.
    """
    dataset_dir = Path(dataset_dir)
    rows = []
    for i in range(n):
        text, keys = _TOY_TEXTS[i % len(_TOY_TEXTS)]
        image = make_image(dataset_dir / f"img_{i}.png", seed=i, size=image_size)
        answer = f"<think>The post says: {text.lower()}.</think><answer>{keys}</answer>" if cot else keys
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"<image>Post: {text}\nGive keyphrases."},
                    {"role": "assistant", "content": answer},
                ],
                "images": [image],
            }
        )
    return rows


def tiny_sft_config(
    model_dir: str | Path, dataset_dir: str | Path, dataset: str | None, output_dir: str | Path, **overrides: Any
) -> dict[str, Any]:
    """A minimal CPU full-fine-tuning SFT config (qwen2_vl template, fp32, no saving, 8 steps); ``overrides`` win.

    For a predict run pass e.g. ``do_train=False, do_predict=True, predict_with_generate=True, eval_dataset=...,
    max_new_tokens=8, dataset=None`` (keys whose value is ``None`` are dropped).
    """
    config: dict[str, Any] = {
        "model_name_or_path": str(model_dir),
        "trust_remote_code": False,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": dataset,
        "dataset_dir": str(dataset_dir),
        "template": "qwen2_vl",
        "cutoff_len": 256,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1.0e-3,
        "num_train_epochs": 2,
        "max_steps": 8,  # = 2 epochs of 8 rows at batch size 2
        "lr_scheduler_type": "constant",
        "bf16": False,
        "fp16": False,
        "seed": 0,
        "plot_loss": False,
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


def llamafactory_cli() -> str:
    """Path of the ``llamafactory-cli`` next to the running interpreter (falls back to the one on PATH)."""
    candidate = Path(sys.executable).parent / "llamafactory-cli"
    if candidate.exists():
        return str(candidate)
    import shutil

    found = shutil.which("llamafactory-cli")
    if not found:
        raise FileNotFoundError("llamafactory-cli not found next to sys.executable nor on PATH")
    return found


#: What libstdc++ prints when a torch thread dies in C++ during interpreter shutdown. Both cases seen here have the
#: same backtrace (a core of each, gdb): a non-main thread releases the last reference to a Python-owned tensor, torch
#: re-takes the GIL to drop it, CPython (finalizing) ends that thread with ``pthread_exit``, and the forced unwind
#: through a ``noexcept`` C++ frame calls ``std::terminate``. In ``llamafactory-cli chat`` the thread is
#: LLaMA-Factory's daemon generate thread tearing down its kwargs; in a torchrun rank it is a gloo worker
#: (``ProcessGroupGloo::runLoop``) destroying a DeepSpeed ZeRO-3 ``AsyncAllgatherWork`` while the process group,
#: still referenced after ``destroy_process_group``, is collected. No frame of the plugin is on either stack.
SHUTDOWN_ABORT = "terminate called without an active exception"


def chat_cli_ended(returncode: int, stdout: str, replies: int) -> bool:
    """Whether a ``llamafactory-cli chat`` run fed ``replies`` prompts and ``exit`` ended as it should: exit status 0,
    or SIGABRT at interpreter shutdown *after* every reply was printed and the next prompt shown (vanilla
    LLaMA-Factory 0.9.5 + torch 2.11 does that too: :data:`SHUTDOWN_ABORT` in 2 of 9 runs of a plain recipe with
    ``DYNCOT_DISABLE=1`` here, and in 1 of 8 more; the chat loop has returned by then, so no reply is affected)."""
    if returncode == 0:
        return True
    return returncode == -6 and stdout.count("Assistant: ") == replies and stdout.rstrip().endswith("User:")


def train_ended(returncode: int, output: str) -> bool:
    """Whether a ``llamafactory-cli train`` run (its stdout and stderr together) ended as it should: exit status 0, or
    a torchrun run one of whose ranks died of :data:`SHUTDOWN_ABORT` *after* its training completed, with no Python
    traceback in between (torch 2.11's gloo teardown race: 1 of 13 two-node runs here, once in CI). torchrun then
    reports the rank as failed; what the run wrote is the caller's to check, as after any run."""
    if returncode == 0:
        return True
    done = output.rfind("Training completed.")
    abort = output.find(SHUTDOWN_ABORT, done) if done >= 0 else -1
    return abort > done and "Traceback (most recent call last)" not in output[done:abort]


def offline_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` plus the offline/quiet settings a test run needs, plus ``extra``."""
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "WANDB_DISABLED": "true",
            "WANDB_MODE": "disabled",
            "DISABLE_VERSION_CHECK": "1",
            "CUDA_VISIBLE_DEVICES": env.get("CUDA_VISIBLE_DEVICES", ""),
            "FORCE_TORCHRUN": env.get("FORCE_TORCHRUN", "0"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if extra:
        env.update(extra)
    return env


def _tail(text: str | bytes | None, n: int = 4000) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text[-n:]


def run_llamafactory(
    cmd: str,
    config: dict[str, Any],
    workdir: str | Path,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    config_name: str | None = None,
) -> subprocess.CompletedProcess:
    """Write ``config`` as YAML in ``workdir`` and run ``llamafactory-cli <cmd> <yaml>`` there.

    ``env`` entries are added on top of :func:`offline_env` (CPU only, offline, no wandb; set
    ``CUDA_VISIBLE_DEVICES`` in ``env`` to use a GPU). Returns the completed process (text stdout/stderr);
    raises :class:`LlamaFactoryRunError` with the tails of stdout/stderr on a non-zero exit or timeout (a ``train`` run
    that :func:`train_ended` accepts is returned: a rank that died in torch's teardown after training).
    """
    import yaml

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    yaml_path = workdir / (config_name or f"{cmd}_config.yaml")
    yaml_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    argv = [llamafactory_cli(), cmd, str(yaml_path)]
    try:
        proc = subprocess.run(
            argv, cwd=workdir, env=offline_env(env), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        fake = subprocess.CompletedProcess(argv, -1, _tail(exc.stdout), _tail(exc.stderr))
        raise LlamaFactoryRunError(
            f"`{' '.join(argv)}` timed out after {timeout}s\n--- stdout tail ---\n{fake.stdout}"
            f"\n--- stderr tail ---\n{fake.stderr}",
            fake,
        ) from exc
    if not (train_ended(proc.returncode, proc.stdout + proc.stderr) if cmd == "train" else proc.returncode == 0):
        raise LlamaFactoryRunError(
            f"`{' '.join(argv)}` failed with exit code {proc.returncode}\n--- stdout tail ---\n{_tail(proc.stdout)}"
            f"\n--- stderr tail ---\n{_tail(proc.stderr)}",
            proc,
        )
    return proc
