"""The Matrix-Game-2 end-to-end path on the CPU: the pipeline's streaming decode (each block decoded as it is made),
the decode stages against the reference decode, and the end-to-end runner's bookkeeping. The CUDA-graph and
second-stream parts need a GPU: on a CPU the graph stage changes nothing and the overlapped decode keeps its order of
work on one stream, which is what is checked here; the capture checks both against the reference decode at real
size (the manifests' "decode" error part)."""

import json
import warnings

import pytest
import torch

from wanopt.configs import get_workload
from wanopt.measure import rel_l2
from wanopt.pipelines.causal import CausalPipeline
from wanopt.profiling.harness import run_plan
from wanopt.profiling.mg2 import MG2Runner
from wanopt.stages import (MG2_DECODE_STAGES, Plan, decode_channels_last, decode_compile, decode_cuda_graphs,
                           decode_overlap, get_stage, stage_order)
from wanopt.vae import StreamingDecoder, build_vae


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models gain nothing from threads that contend with other work
    yield
    torch.set_num_threads(threads)


def tiny_pipe(seed: int = 0) -> CausalPipeline:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = CausalPipeline("mg2-tiny", device="cpu", dtype=torch.float32, seed=seed)
        return pipe.attach_decoder(StreamingDecoder(build_vae("tiny", seed=seed + 1)))


def latent_blocks(pipe, n: int = 4):
    z = torch.randn(1, 16, 3 * n, *pipe.config.latent_hw, generator=torch.Generator().manual_seed(5))
    return list(z.split(3, dim=2))


def test_the_pipeline_decodes_each_block_as_it_is_made():
    pipe = tiny_pipe()
    frames = list(pipe.stream_frames(3, seed=2))
    assert [f.shape[2] for f in frames] == [9, 12, 12]  # upstream: 9 frames from block 0, 12 after
    latents = torch.cat(list(pipe.stream(3, seed=2)), dim=2)  # the same video, DiT only
    # decoding the made latents as one video gives the same frames: the decoder ran on exactly those blocks
    assert rel_l2(torch.cat(frames, 2), pipe.decode_latents(list(latents.split(3, 2)))) <= 1e-6


def test_next_frames_needs_a_decoder_and_the_decode_stages_say_which():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = CausalPipeline("mg2-tiny", device="cpu", dtype=torch.float32)
    with pytest.raises(RuntimeError, match="attach_decoder"):
        pipe.next_frames(pipe.start(1))
    with pytest.raises(TypeError, match="mg2-universal-e2e"):
        decode_compile(pipe)


def test_the_steady_cache_has_one_form_from_the_third_latent_frame():
    pipe = tiny_pipe()
    dec = pipe.decoder
    blocks = latent_blocks(pipe, 3)
    dec.decode_block(blocks[0])
    assert dec.steady()
    assert dec._cache[-1] is None  # diffusers sizes the list one longer than the decoder uses
    shapes = [tuple(c.shape) for c in dec._cache[:-1]]
    dec.decode_block(blocks[1])
    # the compiled and graphed decodes are specialised to this form: it must not change between blocks
    assert [tuple(c.shape) for c in dec._cache[:-1]] == shapes and all(s[2] == 2 for s in shapes)


@pytest.mark.parametrize("upto", [s.name for s in MG2_DECODE_STAGES])
def test_each_decode_stage_equals_the_reference_decode(upto):
    pipe = tiny_pipe()
    blocks = latent_blocks(pipe)
    reference = pipe.decode_latents(blocks)
    names = [s.name for s in MG2_DECODE_STAGES]
    for name in names[: names.index(upto) + 1]:
        pipe = get_stage(name, "tiny-mg2-e2e").apply(pipe)
    out = pipe.decode_latents(blocks)
    # fp32 on the CPU: the same convolutions (channels-last, Inductor-compiled) sum in another order; 1e-5 relative
    # bounds that, and a stale cache frame or a dropped block is O(1) off (test_vae.py)
    assert out.shape == reference.shape and rel_l2(out, reference) <= 1e-5


