#!/usr/bin/env bash
# The GPU path in one run (under 4 minutes on one H100/H200-class GPU), on an offline machine that has Python 3.12,
# torch 2.11 and transformers but neither LLaMA-Factory nor DeepSpeed:
#   1. installs the pinned stack from a folder of wheels (benchmarks/make_gpu_wheels.sh builds it) into a venv that
#      keeps the machine's torch, and the plugin from this working tree;
#   2. runs benchmarks/gpu_check.py: bench_dynamic.py at Qwen2-VL-2B's shape in bf16 (time and CUDA peak-memory
#      ratios), a `llamafactory-cli train` dynamic LoRA run of a random Qwen2.5-VL-7B (real widths, depth cut) in
#      bf16 with the training-time evaluation, and one summary.
#
#   bash benchmarks/gpu_check.sh --wheels .gpu_wheels         # the GPU machine
#   bash benchmarks/gpu_check.sh --tiny                       # dry run: tiny shapes, CPU allowed, installed stack
#   bash benchmarks/gpu_check.sh --tiny --wheels DIR          # dry run of the installation path too
# Options: --work DIR (default: a temp dir), --python PY (the machine's python, default python3; --tiny: python),
# --json PATH (the summary as JSON); anything after `--` goes to gpu_check.py (e.g. -- --layers 28).
set -euo pipefail
cd "$(dirname "$0")/.."
TINY=0; WHEELS=""; WORK=""; PY=""; JSON=""; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=1 ;;
    --wheels) WHEELS="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    --python) PY="$2"; shift ;;
    --json) JSON="$2"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$TINY" = 1 ] || [ -n "$WHEELS" ] || WHEELS=.gpu_wheels
PY="${PY:-$([ "$TINY" = 1 ] && echo python || echo python3)}"
WORK="${WORK:-$(mktemp -d -t dyncot_gpu_check.XXXXXX)}"
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_DISABLED=true TOKENIZERS_PARALLELISM=false
export DISABLE_VERSION_CHECK=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1

ARGS=(--work "$WORK")
[ "$TINY" = 1 ] && ARGS+=(--tiny) || ARGS+=(--device cuda)
[ -n "$JSON" ] && ARGS+=(--json "$JSON")

if [ -n "$WHEELS" ]; then
  [ -d "$WHEELS" ] || { echo "gpu_check.sh: no wheel folder $WHEELS (build it with benchmarks/make_gpu_wheels.sh)" >&2; exit 2; }
  start=$(date +%s)
  VENV="$WORK/venv"
  "$PY" -m venv --system-site-packages "$VENV"
  # A venv made from a venv (the machine's python may be one) sees the base interpreter's site-packages, not the
  # ones torch is in: add the machine python's own site dirs, after the venv's, so that the pinned wheels win.
  SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  "$PY" - "$SITE/_machine_site.pth" <<'EOF'
import site, sys
dirs = [d for d in site.getsitepackages() + [site.getusersitepackages()] if d]
open(sys.argv[1], "w").write("import site; list(map(site.addsitedir, %r))\n" % dirs)  # one line: site exec()s it
EOF
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  if [ ${#wheels[@]} -gt 0 ]; then
    "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-compile "${wheels[@]}"
  fi
  # the plugin as it is in this working tree (hatchling from the wheels, or the machine's)
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile .
  "$VENV/bin/python" -c "import torch, transformers, llamafactory, dyncot_plugin" \
    || { echo "gpu_check.sh: the installed stack does not import" >&2; exit 1; }
  export PATH="$VENV/bin:$PATH"
  PY="$VENV/bin/python"
  ARGS+=(--install-s "$(( $(date +%s) - start ))")
fi
exec "$PY" benchmarks/gpu_check.py "${ARGS[@]}" "${EXTRA[@]}"
