#!/usr/bin/env bash
# CPU demo (about 3 minutes on 2 cores): Dynamic CoT with a target CoT share, through `llamafactory-cli train`.
#  1. write the SYNTHETIC demo set (`dyncot-data synth-demo-data`: hashtags follow from the post's words or from
#     the image colour; 256 training and 48 held-out posts) and a tiny random Qwen2-VL whose tokenizer is trained on it;
#  2. fine-tune it with dyncot_strategy: dynamic, dyncot_target_cot_ratio: 0.5 (examples/tiny_synth_dyncot_cpu.yaml);
#  3. generate on the held-out posts three times: the model decides (dyncot_think=auto: it thinks where its
#     probability of opening the reply with <think>, think_prob, is at least 0.5), always thinks, never thinks;
#  4. print the cot_ratio / γ curve, the keyphrase scores per thinking mode on the image posts, on the text posts
#     and on all posts, and the quality / think-rate frontier of every threshold (dyncot-eval mmkp, from the always
#     and never runs' think_prob).
# Run from anywhere; everything is written under outputs/ in the repository. Seeds and one thread; the figures still
# differ between machines (floating point differs between CPU models and library builds).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_DISABLED=true
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p outputs/demo

echo "== 1/4 synthetic demo data (outputs/demo/data) and a tiny random Qwen2-VL (outputs/tiny-qwen2vl-synth)"
dyncot-data synth-demo-data -o outputs/demo/data
dyncot-tiny-model outputs/tiny-qwen2vl-synth --corpus-from outputs/demo/data --hidden-size 128 --num-layers 4 2>/dev/null

echo "== 2/4 llamafactory-cli train examples/tiny_synth_dyncot_cpu.yaml   (dynamic, target CoT share 0.5)"
llamafactory-cli train examples/tiny_synth_dyncot_cpu.yaml > outputs/demo/train.log 2>&1 \
    || { tail -40 outputs/demo/train.log; exit 1; }
grep "\[dyncot\]" outputs/demo/train.log | sed 's/.*>> //'

echo "== 3/4 llamafactory-cli train examples/tiny_synth_predict_cpu.yaml  (48 held-out posts; think auto, always, never)"
for mode in auto always never; do
    llamafactory-cli train examples/tiny_synth_predict_cpu.yaml dyncot_think=$mode output_dir=outputs/demo/synth_$mode \
        > outputs/demo/predict_$mode.log 2>&1 || { tail -40 outputs/demo/predict_$mode.log; exit 1; }
done

echo "== 4/4 results"
python -m dyncot_plugin.train.report outputs/demo/synth_dynamic
python -c "from dyncot_plugin.tasks.mmkp.synthetic_demo import write_kind_subsets as w; \
w('outputs/demo/data', {m: f'outputs/demo/synth_{m}/generated_predictions.jsonl' for m in ('auto', 'always', 'never')}, \
  'outputs/demo/by_kind')"
for kind in image text; do
    echo "-- the held-out $kind posts only (image: the hashtag follows from the image colour; text: the post names it)"
    dyncot-eval mmkp --no-plot --predictions auto=outputs/demo/by_kind/$kind/auto.jsonl \
        --predictions always=outputs/demo/by_kind/$kind/always.jsonl \
        --predictions never=outputs/demo/by_kind/$kind/never.jsonl --dataset outputs/demo/by_kind/$kind/mmkp_synth_eval.json \
        | sed -n '/^ *CoT /,/^auto chose/p'
done
echo "-- all held-out posts"
dyncot-eval mmkp \
    --predictions auto=outputs/demo/synth_auto/generated_predictions.jsonl \
    --predictions always=outputs/demo/synth_always/generated_predictions.jsonl \
    --predictions never=outputs/demo/synth_never/generated_predictions.jsonl \
    --dataset outputs/demo/data/mmkp_synth_eval.json --train outputs/demo/data/mmkp_synth.json
echo "Plots: outputs/demo/synth_dynamic/training_loss.png, outputs/demo/synth_dynamic/training_cot_ratio.png"
echo "(Synthetic posts: 'image' posts' hashtag follows from the image colour, 'text' posts name their hashtags. Real recipes:"
echo " examples/qwen2vl_*.yaml, examples/qwen2_5vl_7b_*.yaml.)"
