"""Matrix-Game-2 block-autoregressive inference (`pipeline/causal_inference.py::CausalInferencePipeline`).

The video is made block by block (3 latent frames each). For each block, upstream and this pipeline:
  - run the few-step sampler: one DiT eval per timestep of the warped schedule (3 for universal/gta, 4 for
    templerun), every eval writing this block's K/V over the same cache slots; between evals the predicted x0 is
    re-noised with fresh noise to the next timestep;
  - keep the last eval's x0 as the block's latents;
  - run one more eval at t = context_noise (0) on that x0: its output is thrown away, its cache writes (clean K/V
    of the block) are what the next blocks attend to.
Each block's VAE decode, as upstream runs it, is `next_frames` / `stream_frames` with a StreamingDecoder attached
(the end-to-end workload `mg2-universal-e2e`); `next_block` is the DiT alone (`mg2-universal`).
Conditioning (image latent, CLIP tokens, actions) is passed in as tensors; without encoders it is random and seeded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from ..configs import CausalWanConfig, get_mg2_config
from ..models.causal import KVCache
from ..weights import build_causal, warn_random

NUM_TRAIN_TIMESTEPS = 1000


def flow_match_schedule(shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """Upstream `FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True).set_timesteps(1000, training=True)`:
    sigmas = shift·σ / (1 + (shift − 1)·σ) over σ = linspace(1, 0, 1001)[:-1], timesteps = 1000·sigmas (float32)."""
    sigmas = torch.linspace(1.0, 0.0, num_train_timesteps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas, sigmas * num_train_timesteps


def warped_timesteps(step_list, timesteps: torch.Tensor) -> torch.Tensor:
    """`warp_denoising_step`: the yaml's list L picks cat(timesteps, [0])[1000 − L]; a CPU float32 tensor, as
    upstream keeps it (its 0-dim entries multiply device tensors as scalars, no sync)."""
    table = torch.cat([timesteps.cpu(), torch.zeros(1)])
    return table[len(timesteps) - torch.tensor(step_list, dtype=torch.long)]


@dataclass
class CausalState:
    """One video in progress: everything drawn up front, the latents made so far, the block to make next."""

    noise: torch.Tensor  # [1, 16, N, H, W]
    visual_context: torch.Tensor  # [1, clip_tokens, clip_dim]
    cond_concat: torch.Tensor  # [1, 20, N, H, W]
    mouse: torch.Tensor | None  # [1, 1 + 4(N − 1), mouse_dim_in]
    keyboard: torch.Tensor  # [1, 1 + 4(N − 1), keyboard_dim_in]
    output: torch.Tensor  # [1, 16, N, H, W], x0 of the blocks made so far
    generator: torch.Generator  # fresh noise between denoising steps
    num_blocks: int
    block: int = 0


class CausalPipeline:
    """`CausalPipeline("mg2-universal", device="cuda")`: random weights at real size (or `checkpoint=` a released
    safetensors file), one caller-owned KVCache sized once.

    A given checkpoint loads strictly (a missing file, a file that is not safetensors, or any missing, unexpected or
    mis-shaped key is one CheckpointError or FileNotFoundError); without one, the DiT is seeded random, the console
    says so once (RandomWeightsWarning) and `pipe.random_components` is ("dit",), () with a checkpoint, for a
    capture's manifest.

    Drive it one block at a time (the profiling harness):
        state = pipe.start(num_blocks, seed=0)   # noise, conditioning, actions drawn; caches reset
        x0 = pipe.next_block(state)               # one block, see next_block
    or as a stream: `for x0 in pipe.stream(num_blocks): ...`.
    """

    def __init__(self, config: CausalWanConfig | str, *, device=None, dtype=torch.bfloat16, seed: int = 0,
                 checkpoint=None):
        self.config = get_mg2_config(config) if isinstance(config, str) else config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.model = build_causal(self.config, device=self.device, dtype=dtype, seed=seed, checkpoint=checkpoint)
        self.random_components: tuple[str, ...] = () if checkpoint is not None else ("dit",)
        if self.random_components:
            warn_random(f"CausalPipeline({self.config.name!r})", self.random_components,
                        "no checkpoint given; pass checkpoint= a Matrix-Game-2 .safetensors file for real output",
                        stacklevel=2)
        self.cache = KVCache(self.config, device=self.device, dtype=dtype)
        sigmas, timesteps = flow_match_schedule(self.config.timestep_shift)
        self.timesteps = warped_timesteps(self.config.denoising_step_list, timesteps)
        self.sigmas, self.train_timesteps = sigmas.to(self.device), timesteps.to(self.device)
        self.dit_contexts: list = []  # context-manager factories entered around every DiT eval (stages add)

    # -- conditioning --------------------------------------------------------------------------------------------

    def start(self, num_blocks: int, *, seed: int = 0, visual_context=None, cond_concat=None, mouse=None,
              keyboard=None) -> CausalState:
        """Draw the noise of the whole video (N = num_blocks·3 latent frames), random conditioning and actions where
        none are given (seeded), and reset the caches. Given tensors must cover the whole video."""
        self.check_model_dtype()
        c, a = self.config, self.config.action
        n, (h, w), dev = num_blocks * c.num_frame_per_block, c.latent_hw, self.device
        num_actions = 1 + a.vae_time_compression_ratio * (n - 1)
        gen = torch.Generator(device=dev).manual_seed(seed)

        def randn(*shape):
            return torch.randn(shape, generator=gen, device=dev, dtype=self.dtype)

        noise = randn(1, c.out_dim, n, h, w)
        if visual_context is None:
            visual_context = randn(1, c.clip_tokens, c.clip_dim)
        if cond_concat is None:  # mask (1 on frame 0, as upstream) ‖ a random stand-in for the image latent
            mask = torch.zeros(1, 4, n, h, w, device=dev, dtype=self.dtype)
            mask[:, :, 0] = 1
            cond_concat = torch.cat([mask, randn(1, c.in_dim - c.out_dim - 4, n, h, w)], dim=1)
        if mouse is None and a.enable_mouse:  # camera deltas of 0 or ±0.1 per video frame
            mouse = 0.1 * torch.randint(-1, 2, (1, num_actions, a.mouse_dim_in), generator=gen, device=dev)
        if keyboard is None:  # multi-hot keys
            keyboard = torch.randint(0, 2, (1, num_actions, a.keyboard_dim_in), generator=gen, device=dev)
        for name, t, frames in (("cond_concat", cond_concat, cond_concat.size(2)),
                                ("mouse", mouse, None if mouse is None else mouse.size(1)),
                                ("keyboard", keyboard, keyboard.size(1))):
            want = n if name == "cond_concat" else num_actions
            if frames is not None and frames < want:
                raise ValueError(f"{name} covers {frames} {'latent' if name == 'cond_concat' else 'video'} frames; "
                                 f"{num_blocks} blocks need {want}")
        self.cache.reset()
        return CausalState(noise, visual_context.to(dev, self.dtype), cond_concat.to(dev, self.dtype),
                           None if mouse is None else mouse.to(dev, self.dtype), keyboard.to(dev, self.dtype),
                           torch.zeros_like(noise), gen, num_blocks)

    def check_model_dtype(self):
        """The pipeline casts every DiT input to its dtype; a model cast since (pipe.model.float()) would get inputs
        it cannot take, so say it before the first eval rather than inside the patch convolution."""
        model_dtype = self.model.patch_embedding.weight.dtype
        if model_dtype != self.dtype:
            raise TypeError(f"pipe.model's parameters are {model_dtype} but the pipeline was built with dtype="
                            f"{self.dtype} and casts the DiT inputs to it. Build CausalPipeline(..., dtype="
                            f"{model_dtype}) instead of casting pipe.model afterwards.")

    def block_conditions(self, state: CausalState, s: int) -> dict:
        """Upstream `cond_current`: this block's cond_concat frames, the CLIP tokens, and the actions of every video
        frame up to the end of the block (1 + 4·(s + F − 1))."""
        f = self.config.num_frame_per_block
        last = 1 + self.config.action.vae_time_compression_ratio * (s + f - 1)
        return dict(visual_context=state.visual_context, cond_concat=state.cond_concat[:, :, s:s + f],
                    mouse_cond=None if state.mouse is None else state.mouse[:, :last],
                    keyboard_cond=state.keyboard[:, :last])

    # -- sampler -------------------------------------------------------------------------------------------------

    def sigma_at(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """σ of the training timestep nearest to each entry of t (upstream's argmin lookup, on the device)."""
        timesteps, sigmas = self.train_timesteps.to(dtype), self.sigmas.to(dtype)
        return sigmas[torch.argmin((timesteps[None] - t.flatten()[:, None]).abs(), dim=1)]

    def flow_to_x0(self, v: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Upstream `_convert_flow_pred_to_x0`: x0 = x_t − σ_t·v in float64, σ per frame; returned in v's dtype."""
        sigma = self.sigma_at(t, torch.float64).view(1, 1, -1, 1, 1)
        return (xt.double() - sigma * v.double()).to(v.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Upstream `FlowMatchScheduler.add_noise`: (1 − σ)·x0 + σ·ε in float32, returned in the noise's dtype."""
        sigma = self.sigma_at(t, torch.float32).view(1, 1, -1, 1, 1)
        return ((1 - sigma) * x0 + sigma * noise).type_as(noise)

    def velocity(self, xt: torch.Tensor, t: torch.Tensor, cond: dict, start_frame: int) -> torch.Tensor:
        """One DiT eval with the stages' contexts entered: the model's flow velocity (it writes this block's K/V)."""
        with contextlib.ExitStack() as stack:
            for make_context in self.dit_contexts:
                stack.enter_context(make_context())
            return self.model(xt.to(self.dtype), t, **cond, cache=self.cache,
                              current_start=start_frame * self.config.frame_seq_length)

    def dit(self, xt: torch.Tensor, t: torch.Tensor, cond: dict, start_frame: int) -> torch.Tensor:
        """One DiT eval as upstream's WanDiffusionWrapper runs it: the velocity, then x0 (also for the cache refresh,
        whose x0 nobody reads)."""
        return self.flow_to_x0(self.velocity(xt, t, cond, start_frame), xt, t)

    @torch.no_grad()
    def next_block(self, state: CausalState) -> torch.Tensor:
        """Make the next block; returns its x0 latents [1, 16, 3, H, W] (also written into state.output).

        Labels: `mg2_block` around it all; per timestep a `denoise_eval` (one DiT eval + the float64 x0), between
        them an `add_noise` (fresh ε, re-noise x0 to the next timestep); then the `cache_refresh` eval at
        t = context_noise that writes the block's clean K/V. Evals: len(timesteps) + 1 (4, templerun 5).
        """
        if state.block >= state.num_blocks:
            raise ValueError(f"all {state.num_blocks} blocks are made; call start() for a new video")
        f, dev = self.config.num_frame_per_block, self.device
        s = state.block * f
        cond = self.block_conditions(state, s)
        with record_function("mg2_block"):
            xt = state.noise[:, :, s:s + f]
            for k, t in enumerate(self.timesteps):
                timestep = torch.ones([1, f], device=dev, dtype=torch.int64) * t  # float32, as upstream
                with record_function("denoise_eval"):
                    x0 = self.dit(xt, timestep, cond, s)
                if k + 1 < len(self.timesteps):
                    with record_function("add_noise"):
                        t_next = self.timesteps[k + 1] * torch.ones([f], device=dev, dtype=torch.long)
                        xt = self.add_noise(x0, torch.randn(x0.shape, generator=state.generator, device=dev,
                                                            dtype=x0.dtype), t_next)
            state.output[:, :, s:s + f] = x0
            with record_function("cache_refresh"):
                self.dit(x0, torch.ones_like(timestep) * self.config.context_noise, cond, s)
        state.block += 1
        return x0

    # -- end to end: each block decoded as it is made ------------------------------------------------------------

    decoder = None  # a wanopt.vae.StreamingDecoder (attach_decoder): the decoder's causal cache carried across blocks
    decode_overlap = False  # stage 12: block b decodes on `decode_stream` while block b+1's DiT runs
    decode_stream = None
    _pending = None  # stage 12: the x0 of the block whose decode has not been launched yet

    def attach_decoder(self, decoder):
        self.decoder = decoder
        return self

    def next_frames(self, state: CausalState) -> torch.Tensor | None:
        """Make the next block and decode it: its video frames [1, 3, T, 8H, 8W] in [-1, 1], T = 9 for block 0 and 12
        after (upstream's streaming decode, `mg2_decode` in traces). With the decode overlapped (stage 12), a later
        block's decode runs during the next block's DiT: the call returns the frames of the block before (None for
        block 1), and `flush()` the last block's. The first block decodes at once either way."""
        if self.decoder is None:
            raise RuntimeError("no decoder attached: pipe.attach_decoder(wanopt.vae.StreamingDecoder(build_vae(...)))")
        if state.block == 0:  # a new video: a fresh decoder cache; a previous video's undecoded block is dropped
            self.decoder.reset()
            self._pending = None
        return self.decode_made(lambda: self.next_block(state), first=state.block == 0)

    def decode_made(self, make_block, first: bool) -> torch.Tensor | None:
        """make_block() and its decode, at once or (stage 12, after a video's first block) overlapped."""
        if not self.decode_overlap or first:
            x0 = make_block()
            with record_function("mg2_decode"):
                return self.decoder.decode_block(x0)
        return self.overlapped(make_block)

    def decode_latents(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """Given latent blocks decoded as one new video through the same path as next_frames: all its frames."""
        self.decoder.reset()
        self._pending = None
        out = [self.decode_made(lambda z=z: z, first=i == 0) for i, z in enumerate(blocks)] + [self.flush()]
        return torch.cat([f for f in out if f is not None], dim=2)

    def overlapped(self, make_block) -> torch.Tensor | None:
        """Launch the pending block's decode on the decode stream, then make_block() on this one; both streams
        joined at the end. Returns the pending block's frames; the new block's x0 becomes the pending one."""
        pending, frames = self._pending, None
        side = self.decode_stream  # None on a CPU: the same order of work on one stream
        main = torch.cuda.current_stream() if side is not None else None
        if pending is not None:
            if side is not None:
                side.wait_stream(main)
            on_side = torch.cuda.stream(side) if side is not None else contextlib.nullcontext()
            with on_side, record_function("mg2_decode"):
                frames = self.decoder.decode_block(pending)
            if side is not None:
                pending.record_stream(side)
        x0 = make_block()
        self._pending = x0.clone()  # a graphed DiT rewrites its output buffer in the next block
        if side is not None:
            main.wait_stream(side)
            if frames is not None:
                frames.record_stream(main)
        return frames

    def flush(self) -> torch.Tensor | None:
        """The frames of the block still pending (overlapped decode), or None."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        with record_function("mg2_decode"):
            return self.decoder.decode_block(pending)

    def stream_frames(self, num_blocks: int, **start_kwargs) -> Iterator[torch.Tensor]:
        """Yield each block's video frames in order (start() arguments pass through)."""
        state = self.start(num_blocks, **start_kwargs)
        for _ in range(num_blocks):
            frames = self.next_frames(state)
            if frames is not None:
                yield frames
        last = self.flush()
        if last is not None:
            yield last

    def stream(self, num_blocks: int, **start_kwargs) -> Iterator[torch.Tensor]:
        """Yield each block's x0 latents as it is made (start() arguments pass through)."""
        state = self.start(num_blocks, **start_kwargs)
        for _ in range(num_blocks):
            yield self.next_block(state)

    def generate(self, num_blocks: int, **start_kwargs) -> torch.Tensor:
        """The latents of a whole video [1, 16, num_blocks·3, H, W] (DiT only: no VAE decode)."""
        return torch.cat(list(self.stream(num_blocks, **start_kwargs)), dim=2)


__all__ = ["CausalPipeline", "CausalState", "flow_match_schedule", "warped_timesteps"]
