"""`--use_cuda_graphs`: the transformer's forward captured once per input shape and replayed as a CUDA graph.

A generation calls the transformer with the same shapes at every step (two calls a step with guidance), so the
whole forward, a few thousand kernel launches, can be recorded once and replayed: the CPU no longer issues each
kernel, which matters where the kernels are short (small models, small resolutions) and hardly at all where they
are long (the 2B at 720p spends about 3 s a forward on the GPU; BENCHMARKS.md has the figures).

torch has the parts (`torch.cuda.CUDAGraph`, `torch.cuda.graph`) but no wrapper for an inference forward with
keyword arguments: `torch.cuda.make_graphed_callables` takes positional tensors only and records a backward too,
and `torch.compile(mode="reduce-overhead")` would also recompile the blocks our own compilation
(`models/compile.py`) already compiles. So this module keeps, per call signature, static input buffers, one graph and
its output; a call copies its tensors in and replays.

Not with anything that talks to the CPU inside the forward: the step cache (it reads a number from the GPU every
step), offloading (host copies), context parallelism (collectives of another process group). `generation/runner.py`
refuses those pairs before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# Calls run eagerly before capture, on a side stream: the first compiles and autotunes, the rest settle the
# allocator, so the recording holds the steady-state kernels (as PyTorch's CUDA graph notes advise).
WARMUP_CALLS = 2


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, Any]  # the static tensors the graph reads, and the non-tensor arguments as given
    output: tuple[torch.Tensor, ...]


def _signature(kwargs: dict[str, Any]) -> tuple:
    """What must match for a recorded graph to serve a call: each tensor's shape, dtype and device, and every
    other argument's value."""
    return tuple(
        (name, (tuple(v.shape), v.dtype, v.device) if isinstance(v, torch.Tensor) else v)
        for name, v in sorted(kwargs.items())
    )


class GraphedForward:
    """Replaces `module.forward`: the first calls of a signature run eagerly, the next is recorded, and every later
    one replays the recording. Outputs are copies, so a caller may keep one across calls (guidance keeps the
    conditional prediction while the unconditional one runs)."""

    def __init__(self, module: torch.nn.Module):
        self.forward = module.forward
        self.pool = torch.cuda.graph_pool_handle()  # one memory pool for every shape's graph
        self.graphs: dict[tuple, _Graph] = {}
        self.calls: dict[tuple, int] = {}

    def __call__(self, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        key = _signature(kwargs)
        recorded = self.graphs.get(key)
        if recorded is None:
            self.calls[key] = self.calls.get(key, 0) + 1
            if self.calls[key] <= WARMUP_CALLS:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    output = self.forward(**kwargs)
                torch.cuda.current_stream().wait_stream(stream)
                return output
            recorded = self.graphs[key] = self._record(kwargs)
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                recorded.inputs[name].copy_(value)
        recorded.graph.replay()
        return tuple(t.clone() for t in recorded.output)

    def _record(self, kwargs: dict[str, Any]) -> _Graph:
        inputs = {name: v.clone() if isinstance(v, torch.Tensor) else v for name, v in kwargs.items()}
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = self.forward(**inputs)
        return _Graph(graph, inputs, tuple(output))


def enable_cuda_graphs(transformer: torch.nn.Module) -> None:
    """Record `transformer`'s forward as CUDA graphs, one per input signature (`return_dict=False` calls only: the
    pipeline's and training's `denoise` make no other)."""
    if not torch.cuda.is_available():
        raise ValueError("--use_cuda_graphs records GPU kernels, and there is no GPU here: drop it.")
    transformer.forward = GraphedForward(transformer)
