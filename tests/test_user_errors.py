"""What a new user hits first, each with an error or a console line that names the problem and the fix: a partial
checkpoint folder (no silent random fallback), a corrupt safetensors file, a Python-number timestep, an fp32 latent
into the bf16 Matrix-Game-2 model; and the one-way import between wanopt.models and wanopt.weights."""

import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import save_file

from wanopt.configs import MG2_TINY, get_config
from wanopt.models import KVCache
from wanopt.pipelines.causal import CausalPipeline
from wanopt.pipelines.t2v import COMPONENTS, WanT2V
from wanopt.weights import (CheckpointError, RandomWeightsWarning, build_causal, build_t5, build_vae, build_wan,
                            load_checkpoint, save_checkpoint)

TINY = get_config("tiny")


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def quiet(build):
    """build(), failing the test if it announces random weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        return build()


@pytest.fixture(scope="module")
def experts_only(tmp_path_factory):
    """An official-layout folder that holds only the two tiny DiT experts (what a user who downloaded only the
    transformer weights has)."""
    root = tmp_path_factory.mktemp("experts_only")
    for i, folder in enumerate(("high_noise_model", "low_noise_model")):
        save_checkpoint(build_wan(TINY.dit, dtype=torch.float32, seed=10 + i), root / folder)
    return root


# ---------------------------------------------------------------------------------------------------------------
# 1. No silent random fallback


def test_partial_checkpoint_folder_fails_with_one_error_listing_every_missing_component(experts_only):
    with pytest.raises(CheckpointError) as err:
        WanT2V("tiny", checkpoint_dir=experts_only, device="cpu")
    text = str(err.value)
    assert set(err.value.components) == {"t5", "tokenizer", "vae"}  # all three in one error, the experts found
    for where in ("models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl", "Wan2.1_VAE.pth"):
        assert str(experts_only / where) in text  # the paths where each was looked for
    assert "random_components=('t5', 'tokenizer', 'vae')" in text  # the explicit way out, spelled for this case


def test_empty_folder_lists_the_experts_too(tmp_path):
    with pytest.raises(CheckpointError) as err:
        WanT2V("tiny", checkpoint_dir=tmp_path, device="cpu", text_encoder=False, vae=False)
    assert set(err.value.components) == {"dit (high_noise expert)", "dit (low_noise expert)"}
    assert str(tmp_path / "high_noise_model" / "diffusion_pytorch_model.safetensors") in str(err.value)


def test_missing_or_empty_folder_path_is_refused(tmp_path):
    for path in (tmp_path / "nowhere", ""):
        with pytest.raises(FileNotFoundError, match="does not exist; pass the folder"):
            WanT2V("tiny", checkpoint_dir=path, device="cpu", text_encoder=False, vae=False)


def test_diffusers_layout_names_its_own_folders(tmp_path):
    for sub in ("transformer", "transformer_2"):
        save_checkpoint(build_wan(TINY.dit, dtype=torch.float32), tmp_path / sub)
    with pytest.raises(CheckpointError) as err:
        WanT2V("tiny", checkpoint_dir=tmp_path, device="cpu")
    assert set(err.value.components) == {"t5", "tokenizer", "vae"}
    assert str(tmp_path / "text_encoder" / "config.json") in str(err.value)
    assert str(tmp_path / "vae" / "config.json") in str(err.value)


def test_random_components_are_explicit_announced_and_recorded(experts_only):
    with pytest.warns(RandomWeightsWarning, match=r"random weights for t5, tokenizer \(byte-level stand-in\), vae"):
        pipe = WanT2V("tiny", checkpoint_dir=experts_only, device="cpu",
                      random_components=("t5", "tokenizer", "vae"))
    assert pipe.random_components == ("t5", "tokenizer", "vae")
    saved = build_wan(TINY.dit, dtype=torch.bfloat16, checkpoint=experts_only / "high_noise_model")
    assert same_weights(pipe.experts["high_noise"], saved)  # the experts did load from the folder


def test_without_a_checkpoint_everything_is_random_and_said_once():
    with pytest.warns(RandomWeightsWarning, match="no checkpoint_dir given") as record:
        pipe = WanT2V("tiny", device="cpu", vae=False)
    assert len([w for w in record if w.category is RandomWeightsWarning]) == 1
    assert record[0].filename == __file__  # points at the line that built the pipeline
    assert pipe.random_components == ("dit", "t5", "tokenizer")  # what was built; no VAE here
    with pytest.warns(RandomWeightsWarning):
        assert WanT2V("tiny", device="cpu", text_encoder=False, vae=False).random_components == ("dit",)


def test_bad_random_component_names_are_refused(experts_only):
    with pytest.raises(ValueError, match=r"unknown component\(s\) \['t5_encoder'\].*choose from"):
        WanT2V("tiny", checkpoint_dir=experts_only, device="cpu", random_components=("t5_encoder",))
    with pytest.raises(ValueError, match="nothing to load"):
        WanT2V("tiny", device="cpu", random_components=("vae",))
    assert set(COMPONENTS) == {"dit", "t5", "tokenizer", "vae"}


def _tiny_tokenizer(folder):
    """A character-level fast tokenizer saved as a HF tokenizer folder (the real one is umT5's sentencepiece)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)


def test_a_complete_folder_loads_every_component_and_stays_quiet(tmp_path):
    for i, sub in enumerate(("transformer", "transformer_2")):
        save_checkpoint(build_wan(TINY.dit, dtype=torch.float32, seed=20 + i), tmp_path / sub)
    t5 = build_t5(TINY.t5, dtype=torch.float32, seed=3)
    t5.save_pretrained(tmp_path / "text_encoder")
    build_vae(TINY.vae, seed=4).save_pretrained(tmp_path / "vae")
    _tiny_tokenizer(tmp_path / "tokenizer")
    pipe = quiet(lambda: WanT2V("tiny", checkpoint_dir=tmp_path, device="cpu"))
    assert pipe.random_components == ()
    assert torch.equal(pipe.text_encoder.shared.weight.float(), t5.shared.weight.bfloat16().float())
    context, _ = pipe.encode_prompt("a boat")
    assert context.shape == (1, 6, TINY.dit.text_dim)  # 6 characters, as the saved tokenizer splits them


def test_causal_pipeline_records_random_weights_and_loads_strictly(tmp_path):
    with pytest.warns(RandomWeightsWarning, match=r"CausalPipeline\('mg2-tiny'\): random weights for dit"):
        pipe = CausalPipeline(MG2_TINY, device="cpu", dtype=torch.float32)
    assert pipe.random_components == ("dit",)
    save_file(build_causal(MG2_TINY, dtype=torch.float32, seed=5).state_dict(), tmp_path / "m.safetensors")
    loaded = quiet(lambda: CausalPipeline(MG2_TINY, device="cpu", dtype=torch.float32,
                                          checkpoint=tmp_path / "m.safetensors"))
    assert loaded.random_components == ()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CausalPipeline(MG2_TINY, device="cpu", checkpoint=tmp_path / "nowhere.safetensors")
    with pytest.raises(ValueError, match="empty path"):
        CausalPipeline(MG2_TINY, device="cpu", checkpoint="")


# ---------------------------------------------------------------------------------------------------------------
# 3c. Corrupt safetensors files are named


def test_garbage_safetensors_file_is_named_as_not_safetensors(tmp_path):
    bad = tmp_path / "diffusion_pytorch_model.safetensors"
    bad.write_bytes(b"\xff" * 8 + b"not json at all")
    with pytest.raises(CheckpointError, match="not a valid safetensors file") as err:
        load_checkpoint(build_wan(TINY.dit, dtype=torch.float32), tmp_path)
    assert str(bad) in str(err.value) and "download" in str(err.value)


def test_truncated_download_is_named(tmp_path):
    good = save_checkpoint(build_causal(MG2_TINY, dtype=torch.float32), tmp_path / "ckpt")
    f = good / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # an interrupted download
    with pytest.raises(CheckpointError, match=r"not a valid safetensors file \(.*\)\. A truncated") as err:
        build_causal(MG2_TINY, checkpoint=good)
    assert str(f) in str(err.value)


def test_garbage_pth_of_t5_or_vae_is_named(tmp_path):
    bad = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    bad.write_bytes(b"PK\x03\x04 cut short")
    for build in (lambda: build_t5(TINY.t5, checkpoint=bad), lambda: build_vae(TINY.vae, checkpoint=bad)):
        with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as err:
            build()
        assert str(bad) in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# 3b. A Python number as the timestep


def test_wan_model_takes_a_python_number_as_the_timestep():
    model = build_wan(TINY.dit, dtype=torch.float32, seed=0)
    x, ctx = torch.randn(2, 16, 3, 8, 12), torch.randn(2, 7, TINY.dit.text_dim)
    with torch.no_grad():
        ref = model(x, torch.tensor([999, 999]), ctx)
        assert torch.equal(model(x, 999, ctx), ref)
        assert torch.equal(model(x, 999.0, ctx), ref)
        assert torch.equal(model(x, torch.tensor(999), ctx), ref)  # a 0-d tensor means the same
    with pytest.raises(TypeError, match=r"t must be a tensor of timesteps \[B\] or \[B, L\], or one number"):
        model(x, "999", ctx)


# ---------------------------------------------------------------------------------------------------------------
# 3a. Matrix-Game-2 inputs checked at the entry


def mg2_call(model, **changes):
    c, (h, w), dtype = MG2_TINY, MG2_TINY.latent_hw, torch.bfloat16
    args = dict(x=torch.randn(1, 16, 3, h, w, dtype=dtype), t=torch.zeros(1, 3),
                visual_context=torch.randn(1, c.clip_tokens, c.clip_dim, dtype=dtype),
                cond_concat=torch.randn(1, 20, 3, h, w, dtype=dtype), mouse_cond=torch.zeros(1, 9, 2, dtype=dtype),
                keyboard_cond=torch.zeros(1, 9, 4, dtype=dtype), cache=KVCache(c, dtype=dtype), current_start=0)
    args.update(changes)
    with torch.no_grad():
        return model(**args)


@pytest.fixture(scope="module")
def bf16_mg2():
    return build_causal(MG2_TINY, dtype=torch.bfloat16, seed=0)


def test_fp32_latent_into_the_bf16_model_names_both_dtypes_and_the_fix(bf16_mg2):
    assert mg2_call(bf16_mg2).dtype == torch.bfloat16  # the right dtype runs
    with pytest.raises(TypeError, match=r"parameters are bfloat16 .* got: x is float32\. Cast them"):
        mg2_call(bf16_mg2, x=torch.randn(1, 16, 3, 8, 12))
    with pytest.raises(TypeError, match="cond_concat is float32, keyboard_cond is float32"):
        mg2_call(bf16_mg2, cond_concat=torch.randn(1, 20, 3, 8, 12), keyboard_cond=torch.zeros(1, 9, 4))


@pytest.mark.parametrize("x, message", [
    (torch.randn(2, 16, 3, 8, 12, dtype=torch.bfloat16), "batch 2; CausalWanModel runs batch 1 only"),
    (torch.randn(1, 36, 3, 8, 12, dtype=torch.bfloat16), "36 channels; .* has 16 .*as cond_concat"),
    (torch.randn(1, 4, 3, 8, 12, dtype=torch.bfloat16), r"4 channels; the noisy latent of mg2-tiny has 16"),
])
def test_wrong_latent_shapes_name_batch_and_channels(bf16_mg2, x, message):
    with pytest.raises(ValueError, match=message):
        mg2_call(bf16_mg2, x=x)


def test_pipeline_with_a_model_cast_after_construction_says_so_before_the_first_eval():
    with pytest.warns(RandomWeightsWarning):
        pipe = CausalPipeline(MG2_TINY, device="cpu", seed=0)
    pipe.model.float()
    with pytest.raises(TypeError, match=r"torch.float32 but the pipeline was built with dtype=torch.bfloat16"):
        pipe.generate(1)


# ---------------------------------------------------------------------------------------------------------------
# 4. Builders live in wanopt.weights; wanopt.models never imports it


def test_models_do_not_import_weights_and_the_builders_live_in_weights():
    import wanopt.models.causal as causal_module
    import wanopt.weights as weights_module

    assert not hasattr(causal_module, "build_causal")
    assert {"build_wan", "build_causal", "build_t5", "build_vae"} <= set(dir(weights_module))
    code = "import sys, wanopt.models; assert 'wanopt.weights' not in sys.modules, 'models imported weights'"
    subprocess.run([sys.executable, "-c", code], check=True)
