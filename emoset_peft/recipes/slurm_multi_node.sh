#!/bin/bash
# emoset-peft recipes cp slurm_multi_node.sh . && sbatch slurm_multi_node.sh
# Trains one recipe on 2 nodes x 8 GPUs: SLURM starts one launcher per node, accelerate starts
# one process per GPU, and machine 0's address is the rendezvous point.
#SBATCH --job-name=emoset-peft
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
set -euo pipefail
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=29500
RECIPE=${RECIPE:-vit_lora}  # a packaged recipe name, or a YAML file
srun bash -c 'accelerate launch \
    --num_machines "$SLURM_NNODES" --num_processes $((SLURM_NNODES * 8)) \
    --machine_rank "$SLURM_NODEID" --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
    --multi_gpu --mixed_precision bf16 --rdzv_backend static \
    -m emoset_peft train --config '"$RECIPE"' data.root=${EMOSET_ROOT:-/data/EmoSet-118K} \
    output_dir=runs/${SLURM_JOB_ID}'
