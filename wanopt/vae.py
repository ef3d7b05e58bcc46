"""The Wan2.1 VAE decoder, streamed block by block as Matrix-Game-2 runs it.

Upstream Matrix-Game-2 (`pipeline/causal_inference.py::CausalInferencePipeline.inference`) decodes each block's
latents right after the block is made and carries the decoder's causal-convolution cache (`vae_cache`) into the
next block. diffusers' AutoencoderKLWan has that mechanism already: `_decode` runs `self.decoder` one latent frame
at a time, threading a list of cached activations (`self._feat_map`, indexed by `self._conv_idx`, reset per frame)
through every causal convolution; but `decode()` clears the list at its start and end, so it cannot continue a
video. StreamingDecoder makes the same per-frame decoder calls with a cache list it keeps between calls, so a video
decoded block by block equals one `vae.decode()` of its whole latent sequence (tests/test_vae.py). The first latent
frame of a video decodes to 1 frame, every later one to 4: a block of 3 gives 9 frames first, 12 after.

build_vae makes that VAE: seeded random at real size (a RandomWeightsWarning says so), or loaded strictly from
diffusers' layout (a `vae/` folder or its .safetensors) or from upstream's `Wan2.1_VAE.pth` (through diffusers'
own converter for that layout, `convert_wan_vae_to_diffusers`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .configs import TINY, VAEConfig
from .weights import CheckpointError, _torch_load, build_vae as build_random_vae, checkpoint_files, warn_random

# "wan2.1": the VAE of every real workload (Wan2.1, Wan2.2 A14B and Matrix-Game-2 all decode with Wan2.1_VAE.pth);
# "tiny": the same architecture at base_dim 8, for the CPU tests and the tiny workloads.
VAE_CONFIGS: dict[str, VAEConfig] = {"wan2.1": VAEConfig(), "tiny": TINY.vae}


def vae_config(name: str | VAEConfig) -> VAEConfig:
    if isinstance(name, VAEConfig):
        return name
    try:
        return VAE_CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown VAE config {name!r}; known: {', '.join(VAE_CONFIGS)}") from None


def build_vae(config: str | VAEConfig = "wan2.1", device="cpu", dtype=torch.float32, checkpoint=None,
              seed: int = 0):
    """diffusers' AutoencoderKLWan, in eval mode without gradients.

    checkpoint: None for seeded random weights (the console says so once: decoded video is noise); a diffusers
    `vae/` folder (its config.json gives the architecture) or a .safetensors file of AutoencoderKLWan keys; or
    upstream's `Wan2.1_VAE.pth`. Loading is strict: one CheckpointError lists every missing, unexpected and
    mis-shaped key. Any other file is refused with the layouts this accepts.
    """
    from diffusers import AutoencoderKLWan

    config = vae_config(config)
    if checkpoint is None:
        warn_random("build_vae", ["vae"], "no checkpoint given; pass Wan2.1_VAE.pth or a "
                    "diffusers vae/ folder for real frames", stacklevel=2)
        return build_random_vae(config, device=device, dtype=dtype, seed=seed)
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"VAE checkpoint {path} does not exist; pass upstream's Wan2.1_VAE.pth or a "
                                f"diffusers vae/ folder")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: pass a diffusers vae/ folder (config.json + "
                                    f"diffusion_pytorch_model.safetensors) or upstream's Wan2.1_VAE.pth")
        kwargs = AutoencoderKLWan.load_config(path)
        state = _read_safetensors(checkpoint_files(path))
    elif path.suffix == ".safetensors":
        kwargs, state = _diffusers_kwargs(config), _read_safetensors([path])
    elif path.suffix in (".pth", ".pt"):
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        kwargs, state = _diffusers_kwargs(config), convert_wan_vae_to_diffusers(_torch_load(path))
    else:
        raise ValueError(f"{path}: not a VAE checkpoint layout this reads. Pass upstream's Wan2.1_VAE.pth (a torch "
                         f"state dict with the original key names), a diffusers vae/ folder, or a .safetensors file "
                         f"of AutoencoderKLWan keys.")
    with torch.device("meta"):
        vae = AutoencoderKLWan.from_config(kwargs)
    _load_strict(vae, state, path)
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _diffusers_kwargs(config: VAEConfig) -> dict:
    return dict(base_dim=config.base_dim, z_dim=config.z_dim, dim_mult=list(config.dim_mult),
                num_res_blocks=config.num_res_blocks, temperal_downsample=list(config.temperal_downsample))


def _read_safetensors(files) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state = {}
    for f in files:
        try:
            state.update(load_file(f))
        except SafetensorError as exc:
            raise CheckpointError.unreadable(f, exc) from exc
    return state


def _load_strict(vae, state: dict, path: Path):
    """Every parameter from the checkpoint, nothing else, each of the right shape; else one CheckpointError."""
    params = vae.state_dict()
    missing = sorted(k for k in params if k not in state)
    unexpected = sorted(k for k in state if k not in params)
    mismatched = sorted((k, tuple(v.shape), tuple(params[k].shape)) for k, v in state.items()
                        if k in params and tuple(v.shape) != tuple(params[k].shape))
    if missing or unexpected or mismatched:
        raise CheckpointError(path, missing, unexpected, mismatched, hint=(
            "A VAE of another size or family (the Wan2.2 VAE has z_dim 48), or a file of another model, gives this; "
            "pass Wan2.1_VAE.pth or the vae/ folder of a Wan2.1 / Wan2.2-A14B diffusers checkpoint."))
    vae.load_state_dict(state, strict=True, assign=True)


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
        self.mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
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
        z = latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)
        x = vae.post_quant_conv(z.to(vae.dtype))
        out = []
        for i in range(x.size(2)):  # as AutoencoderKLWan._decode, with the cache carried over from earlier blocks
            out.append(vae.decoder(x[:, :, i:i + 1], feat_cache=self._cache, feat_idx=[0],
                                   first_chunk=self.latent_frames == 0))
            self.latent_frames += 1
        out = torch.cat(out, 2)
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        return out.float().clamp_(-1, 1)


__all__ = ["StreamingDecoder", "build_vae", "vae_config", "VAE_CONFIGS"]
