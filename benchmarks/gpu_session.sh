#!/usr/bin/env bash
# The GPU measurements behind BENCHMARKS.md, in groups that each fit one device call (< 10 minutes).
#   bash benchmarks/gpu_session.sh train|small|encode|generate|attention|generate_flash4|h200_14b|fsdp|deepspeed|deepspeed_more|offload|fsdp_profile|workstation|workstation_levers|workstation_lean|workstation_capped|workstation_compiled|long_video [DATA]
# (fsdp also reads TINY_DATA: a prepared tiny-preset folder, e.g. the demo sample in ~/.cache/cosmos_v2w_diffusers)
# Each row runs in its own process (clean allocator, its own peak); results land in $OUT or benchmarks/results/.
set -uo pipefail
group=$1
data=${2:-/tmp/cosmos_bench/data}
tb="python benchmarks/train_step.py --data $data"
# issue 22's rows (workstation, workstation_levers): LoRA rank 16, capped at N GiB of this GPU
cap() { python -c "import torch; print(round($1 * 2**30 / torch.cuda.get_device_properties(0).total_memory, 4))"; }
lora="--train_architecture lora --lora_rank 16 --cache_latents"
lean="$lora --base_precision fp8 --low_vram"
row14() { $tb --steps 2 --memory_fraction "$(cap $2)" --name $1 -- --model 14B $lean --cache_windows_per_clip 1 "${@:3}"; }
row2() { $tb --memory_fraction "$(cap $2)" --name $1 -- --model 2B $lean --cache_windows_per_clip 2; }
lever() { $tb --name $1 -- --model 2B $lora --cache_windows_per_clip 2 "${@:2}"; }
lanes() {  # each lane on its own GPU, as many at once as the host has GPUs (in waves where it has fewer)
  local gpus gpu=0
  gpus=$(nvidia-smi -L | wc -l)
  for lane in "$@"; do
    (export CUDA_VISIBLE_DEVICES=$gpu HF_DATASETS_CACHE=/tmp/cosmos_bench/datasets_$gpu; $lane) \
      > "${OUT:-/tmp}/${group}_$lane.log" 2>&1 &
    gpu=$(((gpu + 1) % gpus))
    if [ $gpu -eq 0 ]; then wait; fi
  done
  wait
}
case $group in
train)  # the must-rows of issue 7 on an 80 GB card, with the defaults
  $tb --name train_step_2b_full_cached -- --model 2B --cache_latents --cache_windows_per_clip 2
  $tb --name train_step_2b_full_on_the_fly -- --model 2B
  $tb --name train_step_2b_lora_cached -- --model 2B --train_architecture lora --cache_latents --cache_windows_per_clip 2
  ;;
small)  # the VAE encode, the cached full step again, and small cards (capped with set_per_process_memory_fraction)
  python benchmarks/vae_encode.py
  $tb --name train_step_2b_full_cached -- --model 2B --cache_latents --cache_windows_per_clip 2
  $tb --name lora_720p_low_vram_24gib --memory_fraction 0.30 -- --model 2B --train_architecture lora --low_vram
  $tb --name lora_480p_low_vram_16gib --memory_fraction 0.20 -- --model 2B --train_architecture lora --low_vram \
      --height 432 --width 768
  ;;
generate)  # 720p generation, whole pipeline
  python benchmarks/inference.py --model 2B --name generation_2b_720p_compiled
  ;;
encode)  # the VAE encode, the on-the-fly step, and the defaults against the unoptimised path (losses, 2B, small size)
  python benchmarks/vae_encode.py
  $tb --name train_step_2b_full_on_the_fly -- --model 2B
  small="--model 2B --num_frames 29 --height 256 --width 448"
  $tb --steps 7 --name losses_default -- $small
  $tb --steps 7 --name losses_unoptimised_bf16 -- $small --no-compile --activation_checkpointing full --ema_device gpu
  $tb --steps 7 --name losses_unoptimised_fp32 -- $small --no-compile --activation_checkpointing full --ema_device gpu \
      --mixed_precision no
  ;;
attention)  # the kernels, then the rows of issue 7's table with FlashAttention-4 (the `flash4` extra installed)
  python benchmarks/attention.py
  $tb --name train_step_2b_lora_cached_flash4 -- --model 2B --train_architecture lora --cache_latents \
      --cache_windows_per_clip 2 --attention_backend flash4
  $tb --name train_step_2b_full_cached_flash4 -- --model 2B --cache_latents --cache_windows_per_clip 2 \
      --attention_backend flash4
  ;;
generate_flash4)  # a forward, kernel by kernel; the whole 720p generation; the on-the-fly step
  python benchmarks/profile_forward.py --attention_backend flash4
  python benchmarks/inference.py --model 2B --attention_backend flash4 --name generation_2b_720p_flash4
  $tb --name train_step_2b_full_on_the_fly_flash4 -- --model 2B --attention_backend flash4
  ;;
