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

from .mg2_lean import LeanCausalPipeline


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


# -- Matrix-Game-2: one graph per block shape ---------------------------------------------------------------------


class BlockGraphs:
    """CUDA graphs of a function of tensors, one per key: the first call with a key warms the function up on a side
    stream, records it and replays it; later calls copy their tensors into the recorded inputs and replay.

    The warm-up runs the function for real, and a block's function writes the KV caches; `state` (the caches'
    tensors) is copied before the warm-up and back after the capture, so the replay starts from the same cache as
    an eager call would (with the refresh folded, the first segment reads slots that the second one overwrites)."""

    def __init__(self, state_tensors, pool=None):
        self.state_tensors = state_tensors
        self.pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        self.graphs: dict = {}
        self.capture_s: dict = {}

    def __call__(self, key, fn, tensors):
        from torch.utils._pytree import tree_flatten

        leaves, _ = tree_flatten(tensors)
        if key not in self.graphs:
            self.graphs[key] = self._capture(key, fn, tensors)
        graph, static_leaves, static_out = self.graphs[key]
        for buf, new in zip(static_leaves, leaves):
            if buf.data_ptr() != new.data_ptr():
                buf.copy_(new)
        graph.replay()
        return static_out.clone()

    def _capture(self, key, fn, tensors):
        import time

        from torch.utils._pytree import tree_flatten, tree_map

        start = time.perf_counter()
        static = tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, tensors)
        saved = [t.clone() for t in self.state_tensors()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(static)  # warm-up: compile, cuBLAS and Triton autotuning, lazily built tables
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = fn(static)
        for t, s in zip(self.state_tensors(), saved):
            t.copy_(s)
        del saved
        torch.cuda.synchronize()
        self.capture_s[str(key)] = time.perf_counter() - start
        return graph, tree_flatten(static)[0], out


def causal_cuda_graphs(pipe):
    """Matrix-Game-2 (on the lean pipeline): each block replays one CUDA graph of all its evals, the re-noising
    between them and the cache writes, per block key (first block, cache filling, each steady ring position; the
    folded first eval of stage 08 adds its own); one eval called alone (pipe.velocity) replays its own graph. The
    host prepares a block's tensors (noise, RoPE rows, action windows) before the replay and does nothing between
    its evals. Exact: the same kernels on the same data. Needs CUDA; on the CPU the blocks run eagerly."""
    if not isinstance(pipe, LeanCausalPipeline):
        raise TypeError("causal_cuda_graphs needs the lean Matrix-Game-2 pipeline: apply 03_dtype_hygiene first")
    if pipe.device.type == "cuda":
        pipe.graphs = BlockGraphs(lambda: [t for c in pipe.cache.buffers() for t in (c.k, c.v)])
        pipe.__class__ = GraphedCausalPipeline
    return pipe


class GraphedCausalPipeline(LeanCausalPipeline):
    """The lean pipeline with its blocks and its single evals replayed from BlockGraphs (`pipe.graphs`)."""

    def run_block(self, key, segments, tensors):
        return self.graphs(key, lambda t: self.block_body(segments, t), tensors)

    def eval_velocity(self, xt, t, cond_concat, inputs, segments):
        def one_eval(d):
            return self.model.velocity(d["xt"], d["t"], d["cond"], d["inputs"], self.cache, segments)

        return self.graphs(("eval", self.block_key(segments)), one_eval,
                           {"xt": xt, "t": t, "cond": cond_concat, "inputs": inputs})
