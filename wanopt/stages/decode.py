"""The streaming VAE decode of Matrix-Game-2 made fast, one function per step, applied after the DiT stages.

Each works on the pipeline's StreamingDecoder (wanopt.vae), whose steady decode (every block after a video's first:
3 latent frames, the carried cache in its steady form) is a function of tensors, `decode_steady_frames`. The first
block of a video always decodes frame by frame as upstream does: its cache is still filling (first-chunk paths).

  decode_channels_last  the decoder's weights and activations in channels-last 3-D layout, cuDNN's algorithm
                        search on for its convolutions (scoped to the decode)
  decode_compile        the steady decode compiled once at its static shapes
  decode_cuda_graphs    the steady decode as one CUDA graph that writes the carried cache in place
  decode_overlap        block b's decode on a second CUDA stream while block b+1's DiT runs
"""

from __future__ import annotations

import contextlib

import torch

from ..vae import StreamingDecoder, decode_steady_frames


def _decoder(pipe) -> StreamingDecoder:
    decoder = getattr(pipe, "decoder", None)
    if decoder is None:
        raise TypeError("the decode stages need a pipeline with a StreamingDecoder attached (an end-to-end workload "
                        "such as mg2-universal-e2e, or pipe.attach_decoder(StreamingDecoder(build_vae(...))))")
    return decoder


def _retype(decoder, cls):
    """Add a decode stage's behaviour to the decoder's class (stages compose: each mixes in before the last)."""
    decoder.__class__ = type(f"{cls.__name__}_{type(decoder).__name__}", (cls, type(decoder)), {})


@contextlib.contextmanager
def cudnn_benchmark():
    """cuDNN's algorithm search on, and back as it was after (the other cuDNN settings untouched)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class ChannelsLastDecoding:
    def decode_block(self, latents):
        with cudnn_benchmark():
            return super().decode_block(latents)

    def layout(self, x):
        return x.contiguous(memory_format=torch.channels_last_3d)


def decode_channels_last(pipe):
    """The VAE decoder in channels-last 3-D layout (N, T, H, W, C in memory), the layout Hopper's tensor-core
    convolutions read without transposes; cuDNN benchmarks its algorithms per shape (on only inside the decode).
    Exact math; other algorithms sum in another order. Should buy: the fp16 3-D convolutions that are most of the
    decode's time, run without layout conversions."""
    decoder = _decoder(pipe)
    for m in decoder.vae.modules():  # 3-D convolutions, and the 2-D ones of the spatial upsamplers
        layout = {torch.nn.Conv3d: torch.channels_last_3d, torch.nn.Conv2d: torch.channels_last}.get(type(m))
        if layout is None and isinstance(m, torch.nn.Conv3d):
            layout = torch.channels_last_3d
        if layout is not None:
            m.weight.data = m.weight.data.contiguous(memory_format=layout)
    _retype(decoder, ChannelsLastDecoding)
    return pipe


class CompiledDecoding:
    def decode_steady(self, x):
        out, self._cache = self.steady_fn(self.vae.decoder, x, self._cache)
        self.latent_frames += x.size(2)
        return out


def decode_compile(pipe, mode: str | None = None):
    """The steady decode (3 latent frames through the whole decoder, cache in, cache out) compiled by
    torch.compile at its static shapes: Inductor fuses the RMS norms, SiLUs, pads and cache slices around the
    convolutions. One compile per video size; the first block stays eager. Upstream compiles its decoder with
    mode="max-autotune-no-cudagraphs" (minutes of autotuning at first use); `mode` defaults to Inductor's default.
    Exact math; fused elementwise ops round once instead of per op."""
    decoder = _decoder(pipe)
    decoder.steady_fn = torch.compile(decode_steady_frames, dynamic=False, mode=mode)
    _retype(decoder, CompiledDecoding)
    return pipe


class GraphedDecoding:
    graph = None

    def decode_steady(self, x):
        if self.graph is None or self.graph_key != self._key(x):
            self._capture(x)
        elif any(c is not s for c, s in zip(self._cache, self.static_cache)):  # a new video's first steady block
            self._adopt_cache()
        self.static_x.copy_(x)
        self.graph.replay()
        self.latent_frames += x.size(2)
        return self.static_out

    def _key(self, x):
        return (tuple(x.shape), x.dtype, tuple(None if c is None else tuple(c.shape) for c in self._cache))

    def _capture(self, x):
        """Warm up on copies (the video's cache is not advanced), then capture: the steady decode reads the static
        cache and, at its end, writes the new cache into it, so each replay carries the video on."""
        step = getattr(self, "steady_fn", decode_steady_frames)
        self.static_x = x.clone()
        self.static_cache = [None if c is None else c.clone() for c in self._cache]  # None: a slot never used
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # compile / autotune and allocator warm-up outside the capture
                step(self.vae.decoder, self.static_x, [None if c is None else c.clone() for c in self.static_cache])
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            out, new = step(self.vae.decoder, self.static_x, self.static_cache)
            for old, fresh in zip(self.static_cache, new):
                if fresh is not old:  # every slot in use is a new tensor each frame
                    old.copy_(fresh)
        self.static_out = out
        self.graph_key = self._key(x)
        self._adopt_cache()

    def _adopt_cache(self):
        """The video's cache as it stands now into the graph's buffers, which hold it from here on."""
        for static, current in zip(self.static_cache, self._cache):
            if static is not None:
                static.copy_(current)
        self._cache[:] = self.static_cache


def decode_cuda_graphs(pipe):
    """The steady decode of a block as one CUDA graph (about 150 convolution and elementwise launches per latent
    frame become one replay); the carried cache lives in static buffers the graph rewrites in place. Exact: the
    same kernels (compiled ones where 10_decode_compile is on). On a CPU it changes nothing (no graphs)."""
    decoder = _decoder(pipe)
    if pipe.device.type == "cuda":
        _retype(decoder, GraphedDecoding)
    return pipe


def decode_overlap(pipe):
    """Decode block b on a second CUDA stream while block b+1's DiT runs on the main one (the pipeline's
    `next_frames` then returns the frames of the block before; `flush()` the last). Exact: the same kernels. Should
    buy: the decode hides in the DiT's idle gaps and under its memory-bound kernels, so a block period tends to the
    longer of the two rather than their sum. The first block still decodes at once (its latency is what a player
    waits for). On a CPU the same order of work runs on one stream."""
    _decoder(pipe)
    pipe.decode_overlap = True
    pipe.decode_stream = torch.cuda.Stream(device=pipe.device) if pipe.device.type == "cuda" else None
    return pipe


__all__ = ["decode_channels_last", "decode_compile", "decode_cuda_graphs", "decode_overlap"]
