"""The Wan2.1 VAE decoder, streamed block by block as Matrix-Game-2 runs it.

Upstream Matrix-Game-2 (`pipeline/causal_inference.py::CausalInferencePipeline.inference`) decodes each block's
latents right after the block is made and carries the decoder's causal-convolution cache (`vae_cache`) into the
next block. diffusers' AutoencoderKLWan has that mechanism already: `_decode` runs `self.decoder` one latent frame
at a time, threading a list of cached activations (`self._feat_map`, indexed by `self._conv_idx`, reset per frame)
through every causal convolution; but `decode()` clears the list at its start and end, so it cannot continue a
video. StreamingDecoder makes the same per-frame decoder calls with a cache list it keeps between calls, so a video
decoded block by block equals one `vae.decode()` of its whole latent sequence (tests/test_vae.py). The first latent
frame of a video decodes to 1 frame, every later one to 4: a block of 3 gives 9 frames first, 12 after.

build_vae makes that VAE by config name (wanopt.weights.build_vae, the one builder): seeded random at real size
(a RandomWeightsWarning says so), or loaded strictly from diffusers' layout (a `vae/` folder or its .safetensors)
or from upstream's `Wan2.1_VAE.pth` (through diffusers' own converter for that layout).
"""

from __future__ import annotations

import torch

from . import weights
from .configs import TINY, VAEConfig
from .weights import warn_random

# "wan2.1": the VAE of every real workload (Wan2.1, Wan2.2 A14B and Matrix-Game-2 all decode with Wan2.1_VAE.pth);
# "tiny": the same architecture at base_dim 8, for the CPU tests and the tiny workloads.
VAE_CONFIGS: dict[str, VAEConfig] = {"wan2.1": VAEConfig(), "tiny": TINY.vae}


def mg2_vae_config(mg2_config: str) -> str:
    """The VAE a Matrix-Game-2 config decodes with: the tiny one for the tiny model, Wan2.1's for every other."""
    return "tiny" if mg2_config == "mg2-tiny" else "wan2.1"


def vae_config(name: str | VAEConfig) -> VAEConfig:
    if isinstance(name, VAEConfig):
        return name
    try:
        return VAE_CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown VAE config {name!r}; known: {', '.join(VAE_CONFIGS)}") from None


def build_vae(config: str | VAEConfig = "wan2.1", device="cpu", dtype=torch.float32, checkpoint=None,
              seed: int = 0):
    """The VAE by config name (wanopt.weights.build_vae does the building and the strict loading). Without a
    checkpoint the weights are seeded random and the console says so once: decoded video is noise."""
    if checkpoint is None:
        warn_random("build_vae", ["vae"], "no checkpoint given; pass Wan2.1_VAE.pth or a "
                    "diffusers vae/ folder for real frames", stacklevel=2)
    return weights.build_vae(vae_config(config), device=device, dtype=dtype, seed=seed, checkpoint=checkpoint)


class StreamingDecoder:
    """Decode a video one block of latents at a time, carrying the decoder's causal cache across blocks.

        dec = StreamingDecoder(vae)
        dec.reset()                         # a new video
        frames = dec.decode_block(latents)  # [1, 16, 3, H, W] -> [1, 3, 9, 8H, 8W], then 12 frames per block

    Latents are the DiT's (normalised); they are unscaled with the VAE config's latents_mean / latents_std as
    diffusers' WanPipeline does (z·std + mean) and decoded in the VAE's dtype; frames come back in float32, clamped
    to [-1, 1] as `vae.decode` clamps them.
    """

    def __init__(self, vae):
        self.vae = vae
        cfg = vae.config
        # on the VAE's device once: a copy from host memory per block would stall the host on the decode's stream
        self.mean = torch.tensor(cfg.latents_mean, device=vae.device).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, device=vae.device).view(1, -1, 1, 1, 1)
        self.reset()

    def reset(self):
        """Start a new video: an empty cache (diffusers' clear_cache sizes it; this keeps its own list, so a
        `vae.decode()` elsewhere in between does not disturb the stream)."""
        self.vae.clear_cache()
        self._cache = self.vae._feat_map
        self._shape: tuple | None = None  # (batch, height, width) of this video's first block
        self.latent_frames = 0  # latent frames of this video decoded so far

    def _check(self, z: torch.Tensor):
        c = self.vae.config.z_dim
        if z.dim() != 5 or z.size(1) != c or z.size(2) == 0:
            fix = " Add the batch dimension: latents[None]." if z.dim() == 4 and z.size(0) == c else ""
            raise ValueError(f"decode_block expects latents [batch, {c}, frames >= 1, height, width] (a Matrix-Game-2 "
                             f"block is [1, 16, 3, 44, 80]); got {list(z.shape)}.{fix}")
        shape = (z.size(0), z.size(3), z.size(4))
        if self._shape is not None and shape != self._shape:
            raise ValueError(f"this video's blocks are [{self._shape[0]}, {c}, frames, {self._shape[1]}, "
                             f"{self._shape[2]}], this one is {list(z.shape)}: the carried cache fits only the "
                             f"first. Call reset() before decoding a new video.")
        self._shape = shape

    @torch.no_grad()
    def decode_block(self, latents: torch.Tensor) -> torch.Tensor:
        """One block's latents [B, z_dim, F, H, W] -> its video frames [B, 3, T, 8H, 8W] (Wan2.1's stride) in [-1, 1]:
        T = 1 + 4(F − 1) for the video's first block, 4F after."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        self._check(latents)
        vae = self.vae
        x = self.layout(vae.post_quant_conv(self.unscale(latents).to(vae.dtype)))
        out = self.decode_steady(x) if self.steady() else self.decode_frames(x)
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        return out.float().clamp_(-1, 1)

    def unscale(self, latents: torch.Tensor) -> torch.Tensor:
        """The DiT's normalised latents -> the VAE's (z·std + mean, as diffusers' WanPipeline), in float32."""
        return latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder input's memory layout (a decode stage may change it)."""
        return x

    def decode_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder one latent frame at a time, as AutoencoderKLWan._decode, with the cache carried over."""
        out = []
        for i in range(x.size(2)):
            out.append(self.vae.decoder(x[:, :, i:i + 1], feat_cache=self._cache, feat_idx=[0],
                                        first_chunk=self.latent_frames == 0))
            self.latent_frames += 1
        return torch.cat(out, 2)

    def steady(self) -> bool:
        """Whether the cache has its steady form: from the third latent frame on every entry a convolution uses is a
        tensor of the last 2 time steps (frame 0 marks the temporal upsamplers "Rep" and runs first-chunk paths;
        frame 1 fills them; diffusers sizes the list one entry longer than the decoder uses, that one stays None).
        The decode stages replace `decode_steady`; the first block of a video always decodes frame by frame."""
        return self.latent_frames >= 2 and not any(isinstance(c, str) for c in self._cache)

    def decode_steady(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_frames(x)


def decode_steady_frames(decoder, x: torch.Tensor, cache: list) -> tuple[torch.Tensor, list]:
    """The steady decode as a function of tensors: (frames, the new cache), the input cache list left as it was.
    What the compile and CUDA-graph stages (wanopt.stages.decode) compile and capture."""
    cache = list(cache)
    out = [decoder(x[:, :, i:i + 1], feat_cache=cache, feat_idx=[0], first_chunk=False) for i in range(x.size(2))]
    return torch.cat(out, 2), cache


__all__ = ["StreamingDecoder", "build_vae", "vae_config", "VAE_CONFIGS", "decode_steady_frames", "mg2_vae_config"]
