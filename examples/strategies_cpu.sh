#!/usr/bin/env bash
# The paper's table on the CPU demo set: SFT, Fine-tune-CoT, multi-task and Dynamic CoT trained with one seed, each
# predicted on the held-out posts (Dynamic CoT in its three thinking modes), then one `dyncot-eval table` with every
# difference against Fine-tune-CoT and its paired bootstrap 95 % interval. README "Strategies side by side" shows its
# output, the time it took and the machine.
#  1. the demo set (`dyncot-data synth-demo-data`, whatever it writes: the demo recipes name its datasets) and a tiny
#     random Qwen2-VL whose tokenizer is trained on it, as examples/demo_cpu.sh builds them;
#  2. per strategy, a training with the demo's recipe (examples/tiny_synth_dyncot_cpu.yaml), only dyncot_strategy
#     changed (outside dynamic also without its target share, a dynamic-only key), so that the runs differ in the
#     strategy alone; then its predictions on the held-out posts (examples/tiny_synth_predict_cpu.yaml): sft, cot and
#     multitask as the model decodes by itself (dyncot_think=greedy), dynamic with dyncot_think auto, always, never.
#     The four strategies run JOBS at a time (default 2: each run is single-threaded);
#  3. dyncot-eval table: rows are the six prediction runs, the baseline is cot (Fine-tune-CoT, the paper's reference
#     for the reasoning length); Markdown on stdout, and table.md/.csv/.tex/.json under $OUT.
# Environment: OUT (default outputs/strategies), EPOCHS (default: the recipe's num_train_epochs), SEED (default 42),
# RESAMPLES (default 1000), JOBS (default 2), MAX_SAMPLES (training posts per strategy, default all), MODEL (a tiny
# Qwen2-VL to start from instead of building one; the test suite passes its shared one). Seeds and one thread per
# run: the same numbers on every run on the same kind of CPU, whatever JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_DISABLED=true
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
OUT="${OUT:-outputs/strategies}"
SEED="${SEED:-42}"
RESAMPLES="${RESAMPLES:-1000}"
JOBS="${JOBS:-2}"
TRAIN_RECIPE=examples/tiny_synth_dyncot_cpu.yaml
PREDICT_RECIPE=examples/tiny_synth_predict_cpu.yaml
TRAIN_ARGS=()
if [ -n "${EPOCHS:-}" ]; then TRAIN_ARGS+=("num_train_epochs=$EPOCHS"); fi
if [ -n "${MAX_SAMPLES:-}" ]; then TRAIN_ARGS+=("max_samples=$MAX_SAMPLES"); fi
rm -rf "$OUT/failed"
mkdir -p "$OUT"
start=$SECONDS
step() { echo "== $1   [$((SECONDS - start)) s]"; }

# one llamafactory-cli run; its log is kept, and on failure its tail is shown and the strategy marked failed
run_lf() {
    local log="$1"; shift
    if ! llamafactory-cli train "$@" > "$log" 2>&1; then
        tail -40 "$log"
        mkdir -p "$OUT/failed" && touch "$OUT/failed/$(basename "$log" .log)"
        return 1
    fi
}

MODEL_DIR="${MODEL:-$OUT/model}"
step "1/3 demo data ($OUT/data) and a tiny random Qwen2-VL ($MODEL_DIR)"
dyncot-data synth-demo-data -o "$OUT/data" > /dev/null
if [ -z "${MODEL:-}" ]; then
    dyncot-tiny-model "$MODEL_DIR" --corpus-from "$OUT/data" --hidden-size 128 --num-layers 4 > /dev/null 2>&1
fi
# the datasets the demo recipes train and predict on, and their files (for the table's gold and unseen columns)
read -r TRAIN_FILE EVAL_FILE < <(python - "$TRAIN_RECIPE" "$PREDICT_RECIPE" "$OUT/data" <<'EOF'
import json, sys, yaml
train, predict, data = sys.argv[1:4]
info = json.load(open(f"{data}/dataset_info.json"))
names = yaml.safe_load(open(train))["dataset"], yaml.safe_load(open(predict))["eval_dataset"]
print(*(f"{data}/{info[n]['file_name']}" for n in names))
EOF
)

# one strategy: its training, then its prediction runs
strategy() {
    local s=$1 extra=() modes=(greedy)
    if [ "$s" = dynamic ]; then modes=(auto always never); else extra=(dyncot_target_cot_ratio=null); fi
    step "2/3 $s: llamafactory-cli train $TRAIN_RECIPE dyncot_strategy=$s"
    run_lf "$OUT/train_$s.log" "$TRAIN_RECIPE" dyncot_strategy="$s" "${extra[@]}" "${TRAIN_ARGS[@]}" seed="$SEED" \
        model_name_or_path="$MODEL_DIR" dataset_dir="$OUT/data" output_dir="$OUT/$s" plot_loss=false || return 1
    for think in "${modes[@]}"; do
        local name=$s
        if [ "$s" = dynamic ]; then name=dynamic-$think; fi
        step "2/3 $name: llamafactory-cli train $PREDICT_RECIPE dyncot_think=$think"
        run_lf "$OUT/predict_$name.log" "$PREDICT_RECIPE" model_name_or_path="$OUT/$s" dataset_dir="$OUT/data" \
            dyncot_think="$think" output_dir="$OUT/pred_$name" seed="$SEED" || return 1
    done
    step "2/3 $s: done"
}

trap 'jobs -p | xargs -r kill 2>/dev/null' EXIT  # an interrupted script leaves no run behind
for s in dynamic multitask cot sft; do  # the longest first
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
    strategy "$s" &
done
wait
if [ -d "$OUT/failed" ]; then echo "failed: $(ls "$OUT/failed" | tr '\n' ' ')(logs in $OUT)"; exit 1; fi

RUNS=()
for name in sft cot multitask dynamic-auto dynamic-always dynamic-never; do
    RUNS+=("$name=$OUT/pred_$name/generated_predictions.jsonl")
done
step "3/3 dyncot-eval table ${RUNS[*]} --baseline cot"
dyncot-eval table "${RUNS[@]}" --baseline cot --dataset "$EVAL_FILE" --train "$TRAIN_FILE" \
    --resamples "$RESAMPLES" --output "$OUT/table"
echo "done in $((SECONDS - start)) s (epochs: ${EPOCHS:-as in the recipe}, seed $SEED, $JOBS runs at a time)"