h200_14b)  # on nvidia-h200: 14B LoRA at 720p on one GPU (issue 9)
  $tb --steps 2 --name train_step_14b_lora_720p_h200 -- --model 14B --train_architecture lora --cache_latents \
      --cache_windows_per_clip 1 --activation_checkpointing full
  ;;
fsdp)  # FSDP2 on one GPU (the trainer's FSDP2 path), and rows of the 14B table checked with a slice
  fsdp1="accelerate launch --config_file accelerate_configs/fsdp_8gpu.yaml --num_processes 1"
  $fsdp1 benchmarks/check_resume.py --dataset_path "$TINY_DATA" --name fsdp_1gpu
  $fsdp1 benchmarks/train_step.py --data $data --name train_step_2b_full_cached_fsdp2_1gpu_planned -- --model 2B \
      --cache_latents --cache_windows_per_clip 2
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python benchmarks/check_row_14b.py \
      --rows 8:full:4:selective 8:full:8:selective 8:lora:2:full 8:lora:4:selective
  ;;
deepspeed)  # issue 9: ZeRO-2 on one GPU, a 2B step and a checkpoint; the tiny model's exact resume under ZeRO-2 and -3
  # (the `deepspeed` extra installed; TINY_DATA as for fsdp)
  zero="accelerate launch --num_processes 1 --config_file accelerate_configs/deepspeed"
  ${zero}_zero2.yaml benchmarks/train_step.py --data $data --name train_step_2b_full_cached_zero2_1gpu \
      --save_checkpoint -- --model 2B --cache_latents --cache_windows_per_clip 2
  ${zero}_zero2.yaml benchmarks/check_resume.py --dataset_path "$TINY_DATA" --name zero2_1gpu
  ${zero}_zero3.yaml benchmarks/check_resume.py --dataset_path "$TINY_DATA" --name zero3_1gpu
  ;;
deepspeed_more)  # issue 9: ZeRO-3 on one GPU (a 2B step and a checkpoint); ZeRO-2 with 22 blocks keeping attention outputs
  zero="accelerate launch --num_processes 1 --config_file accelerate_configs/deepspeed"
  ${zero}_zero3.yaml benchmarks/train_step.py --data $data --name train_step_2b_full_cached_zero3_1gpu --save_checkpoint \
      -- --model 2B --cache_latents --cache_windows_per_clip 2
  ${zero}_zero2.yaml benchmarks/train_step.py --data $data --name train_step_2b_full_cached_zero2_1gpu_selective22 \
      -- --model 2B --cache_latents --cache_windows_per_clip 2 --selective_checkpointing_blocks 22
  ;;
offload)  # issue 20: both CPU offloads generate what the GPU pipeline does (tiny), and their peaks at 2B 720p
  HF_HUB_OFFLINE=1 python -m pytest -q -p no:cacheprovider --noconftest tests/test_offload_gpu.py  # conftest needs scikit-video
  python benchmarks/offload.py --steps 3
  ;;
fsdp_profile)  # issue 19: where FSDP2's per-GPU overhead goes, on one GPU against the plain path (same selective blocks)
  same="--model 2B --cache_latents --cache_windows_per_clip 2 --selective_checkpointing_blocks 20"
  $tb --profile --name profile_2b_plain_1gpu -- $same
  accelerate launch --config_file accelerate_configs/fsdp_8gpu.yaml --num_processes 1 benchmarks/train_step.py \
      --data $data --profile --name profile_2b_fsdp2_1gpu -- $same
  ;;
workstation)  # issue 22: LoRA rank 16 with the frozen base in fp8 and --low_vram, each run capped at the goal of
  # the card it stands for (set_per_process_memory_fraction of this GPU's memory; the planner plans for the cap
  # and picks block swap and --checkpoint_block_parts where they are needed), so a row that meets its goal meets
  # its must; a 14B 480p row that misses 30 GiB runs again at its must (46), and 14B 720p runs at its must (76)
  # after its goal. 2B fits 15 GiB (12.8 GiB since the blocks' parts compile apart); at 11 GiB it is refused
  # before loading (13.8 GiB with the headroom). Then --low_vram's speed on the bf16 base (against
  # `workstation_levers`'s plain step). Four lanes, each on its own GPU (its own datasets cache; train_step.py's
  # file lock makes the weights once), as many at once as the host has GPUs.
  lane_a() { row14 lora_14b_720p_one_gpu 46; row14 lora_14b_720p_one_gpu_76gib 76; }
  lane_b() {
    row14 lora_14b_480p_one_gpu 30 --height 432 --width 768 ||
      row14 lora_14b_480p_one_gpu_46gib 46 --height 432 --width 768
  }
  lane_c() { row2 lora_2b_720p_small 15; row2 lora_2b_720p_small_11gib 11; }
  lane_d() {
    HF_HUB_OFFLINE=1 python -m pytest -q -p no:cacheprovider --noconftest tests/test_lean_levers_gpu.py
    lever lever_2b_720p_bf16_low_vram --low_vram
  }
  lanes lane_a lane_b lane_c lane_d
  ;;
