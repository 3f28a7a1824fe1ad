#!/usr/bin/env bash
# The main job on the built-in default: 2 processes, DeepSpeed ZeRO-3, tiny Qwen3-MoE, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-outputs/demo}
.venv/bin/torchrun --nproc_per_node=2 --master_port=${MASTER_PORT:-29502} train_distributed_Chameleons.py \
  --config config_tiny_cpu.json --deepspeed ds_config_zero3_optimized.json \
  --ablation_config context_only --output_dir "$out" --overwrite_output_dir \
  --max_epochs 2 --early_stopping_patience 3 --early_stopping_threshold 0.001 \
  --val_ratio 0.1 --prompt_style simple --max_samples_per_user 4 --sample_seed 42
echo
echo "log:   $out/training_logs/detailed_training_log.txt"
echo "plot:  $out/training_logs/loss_curve.png"
echo "model: $out (AutoModelForCausalLM.from_pretrained)"
