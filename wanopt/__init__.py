"""wanopt: a profiling workbook for Wan-family video diffusion transformers."""

import os

import torch

# Without CUDA, Triton can only run in its CPU interpreter, and only if that is chosen before anything (torch,
# transformers, diffusers) imports Triton. CI and the notebooks rely on it to test the Triton kernels of stage 6.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

__version__ = "0.1.0"
