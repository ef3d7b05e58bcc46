"""Stage 8, CUDA graphs: capture each expert's whole forward once per input shape and replay it.

What changes: the first call with a given shape warms the model up on a side stream and records one CUDA graph of
the full forward (every kernel of every block); later calls copy the inputs into the graph's static buffers,
replay it with a single launch and return a copy of the static output. Both experts share one memory pool (they
never run at the same time). Exact: the same kernels run on the same data.
What it should buy: the CPU launch cost and the gaps between kernels. A T2V step has a few thousand kernels of
milliseconds each, so a graph saves well under 1 %: this stage is here to show where graphs do *not* pay (for
the causal model they do). Needs CUDA; on the CPU the wrapper calls the model directly.
"""

from __future__ import annotations

import torch


class GraphedDiT(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, pool=None):
        super().__init__()
        self.model = model
        self.pool = pool
        self.graphs: dict = {}

    def forward(self, x, t, context):
        if not x.is_cuda:
            return self.model(x, t, context)
        key = tuple((a.shape, a.dtype) for a in (x, t, context))
        if key not in self.graphs:
            self.graphs[key] = self._capture(x, t, context)
        graph, static_in, static_out = self.graphs[key]
        for buf, a in zip(static_in, (x, t, context)):
            buf.copy_(a)
        graph.replay()
        return static_out.clone()

    def _capture(self, x, t, context):
        torch.cuda.empty_cache()  # the graph's pool needs a forward's activations on top of both experts
        static_in = tuple(a.clone() for a in (x, t, context))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: allocator, kernel selection, lazily built tables
                self.model(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.model(*static_in)
        return graph, static_in, static_out

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


def cuda_graphs(pipe):
    pool = torch.cuda.graph_pool_handle() if pipe.device.type == "cuda" else None
    for name, model in list(pipe.experts.items()):
        pipe.experts[name] = GraphedDiT(model, pool)
    return pipe
