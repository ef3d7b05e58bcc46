"""Model configs and named workloads, in one place.

Field names follow upstream (`wan/configs/*.py` and each checkpoint's config.json), so a reader can put
this file beside the official one. Sizes are `(width, height)`, as upstream's `--size W*H`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Upstream's `sample_neg_prompt` (wan/configs/shared_config.py): used whenever the caller gives no negative prompt.
SAMPLE_NEG_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


@dataclass(frozen=True)
class WanConfig:
    """The Wan 2.1 / 2.2 DiT (`wan/modules/model.py::WanModel`)."""

    dim: int = 5120
    ffn_dim: int = 13824
    freq_dim: int = 256
    num_heads: int = 40
    num_layers: int = 40
    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_dim: int = 16
    out_dim: int = 16
    text_len: int = 512
    text_dim: int = 4096
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    # "2.2" embeds the timestep once per token (t.expand(B, seq_len)); "2.1" once per sample.
    wan_version: str = "2.2"

    def __post_init__(self):
        if self.wan_version not in ("2.1", "2.2"):
            raise ValueError(f"wan_version must be '2.1' or '2.2', got {self.wan_version!r}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim {self.dim} must split into num_heads {self.num_heads} heads of even size")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass(frozen=True)
class T5Config:
    """umT5 encoder as transformers' UMT5Config spells it (upstream `t5.py::umt5_xxl`)."""

    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "gated-gelu"
    layer_norm_epsilon: float = 1e-6


