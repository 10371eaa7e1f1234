"""Block swap for LoRA runs on one GPU (`--block_swap`): the frozen base weights of the transformer's blocks live
in pinned host memory, and each block's are copied to the GPU while the block before it computes, on a side
stream, then dropped once the block is done. The GPU then holds two blocks' base weights instead of all of them
(14B in bf16: 26.4 GiB -> 1.5 GiB; in fp8 with `--base_precision fp8`: 13.2 -> 0.7).

A block's weights are needed twice a step: in the forward, and in the backward, where activation checkpointing
recomputes the block just before its gradients. So the copies run in forward order and then in reverse: entering
block `i` (forward or recompute) waits for its copy, starts the copy of the block that comes next in that
direction, and drops the block before it in that direction. Autograd runs a block's whole backward before the
recompute of the block below it (its nodes are newer), so that block's weights are no longer needed when they go.

accelerate's `cpu_offload` and diffusers' group offloading move weights per module call, with no prefetch one
block ahead in the backward's order, and FSDP2's `CPUOffloadPolicy` would also move the LoRA weights, their
gradients and the optimizer step to the CPU; this module moves only the frozen base, a block ahead in both passes.
"""

from __future__ import annotations

import torch


class BlockSwap:
    """Holds the frozen tensors (parameters that need no gradient, and buffers) of `blocks` on the host and
    brings one block's onto `device` on `enter`.

    The tensors move to the host at the first `enter`, after accelerate has placed the model on the device.
    `resident` is the indices of the blocks whose tensors are on `device` now: at most the one computing and
    the one prefetched. On a CPU `device` the copies are plain copies (no stream), which keeps the bookkeeping
    testable without a GPU.
    """

    def __init__(self, blocks: torch.nn.ModuleList, device: torch.device):
        self.blocks = list(blocks)
        self.device = device
        self.index = {id(block): i for i, block in enumerate(self.blocks)}
        # Each block's frozen tensors: the parameters that need no gradient, and the buffers.
        self.frozen = [[p for p in b.parameters() if not p.requires_grad] + list(b.buffers()) for b in self.blocks]
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.host: list[list[torch.Tensor]] = []
        self.copies: dict[int, tuple[list[torch.Tensor], torch.cuda.Event | None]] = {}
        self.resident: set[int] = set()
        self.last: int | None = None

    def _move_to_host(self) -> None:
        self.host = [self._to_host(tensors, pin=self.stream is not None) for tensors in self.frozen]
        if self.stream is not None:
            torch.cuda.empty_cache()  # give the blocks' device memory back for the activations

    @staticmethod
    def _to_host(tensors: list[torch.Tensor], pin: bool) -> list[torch.Tensor]:
        """Move a block's frozen tensors to host memory (pinned for asynchronous copies); returns them."""
        host = []
        for tensor in tensors:
            copy = tensor.data.to("cpu", copy=True)
            host.append(copy.pin_memory() if pin else copy)
            tensor.data = host[-1]
        return host

    def _start_copy(self, i: int) -> None:
        """Copy block `i`'s frozen tensors to the device on the side stream (no-op if under way or done)."""
        if i in self.copies or not 0 <= i < len(self.blocks):
            return
        if self.stream is None:
            self.copies[i] = ([t.to(self.device, copy=True) for t in self.host[i]], None)
            return
        with torch.cuda.stream(self.stream):
            copies = [t.to(self.device, non_blocking=True) for t in self.host[i]]
            event = torch.cuda.Event()
            event.record(self.stream)
        self.copies[i] = (copies, event)

    def _drop(self, i: int) -> None:
        """Point block `i`'s tensors back at their host copies; the device copies are freed once autograd and
        the streams that used them are done with them."""
        for tensor, host in zip(self.frozen[i], self.host[i]):
            tensor.data = host
        self.copies.pop(i, None)
        self.resident.discard(i)

    def enter(self, block: torch.nn.Module) -> None:
        """Called as `block` starts computing (its forward, or its recompute in the backward)."""
        if not self.host:
            self._move_to_host()
        i = self.index[id(block)]
        step = -1 if self.last is not None and i == self.last - 1 else 1  # the backward walks the blocks down
        self.last = i
        self._start_copy(i)
        copies, event = self.copies[i]
        if event is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(event)
            for copy in copies:
                copy.record_stream(compute)  # its memory is not reused before the compute stream is done with it
        for tensor, copy in zip(self.frozen[i], copies):
            tensor.data = copy
        self.resident.add(i)
        for j in list(self.resident):
            if j != i and j != i + step:
                self._drop(j)
        self._start_copy(i + step)
        if i + step in self.copies:
            self.resident.add(i + step)