workstation_levers)  # issue 22: the levers one at a time at 2B 720p (uncapped), and the fp8 base's loss curves
  # on the same draws (seed 0) against the bf16 base's (random 2B weights: benchmarks/quantized_quality.py
  # measures generation quality on the trained tiny model)
  quality() {
    $tb --steps 40 --name quality_2b_lora_$1 -- --model 2B $lora --base_precision $1 --num_frames 29 --height 256 \
      --width 448 --cache_windows_per_clip 2
  }
  lane_a() { lever lever_2b_720p_bf16_plain; }
  lane_b() { lever lever_2b_720p_fp8 --base_precision fp8; }
  lane_c() { quality bf16; quality fp8; }
  lane_d() { lever lever_2b_720p_bf16_low_vram_parts --low_vram --checkpoint_block_parts; }
  lanes lane_a lane_b lane_c lane_d
  ;;
workstation_lean)  # issue 22: the leanest configurations (fp8 base, --low_vram, block swap, the blocks' parts
  # checkpointed with the projections in slices), uncapped: what they hold is the planner's constant for
  # --checkpoint_block_parts, and whether 2B at 720p can fit a 16 GB card and 14B at 720p a 48 GB one.
  # A lane whose block swap fails runs again without it.
  leanest="--base_precision fp8 --low_vram --checkpoint_block_parts"
  lane_a() {
    lever lever_2b_720p_leanest $leanest --block_swap || lever lever_2b_720p_leanest_no_swap $leanest
  }
  lane_b() {
    $tb --steps 2 --name lever_14b_720p_leanest -- --model 14B $lora $leanest --block_swap --cache_windows_per_clip 1 ||
      $tb --steps 2 --name lever_14b_720p_leanest_no_swap -- --model 14B $lora $leanest --cache_windows_per_clip 1
  }
  lanes lane_a lane_b
  ;;
workstation_capped)  # issue 22: 2B at 720p capped at 15 and 11 GiB, 14B at 720p at 46 (the planner picks the levers),
  # and a 14B generation at 720p capped at 46 GiB (generation must fit where training fits)
  lane_a() { row2 lora_2b_720p_small 15; }
  lane_b() { row2 lora_2b_720p_small_11gib 11; }
  lane_c() { row14 lora_14b_720p_one_gpu 46; }
  lane_d() {  # generation sets expandable segments since the 2B row ran out of memory without (its file's name)
    python benchmarks/inference.py --model 14B --steps 3 --memory_fraction "$(cap 46)" --name generation_14b_720p_46gib
    python benchmarks/inference.py --model 2B --steps 3 --memory_fraction "$(cap 15)" \
      --name generation_2b_720p_15gib_expandable
    python benchmarks/inference.py --model 14B --steps 3 --height 432 --width 768 --memory_fraction "$(cap 30)" \
      --name generation_14b_480p_30gib ||  # out of memory both ways on an H200: BENCHMARKS.md
      python benchmarks/inference.py --model 14B --steps 3 --height 432 --width 768 --memory_fraction "$(cap 30)" \
        --offload_model --name generation_14b_480p_30gib_offload_model
    python benchmarks/inference.py --model 14B --steps 3 --height 432 --width 768 --memory_fraction "$(cap 30)" \
      --group_offload --name generation_14b_480p_30gib_group_offload
  }
  lanes lane_a lane_b lane_c lane_d
  ;;
workstation_compiled)  # issue 22: the blocks' parts compiled on their own and sliced in 8 (2B leanest, profiled;
  # 2B with the parts on the bf16 base, against the lever table's 19.02 s; the GPU gradient tests), and the 14B
  # row at 720p capped at its goal of 46 GiB
  leanest="--base_precision fp8 --low_vram --checkpoint_block_parts --block_swap"
  lane_a() {
    $tb --profile --name lever_2b_720p_leanest_profiled -- --model 2B $lora --cache_windows_per_clip 2 $leanest
    HF_HUB_OFFLINE=1 python -m pytest -q -p no:cacheprovider --noconftest tests/test_lean_levers_gpu.py
    lever lever_2b_720p_bf16_low_vram_parts --low_vram --checkpoint_block_parts
  }
  lane_b() { row14 lora_14b_720p_one_gpu 46; }
  lanes lane_a lane_b
  ;;
long_video)  # issues 42 and 43: CUDA graphs (tiny and 2B 720p, 4 steps), a 6-chunk 2B rollout, the distillation step
  python -m benchmarks.cuda_graphs_tiny
  gen="python benchmarks/inference.py --student_steps 4"
  $gen --name generation_2b_720p_4_steps
  $gen --cuda_graphs --name generation_2b_720p_4_steps_cuda_graphs
  $gen --num_chunks 6 --name generation_2b_720p_6_chunks
  $tb --steps 5 --name distill_step_2b_720p -- --model 2B --distill_steps 4 --cache_latents
  ;;
esac