def test_the_overlapped_decode_returns_each_block_once_and_in_order():
    pipe = decode_overlap(tiny_pipe())
    state = pipe.start(3, seed=2)
    got = [pipe.next_frames(state) for _ in range(3)]
    # block 0 at once; block 1's decode waits for block 2's DiT; the last comes out with flush()
    assert got[0].shape[2] == 9 and got[1] is None and got[2].shape[2] == 12
    last = pipe.flush()
    assert last.shape[2] == 12 and pipe.flush() is None
    reference = list(tiny_pipe().stream_frames(3, seed=2))
    assert rel_l2(torch.cat([got[0], got[2], last], 2), torch.cat(reference, 2)) <= 1e-6


def test_the_end_to_end_runner_records_fps_decode_and_its_error(tmp_path):
    # the DiT stages are left out (their numbers are the DiT-only workload's; on a CPU stage 05 runs in Triton's
    # interpreter): the reference, then the decode stages on the reference DiT
    order = stage_order("tiny-mg2-e2e")
    stages = [order[0], MG2_DECODE_STAGES[-1]]
    plan = Plan("tiny-mg2-e2e", stages, [s.name for s in stages])
    runner = MG2Runner(get_workload("tiny-mg2-e2e"))
    runner.cold_start_stages = ()  # a fresh process per stage: measured by the capture, slow here
    run_plan(runner, plan, tmp_path, progress=False)
    folder = tmp_path / "tiny-mg2-e2e"
    base = json.loads((folder / "00_baseline" / "manifest.json").read_text())
    last = json.loads((folder / "12_decode_overlap" / "manifest.json").read_text())
    for m in (base, last):
        e2e = m["e2e"]
        assert e2e["fps"] == pytest.approx(12 / (m["timing"]["median"] / 1e3))
        assert e2e["decode_block"]["median"] > 0 and e2e["dit_block"]["median"] > 0
        assert e2e["decode_floor_ms"] > 0 and m["flops_per_step"] > m["flops_per_eval"]["total"] * 4
        assert "VAE decode" in m["step"] and "vae" in m["random_weights"]
    assert base["error_vs_baseline"]["parts"]["decode"]["value"] == 0.0
    part = last["error_vs_baseline"]["parts"]["decode"]
    assert part["tolerance"] == 1e-2 and part["ok"] and part["value"] <= 1e-5
    assert last["e2e"]["overlapped"] and "second stream" in last["step"]
    run = json.loads((folder / "capture.json").read_text())
    assert run["vae"]["flops_per_steady_block"] == base["e2e"]["decode_flops_per_block"] > 0
    # what notebook mg2/e2e reads from such a run
    from wanopt.profiling import e2e

    table = e2e.e2e_numbers("tiny-mg2-e2e", root=tmp_path)
    assert list(table.index) == ["00_baseline", "12_decode_overlap"]
    row = table.loc["12_decode_overlap"]
    assert row["frames/s"] == pytest.approx(last["e2e"]["fps"], abs=0.05)
    assert row["decode error"] == part["value"] and row["decode tolerance"] == 1e-2
    assert row["× floor"] == pytest.approx(last["timing"]["median"] / row["floor ms"], rel=1e-2)
    e2e.e2e_breakdown_figure("tiny-mg2-e2e", root=tmp_path)


def test_the_live_decode_check_flags_nothing_on_the_reference_path():
    from wanopt.profiling.e2e import tiny_decode_errors

    df = tiny_decode_errors(blocks=3)
    assert list(df.index[1:]) == [s.name for s in MG2_DECODE_STAGES] and (df["within"].iloc[1:] == "yes").all()
    # the streamed reference equals the whole-sequence decode: the carried cache is right (a lost cache is O(1))
    assert df.loc["reference (streamed)", "vs whole-sequence decode"] <= 1e-6 and df["frames"].iloc[0] == 33


def test_the_committed_e2e_run_overlaps_the_decode_on_its_own_stream():
    """What notebook mg2/e2e reads from the committed trace: the steady block of the overlapped stage runs on two
    streams, the decode's starting first; the stage before it runs on one."""
    from wanopt.profiling import e2e

    both = e2e.stream_busy("12_decode_overlap").loc[3]
    assert len(both) == 2
    decode, dit = both.sort_values("first start ms").index
    assert both.loc[decode, "kernels"] < both.loc[dit, "kernels"]  # a graph of convolutions against the DiT's
    assert len(e2e.stream_busy("11_decode_cuda_graphs").loc[3]) == 1
