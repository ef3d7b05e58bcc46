from .action import ActionModule
from .causal import CausalWanModel, KVCache
from .wan import WanModel

__all__ = ["WanModel", "CausalWanModel", "ActionModule", "KVCache"]
