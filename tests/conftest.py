import dataclasses
import json

import pytest
import torch

from wanopt.configs import get_config
from wanopt.models.layers import set_compute_dtype
from wanopt.weights import build_wan


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def fp32_model(dit_config, seed=0):
    """A WanModel computing everything in float32 (no emulated autocast): the parity setting."""
    model = build_wan(dit_config, dtype=torch.float32, seed=seed)
    return set_compute_dtype(model, None, fp32_islands=True)


# head_dim 128 like every real Wan model, so RoPE splits 44/42/42 real dims as upstream
HD128 = dataclasses.replace(get_config("tiny").dit, dim=256, ffn_dim=384, num_heads=2)


def diffusers_twin(dit_config, model):  # noqa: ARG001 - the config is the model's
    """diffusers' WanTransformer3DModel with the same weights and dtype as `model`, through the key map (the peer
    the capture times, with every module in the model's dtype: the parity setting)."""
    from wanopt.profiling.peers import diffusers_twin as twin

    return twin(model, keep_fp32_modules=False)


def write_capture(root, workload, run, manifests):
    """A capture's files (capture.json and one manifest.json per stage) under root/workload/, for analysis tests."""
    (root / workload).mkdir(parents=True)
    (root / workload / "capture.json").write_text(json.dumps(run))
    for stage, m in manifests.items():
        (root / workload / stage).mkdir()
        (root / workload / stage / "manifest.json").write_text(json.dumps(m))
