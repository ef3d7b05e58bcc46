from .wan import WanModel

__all__ = ["WanModel"]
