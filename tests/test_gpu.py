"""What only a GPU can check: stage 6's cuBLASLt GELU epilogue, the RMSNorm + RoPE kernel compiled for the
device (not the interpreter) at a real model width, the Matrix-Game-2 block graphs against the eager blocks, and
the decode stages' CUDA graph and second stream against the eager streaming decode. Skipped without CUDA (CI); the
capture job runs them on the GPU before it captures (traces/logs/test_gpu.log)."""

import pytest
import torch

from wanopt.models.layers import rope_table
from wanopt.measure import rel_l2
from wanopt.stages.dtype_hygiene import qk_norm_rope, rope_cos_sin

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gelu_epilogue_is_the_tanh_gelu_of_the_linear():
    """Tolerance 1e-2: bf16 output (one ulp 2^-8 relative); the epilogue rounds once from fp32, the reference
    rounds the GEMM output before the GELU. Exact (erf) GELU would differ by ~1e-3 only, so the tanh form is
    checked separately below."""
    from wanopt.stages.fusion import GeluEpilogueFFN

    torch.manual_seed(0)
    up, down = torch.nn.Linear(1536, 8960), torch.nn.Linear(8960, 1536)
    up.compute_dtype = down.compute_dtype = None
    ffn = torch.nn.Sequential(up, torch.nn.GELU(approximate="tanh"), down).cuda().to(torch.bfloat16)
    x = torch.randn(2, 512, 1536, device="cuda", dtype=torch.bfloat16)
    ref = ffn(x).float()
    ffn.__class__ = GeluEpilogueFFN
    assert rel_l2(ffn(x).float(), ref) < 1e-2
    h = torch.randn(4096, 64, device="cuda") * 3
    eye = torch.eye(64, device="cuda")
    tanh_gelu = torch.nn.functional.gelu(h, approximate="tanh")
    assert torch.allclose(torch._addmm_activation(torch.zeros(64, device="cuda"), h, eye, use_gelu=True),
                          tanh_gelu, atol=1e-5)


def test_rmsnorm_rope_kernel_on_the_gpu():
    """Tolerance 1e-2 as in test_stages (bf16 output, fp32 statistics); 12 heads of 128 as in the 1.3B model."""
    from wanopt.stages import fusion

    heads, hd, grid = 12, 128, (3, 10, 12)
    k = torch.randn(2, 360, 3 * heads * hd, device="cuda", dtype=torch.bfloat16).chunk(3, dim=-1)[1]
    w = (1 + 0.1 * torch.randn(heads * hd, device="cuda")).to(torch.bfloat16)
    rope = rope_cos_sin(rope_table(hd), grid, torch.bfloat16, "cuda")
    ref = qk_norm_rope(k.float(), w.float(), 1e-6, tuple(r.float() for r in rope), heads)
    assert rel_l2(fusion.triton_qk_norm_rope(k, w, 1e-6, rope, heads).float(), ref) < 1e-2
    plain = qk_norm_rope(k.float(), w.float(), 1e-6, None, heads)
    assert rel_l2(fusion.triton_qk_norm_rope(k, w, 1e-6, None, heads).float(), plain) < 1e-2


def test_mg2_block_graphs_replay_the_eager_blocks():
    """Matrix-Game-2 on the GPU, tiny config in bf16 (the flash kernels take no fp32): two videos made with every
    block replayed from its CUDA graph (07, its first-use captures in between) are the eager videos of the same
    stages (06) bit for bit: the same kernels on the same data. The folded refresh (08) on top of the graphs is
    within 1e-2: bf16 GEMMs of twice the rows round differently, carried through the cache over 5 blocks; a wrong
    slot or window gives O(1) (tests/test_mg2_stages.py)."""
    from wanopt.configs import MG2_TINY
    from wanopt.pipelines.causal import CausalPipeline
    from wanopt.stages import apply_stages, stages_up_to

    def video(upto):
        pipe = CausalPipeline(MG2_TINY, device="cuda", seed=0)
        pipe = apply_stages(pipe, [s.name for s in stages_up_to(upto, "mg2-universal")], workload="mg2-universal")
        return torch.cat([torch.cat(list(pipe.stream(5, seed=1)), dim=2) for _ in range(2)], dim=2)

    eager, graphed, folded = video("06_compile"), video("07_cuda_graphs"), video("08_fold_refresh")
    assert torch.equal(graphed, eager)
    assert rel_l2(folded.float(), eager.float()) < 1e-2


def test_decode_graph_and_second_stream_replay_the_eager_streaming_decode():
    """The tiny VAE in fp32 on the GPU, decoding what the tiny DiT makes (bf16, stages up to 06 as in the test above:
    the reference model's attention has no GPU kernel at the tiny action module's shapes; the same seeded weights
    and kernels in both pipelines, so the same latents): the decode stages (compile, one CUDA graph per steady block, the decode
    on a second stream while the next block's DiT runs) against the eager streaming decode of the same video, two
    videos in a row (the graph's cache buffers take the second video's cache). 1e-4 relative: TF32 is off, so only
    Inductor's fusions and cuDNN's algorithm choices reorder fp32 sums; a stale cache, a race between the streams
    or a frame decoded twice is O(1) off (tests/test_decode.py on the CPU)."""
    import warnings

    from wanopt.pipelines.causal import CausalPipeline
    from wanopt.stages import (apply_stages, decode_channels_last, decode_compile, decode_cuda_graphs, decode_overlap,
                               stages_up_to)
    from wanopt.vae import StreamingDecoder, build_vae

    def pipe():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = CausalPipeline("mg2-tiny", device="cuda", seed=0)
            p = apply_stages(p, [s.name for s in stages_up_to("06_compile", "mg2-universal")], workload="mg2-universal")
            return p.attach_decoder(StreamingDecoder(build_vae("tiny", device="cuda", seed=1)))

    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        reference = [torch.cat(list(pipe().stream_frames(4, seed=s)), 2) for s in (2, 3)]
        fast = pipe()
        for stage in (decode_channels_last, decode_compile, decode_cuda_graphs, decode_overlap):
            fast = stage(fast)
        assert fast.decode_stream is not None
        for s, ref in zip((2, 3), reference):
            out = torch.cat(list(fast.stream_frames(4, seed=s)), 2)
            assert out.shape == ref.shape and rel_l2(out, ref) <= 1e-4
    assert fast.decoder.graph is not None
