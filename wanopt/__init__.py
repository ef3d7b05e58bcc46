"""wanopt: a profiling workbook for Wan-family video diffusion transformers."""

__version__ = "0.1.0"