@dataclass(frozen=True)
class VAEConfig:
    """Wan2.1 VAE as diffusers' AutoencoderKLWan spells it."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)


@dataclass(frozen=True)
class T2VConfig:
    """A text-to-video model as `generate.py --task t2v-*` runs it: DiT(s), T5, VAE and sampler defaults."""

    name: str
    dit: WanConfig
    t5: T5Config = field(default_factory=T5Config)
    vae: VAEConfig = field(default_factory=VAEConfig)
    num_experts: int = 1  # 2 for A14B: a high-noise and a low-noise expert
    boundary: float | None = None  # expert switch at t >= boundary * num_train_timesteps
    sample_shift: float = 5.0
    guide_scale: tuple[float, float] = (5.0, 5.0)  # (low-noise, high-noise), as upstream orders them
    sample_steps: int = 50
    frame_num: int = 81
    sizes: tuple[tuple[int, int], ...] = ((832, 480),)
    vae_stride: tuple[int, int, int] = (4, 8, 8)
    num_train_timesteps: int = 1000
    sample_neg_prompt: str = SAMPLE_NEG_PROMPT


WAN21_T2V_1_3B = T2VConfig(
    name="wan2.1-t2v-1.3b",
    dit=WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, wan_version="2.1"),
    sample_shift=5.0,
    guide_scale=(5.0, 5.0),
    sample_steps=50,
    sizes=((832, 480),),
)

WAN21_T2V_14B = T2VConfig(
    name="wan2.1-t2v-14b",
    dit=WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, wan_version="2.1"),
    sample_shift=5.0,
    guide_scale=(5.0, 5.0),
    sample_steps=50,
    sizes=((1280, 720), (832, 480)),
)

WAN22_T2V_A14B = T2VConfig(
    name="wan2.2-t2v-a14b",
    dit=WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, wan_version="2.2"),
    num_experts=2,
    boundary=0.875,
    sample_shift=12.0,
    guide_scale=(3.0, 4.0),
    sample_steps=40,
    sizes=((1280, 720), (832, 480)),
)

# CPU-sized: every code path of the A14B pipeline (two experts, per-token time embedding, the switch),
# small enough that the whole pipeline runs in seconds in CI.
TINY = T2VConfig(
    name="tiny",
    dit=WanConfig(dim=64, ffn_dim=128, freq_dim=256, num_heads=2, num_layers=2, text_dim=64, wan_version="2.2"),
    t5=T5Config(vocab_size=384, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
    vae=VAEConfig(base_dim=8),
    num_experts=2,
    boundary=0.875,
    sample_shift=12.0,
    guide_scale=(3.0, 4.0),
    sample_steps=4,
    frame_num=5,
    sizes=((64, 48),),
)

TINY_21 = dataclasses.replace(
    TINY, name="tiny-2.1", dit=dataclasses.replace(TINY.dit, wan_version="2.1"), num_experts=1, boundary=None,
    sample_shift=5.0, guide_scale=(5.0, 5.0),
)

T2V_CONFIGS: dict[str, T2VConfig] = {c.name: c for c in (TINY, TINY_21, WAN21_T2V_1_3B, WAN21_T2V_14B, WAN22_T2V_A14B)}


def get_config(name: str) -> T2VConfig:
    """A named T2V config; an unknown name raises with the list of known ones."""
    try:
        return T2V_CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown config {name!r}; known configs: {', '.join(T2V_CONFIGS)}") from None


def latent_shape(config: T2VConfig, size: tuple[int, int], frame_num: int) -> tuple[int, int, int, int]:
    """`[C, F', H', W']` of the noise for a `(width, height)` video (text2video.py's target_shape)."""
    w, h = size
    st, sh, sw = config.vae_stride
    if (frame_num - 1) % st:
        raise ValueError(f"frame_num must be 1 + {st}·k (got {frame_num}); upstream uses 81")
    if h % (sh * config.dit.patch_size[1]) or w % (sw * config.dit.patch_size[2]):
        raise ValueError(f"size {w}*{h} must be a multiple of {sw * config.dit.patch_size[2]} in both sides")
    return (config.vae.z_dim, (frame_num - 1) // st + 1, h // sh, w // sw)


def num_tokens(config: T2VConfig, size: tuple[int, int], frame_num: int) -> int:
    """Video tokens L of one DiT eval: the post-patch grid f·h·w."""
    _, f, h, w = latent_shape(config, size, frame_num)
    pt, ph, pw = config.dit.patch_size
    return (f // pt) * (h // ph) * (w // pw)


# ---------------------------------------------------------------------------------------------------------------
# Matrix-Game-2 (CausalWanModel): upstream configs/distilled_model/*/config.json and configs/inference_yaml/*.


@dataclass(frozen=True)
class ActionConfig:
    """`action_config` of the Matrix-Game-2 config.json files."""

    blocks: tuple[int, ...] = tuple(range(15))  # transformer blocks that carry an ActionModule
    enable_mouse: bool = True
    mouse_dim_in: int = 2
    keyboard_dim_in: int = 4
    heads_num: int = 16
    hidden_size: int = 128  # keyboard embedding width
    img_hidden_size: int = 1536
    keyboard_hidden_dim: int = 1024
    mouse_hidden_dim: int = 1024
    mouse_qk_dim_list: tuple[int, int, int] = (8, 28, 28)
    rope_dim_list: tuple[int, int, int] = (8, 28, 28)
    rope_theta: float = 256.0
    vae_time_compression_ratio: int = 4
    windows_size: int = 3
    qk_norm: bool = True
    qkv_bias: bool = False
    patch_size: tuple[int, int, int] = (1, 2, 2)


@dataclass(frozen=True)
class CausalWanConfig:
    """Matrix-Game-2 `CausalWanModel` plus the pipeline settings of its inference yaml."""

    name: str
    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    num_heads: int = 12
    num_layers: int = 30
    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_dim: int = 36  # 16 noisy latent + 4 mask + 16 image latent
    out_dim: int = 16
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    local_attn_size: int = 6  # latent frames of self-attention context (4 for gta)
    sink_size: int = 0
    clip_dim: int = 1280
    clip_tokens: int = 257
    action: ActionConfig = field(default_factory=ActionConfig)
    # pipeline (configs/inference_yaml/*.yaml)
    denoising_step_list: tuple[int, ...] = (1000, 666, 333)
    num_frame_per_block: int = 3
    timestep_shift: float = 5.0
    context_noise: int = 0
    latent_hw: tuple[int, int] = (44, 80)  # 352×640 video

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def frame_seq_length(self) -> int:
        h, w = self.latent_hw
        return (h // self.patch_size[1]) * (w // self.patch_size[2])


MG2_UNIVERSAL = CausalWanConfig(name="mg2-universal")
MG2_GTA = CausalWanConfig(name="mg2-gta", local_attn_size=4, action=ActionConfig(keyboard_dim_in=2))
MG2_TEMPLERUN = CausalWanConfig(
    name="mg2-templerun",
    action=ActionConfig(enable_mouse=False, keyboard_dim_in=7),
    denoising_step_list=(1000, 750, 500, 250),
)
# CPU-sized, same code paths as universal (mouse + keyboard, window 6, 3 frames per block), smaller grid.
MG2_TINY = CausalWanConfig(
    name="mg2-tiny", dim=64, ffn_dim=128, num_heads=2, num_layers=2, clip_dim=32, clip_tokens=9,
    action=ActionConfig(blocks=(0,), heads_num=2, hidden_size=16, img_hidden_size=64, keyboard_hidden_dim=32,
                        mouse_hidden_dim=32, mouse_qk_dim_list=(8, 4, 4), rope_dim_list=(8, 4, 4)),
    latent_hw=(8, 12),
)

MG2_CONFIGS: dict[str, CausalWanConfig] = {c.name: c for c in (MG2_TINY, MG2_UNIVERSAL, MG2_GTA, MG2_TEMPLERUN)}


def get_mg2_config(name: str) -> CausalWanConfig:
    try:
        return MG2_CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown Matrix-Game-2 config {name!r}; known configs: {', '.join(MG2_CONFIGS)}") from None


# ---------------------------------------------------------------------------------------------------------------
# Named workloads. Notebooks, traces/ folders and manifests use these names as written.


@dataclass(frozen=True)
class Workload:
    name: str
    config: str
    size: tuple[int, int] | None = None  # (width, height); T2V only
    frame_num: int | None = None
    step: str = ""  # what one "step" in a trace contains
    world_size: int = 1  # GPUs one run spreads over (sequence parallel); 1 for every single-GPU workload
    decode: bool = False  # Matrix-Game-2 end to end: the timed block includes its streaming VAE decode

    @property
    def family(self) -> str:
        """The family, "t2v" or "mg2": which stage list, runner and notebooks folder the workload belongs to."""
        return "mg2" if self.config.startswith("mg2") else "t2v"


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("t2v-1.3b-480p", "wan2.1-t2v-1.3b", (832, 480), 81,
                 "one denoising step: the two CFG evals + the scheduler step"),
        Workload("t2v-a14b-480p", "wan2.2-t2v-a14b", (832, 480), 81,
                 "one denoising step on the high-noise expert: two CFG evals + the scheduler step"),
        Workload("t2v-a14b-720p", "wan2.2-t2v-a14b", (1280, 720), 81,
                 "one denoising step on the high-noise expert: two CFG evals + the scheduler step"),
        Workload("mg2-universal", "mg2-universal", None, None,
                 "one block: 3 denoising evals + 1 cache-refresh eval"),
        Workload("tiny-t2v", "tiny", (64, 48), 5, "one denoising step of the tiny model (CPU/CI only, never timed)"),
        Workload("tiny-mg2", "mg2-tiny", None, None, "one block of the tiny causal model (CPU/CI only)"),
        Workload("mg2-universal-e2e", "mg2-universal", None, None,
                 "one block end to end: 3 denoising evals + 1 cache-refresh eval + the VAE decode of its 12 frames",
                 decode=True),
        Workload("tiny-mg2-e2e", "mg2-tiny", None, None,
                 "one block of the tiny causal model and its tiny VAE decode (CPU/CI only)", decode=True),
        Workload("t2v-1.3b-480p-sp2", "wan2.1-t2v-1.3b", (832, 480), 81,
                 "one denoising step, the sequence sharded over 2 GPUs", world_size=2),
        Workload("t2v-a14b-720p-sp2", "wan2.2-t2v-a14b", (1280, 720), 81,
                 "one denoising step on the high-noise expert, the sequence sharded over 2 GPUs", world_size=2),
        Workload("t2v-a14b-720p-sp4", "wan2.2-t2v-a14b", (1280, 720), 81,
                 "one denoising step on the high-noise expert, the sequence sharded over 4 GPUs", world_size=4),
        Workload("t2v-a14b-720p-sp8", "wan2.2-t2v-a14b", (1280, 720), 81,
                 "one denoising step on the high-noise expert, the sequence sharded over 8 GPUs", world_size=8),
        Workload("tiny-t2v-sp2", "tiny", (64, 48), 5,
                 "one denoising step of the tiny model over 2 processes (CPU/CI only, gloo)", world_size=2),
    )
}


def get_workload(name: str) -> Workload:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise KeyError(f"unknown workload {name!r}; known workloads: {', '.join(WORKLOADS)}") from None
