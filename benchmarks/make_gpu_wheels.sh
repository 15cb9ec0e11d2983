#!/usr/bin/env bash
# Build the wheel folder that benchmarks/gpu_check.sh installs on an offline GPU machine (Python 3.12, x86-64,
# torch 2.11 and transformers 5.x already there, no LLaMA-Factory, no DeepSpeed, no package index).
#
#   bash benchmarks/make_gpu_wheels.sh [OUT_DIR]          # default: .gpu_wheels (ignored by git); needs PyPI
#
# What goes in (about 25 MB): the stack constraints.txt pins that such a machine lacks or has at another version
# (llamafactory, transformers, tokenizers, accelerate, datasets, peft, trl, deepspeed), the packages these import
# at run time that such a machine lacks (DEPS below; found by recording the modules a `llamafactory-cli train`
# dynamic run with LoRA and the training-time evaluation imports), and hatchling to build the plugin from the
# working tree there. Versions: constraints.txt's, else the ones installed next to this script's python (the tested
# stack). torch, torchvision, numpy, pandas, pyarrow and the rest of the machine's own stack are kept: the wheels
# are installed with --no-deps into a venv that sees the machine's site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-.gpu_wheels}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
if [ "$OUT" = .gpu_wheels ] && [ -d .git ]; then  # keep the default folder out of `git status` (local setting)
  grep -qxF "/.gpu_wheels/" .git/info/exclude 2>/dev/null || echo "/.gpu_wheels/" >> .git/info/exclude
fi

PINNED="llamafactory transformers tokenizers accelerate datasets peft trl deepspeed"
# Not here although imported when installed: av, jieba, rouge-chinese, opentelemetry (LLaMA-Factory and transformers
# import them only where available; av alone is 40 MB). fsspec: datasets 4.0.0 wants <= 2025.3.0.
DEPS="dill multiprocess fsspec omegaconf hjson pydantic pydantic-core annotated-types
typing-inspection nltk torchdata hatchling trove-classifiers"

version() {  # constraints.txt's pin, else the installed version
  local pin
  pin=$(grep -iE "^$1==" constraints.txt | head -1 | sed -E 's/^[^=]+==([^ #]+).*/\1/') || true
  if [ -n "$pin" ]; then echo "$pin"; else "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; fi
}

PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
--platform manylinux2014_x86_64"
for name in $PINNED $DEPS; do
  spec="$name==$(version "$name")"
  # shellcheck disable=SC2086
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      $PLATFORMS -d "$OUT" "$spec" 2>/dev/null; then
    # sdist only (deepspeed, ...): a pure-Python wheel built here; DeepSpeed's CUDA ops are JIT-built where used
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" "$spec"
  fi
  echo "  $spec"
done
rm -f "$OUT"/*.tar.gz
du -sh "$OUT"
echo "copy $OUT next to the repository on the GPU machine and run: bash benchmarks/gpu_check.sh --wheels $OUT"
