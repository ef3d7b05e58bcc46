"""python -m wanopt generate: both families write a readable mp4 and its JSON on the CPU; bad requests stop first."""

import argparse
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_vae import official_state

import wanopt.generate as generate
from wanopt.__main__ import main
from wanopt.configs import MG2_TINY, get_workload
from wanopt.vae import build_vae
from wanopt.weights import build_causal


def wanopt(*args, cwd):
    """The command in a fresh process. One thread: the tiny models gain nothing from more, and a second thread
    contending with other work for a core makes them many times slower."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "wanopt", *args], capture_output=True, text=True, cwd=cwd, env=env)


def read_video(path):
    """(frames decoded, (width, height), frames per second) of an mp4, read back through PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return len(frames), (stream.width, stream.height), stream.average_rate


def test_t2v_writes_its_video_and_timings(tmp_path):
    out = wanopt("generate", "--workload", "tiny-t2v", "--prompt", "a corgi", "--out", "a.mp4",
                 "--stages", "01_no_offload", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert read_video(tmp_path / "a.mp4") == (5, (64, 48), 16)  # the workload's 5 frames at 64*48, Wan's 16 fps
    record = json.loads((tmp_path / "a.mp4.json").read_text())
    assert {k: record[k] for k in ("workload", "stages", "seed", "frames", "fps", "size", "random_weights")} == {
        "workload": "tiny-t2v", "stages": ["01_no_offload"], "seed": 0, "frames": 5, "fps": 16, "size": [64, 48],
        "random_weights": True}
    t = record["timings_s"]
    assert len(t["steps"]) == record["steps"] == 4
    assert t["total"] >= t["encode"] + t["denoise"] + t["decode"] > 0
    randoms = [line for line in out.stderr.splitlines() if "random weights" in line]
    assert randoms == ["random weights for dit, t5, tokenizer, vae (no --checkpoint): the video is noise by "
                       "construction"]


def test_mg2_decodes_block_by_block_from_an_image_and_an_action_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    actions = np.zeros((21, 6), np.float32)  # 2 blocks: 9 + 12 video frames; W held, then turning right
    actions[:, 0], actions[9:, 5] = 1, 0.1
    json.dump(actions.tolist(), open(tmp_path / "walk.json", "w"))
    out = wanopt("generate", "--workload", "tiny-mg2", "--blocks", "2", "--actions", "walk.json", "--image", "s.png",
                 "--stages", "01_host_cache_indices", "--out", "clips/b.mp4", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert read_video(tmp_path / "clips" / "b.mp4") == (21, (96, 64), 12)  # 8x the 8*12 latent grid, upstream's 12 fps
    record = json.loads((tmp_path / "clips" / "b.mp4.json").read_text())
    assert record["frames"] == 21 and record["fps"] == 12 and record["blocks"] == 2
    assert record["stages"] == ["01_host_cache_indices"] and record["random_components"] == ["dit", "vae"]
    assert record["actions"] == "walk.json" and record["image"] == "s.png" and record["random_weights"] is True
    t = record["timings_s"]
    assert len(t["blocks"]) == 2 and all(b["denoise"] > 0 and b["decode"] > 0 for b in t["blocks"])
    assert t["encode"] > 0 and t["total"] > t["denoise"] + t["decode"]


def test_mg2_loads_the_matrix_game_download_layout(tmp_path, capsys):
    (tmp_path / "base_distilled_model").mkdir()
    dit = build_causal(MG2_TINY, dtype=torch.float32, seed=5).state_dict()
    save_file({"model." + k: v for k, v in dit.items()}, tmp_path / "base_distilled_model" / "base_distill.safetensors")
    torch.save(official_state(build_vae("tiny", seed=6)), tmp_path / "Wan2.1_VAE.pth")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as wanopt() runs the command: the tiny models are fastest on one core
    try:
        code = main(["generate", "--workload", "tiny-mg2", "--blocks", "1", "--checkpoint", str(tmp_path),
                     "--out", str(tmp_path / "c.mp4")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    err = capsys.readouterr().err
    assert "random weights" not in err and "CLIP image tokens are a seeded random stand-in" in err
    record = json.loads((tmp_path / "c.mp4.json").read_text())
    assert record["random_weights"] is False and record["random_components"] == [] and record["frames"] == 9


def test_mg2_patterns_give_one_action_per_video_frame():
    args = generate_args("--workload", "tiny-mg2", "--blocks", "3", "--actions", "forward-turn-left", "--out", "x.mp4")
    req = generate.check(args)
    assert req.keyboard.shape == (1, 33, 4) and req.mouse.shape == (1, 33, 2)  # 9 + 12 + 12 frames
    assert (req.keyboard[0, :, 0] == 1).all() and (req.mouse[0, :, 1] == -0.1).all()
    first = generate.check(generate_args("--workload", "tiny-mg2", "--blocks", "3", "--out", "x.mp4", "--seed", "3"))
    again = generate.check(generate_args("--workload", "tiny-mg2", "--blocks", "3", "--out", "x.mp4", "--seed", "3"))
    assert first.actions == "random" and (first.keyboard == again.keyboard).all()
    per_block = [first.keyboard[0, s:e].unique(dim=0).shape[0] for s, e in ((0, 9), (9, 21), (21, 33))]
    assert per_block == [1, 1, 1]  # one pattern held through each block


def generate_args(*argv):
    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    return parser.parse_args(argv)


def refused(capsys, monkeypatch, *argv):
    """Run the command in-process; nothing may be built: (exit code, stderr)."""
    def build(*_):
        raise AssertionError("a model was built for a request that should have been refused")

    monkeypatch.setattr(generate, "_generate_t2v", build)
    monkeypatch.setattr(generate, "_generate_mg2", build)
    code = main(["generate", *argv])
    return code, capsys.readouterr().err


def test_an_action_file_of_the_wrong_length_or_shape_is_refused(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "short.npy", np.zeros((20, 6)))
    code, err = refused(capsys, monkeypatch, "--workload", "tiny-mg2", "--blocks", "2", "--actions",
                        str(tmp_path / "short.npy"), "--out", str(tmp_path / "b.mp4"))
    assert code == 2 and "20 rows, but 2 block(s) make 21 video frames (9, then 12 per block)" in err
    assert "give 21 rows" in err and err.startswith("error: ")
    np.save(tmp_path / "three.npy", np.zeros((33, 6)))
    code, err = refused(capsys, monkeypatch, "--workload", "tiny-mg2", "--blocks", "2", "--actions",
                        str(tmp_path / "three.npy"), "--out", str(tmp_path / "b.mp4"))
    assert code == 2 and "give 21 rows, or pass --blocks 3" in err
    (tmp_path / "wide.json").write_text(json.dumps([[0] * 7] * 21))
    code, err = refused(capsys, monkeypatch, "--workload", "tiny-mg2", "--blocks", "2", "--actions",
                        str(tmp_path / "wide.json"), "--out", str(tmp_path / "b.mp4"))
    assert code == 2 and "shape [21, 7]; give [frames, 6]" in err and "W S A D (0/1), pitch, yaw" in err
    assert not (tmp_path / "b.mp4").exists()


def test_an_unknown_pattern_or_stage_is_refused(tmp_path, capsys, monkeypatch):
    code, err = refused(capsys, monkeypatch, "--workload", "tiny-mg2", "--actions", "moonwalk", "--out", "b.mp4")
    assert code == 2 and "--actions moonwalk: not a pattern" in err and "forward, back," in err and "random" in err
    code, err = refused(capsys, monkeypatch, "--workload", "tiny-mg2", "--stages", "07_warp", "--out", "b.mp4")
    assert code == 2 and "unknown stage '07_warp' for workload 'tiny-mg2'; stages in order: 00_baseline" in err
    code, err = refused(capsys, monkeypatch, "--workload", "tiny-t2v", "--prompt", "a", "--stages", "no_offload",
                        "--out", "a.mp4")
    assert code == 2 and "unknown stage 'no_offload'" in err and "01_no_offload" in err


@pytest.mark.parametrize("argv, message", [
    (["--size", "70*48"], "--size 70*48: width and height must be multiples of 16"),
    (["--size", "seventy"], "give WIDTH*HEIGHT, e.g. --size 832*480"),
    (["--frames", "6"], "--frames 6: must be 1 + 4k"),
    (["--blocks", "2"], "--blocks: not an option of tiny-t2v (text-to-video)"),
    (["--out", "a.gif"], "--out a.gif: name an .mp4 file"),
])
def test_t2v_requests_that_cannot_run_say_why(argv, message, capsys, monkeypatch):
    args = ["--workload", "tiny-t2v", "--prompt", "a corgi", "--out", "a.mp4", *argv]
    code, err = refused(capsys, monkeypatch, *args)
    assert code == 2 and message in err


def test_missing_checkpoint_parts_are_listed_in_one_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "Wan2.1_VAE.pth").touch()
    code, err = refused(capsys, monkeypatch, "--workload", "tiny-mg2", "--checkpoint", str(tmp_path), "--out", "b.mp4")
    assert code == 2 and "lacks 1 component(s)" in err
    assert str(tmp_path / "base_distilled_model" / "base_distill.safetensors") in err and "Matrix-Game-2.0" in err
    code, err = refused(capsys, monkeypatch, "--workload", "tiny-t2v", "--prompt", "a", "--checkpoint",
                        str(tmp_path / "nowhere"), "--out", "a.mp4")
    assert code == 2 and "--checkpoint" in err and "no such folder" in err
    code, err = refused(capsys, monkeypatch, "--workload", "tiny-t2v", "--prompt", "a", "--checkpoint", str(tmp_path),
                        "--out", "a.mp4")
    assert code == 2 and "t5" in err and "tokenizer" in err and "leave --checkpoint out for random weights" in err


def test_all_stages_means_every_stage_of_the_family_in_order():
    from wanopt.generate import add_arguments, check
    from wanopt.stages import MG2_STAGES

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    req = check(parser.parse_args(["--workload", "tiny-mg2", "--stages", "all", "--out", "b.mp4"]))
    assert req.stages == [s.name for s in MG2_STAGES[1:]]


def test_measured_stage_options_apply_only_on_the_gpu_model_that_measured_them(tmp_path, monkeypatch):
    from wanopt.generate import recorded_choices

    wl = get_workload("mg2-universal")
    (tmp_path / wl.name).mkdir()
    (tmp_path / wl.name / "capture.json").write_text(json.dumps({
        "run_id": "r1", "env": {"device": "NVIDIA H200"},
        "choices": {"04_attention": {"options": {"self_backend": "fa4"}, "evidence": {}}}}))
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    options, source = recorded_choices(wl, cuda, traces=tmp_path)
    assert options == {"04_attention": {"self_backend": "fa4"}} and "r1" in source
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    options, source = recorded_choices(wl, cuda, traces=tmp_path)
    assert options == {} and "H100" in source and "H200" in source  # another GPU: its own defaults, said so
    assert recorded_choices(wl, torch.device("cpu"), traces=tmp_path)[0] == {}
    assert "no committed capture" in recorded_choices(get_workload("t2v-a14b-720p-sp8"), cuda, traces=tmp_path)[1]
