"""wgpu-llm: run GGUF language models on any GPU through WebGPU, with a numpy reference backend."""

from .api import LLM, Completion, ContextOverflow, LLMClosed
from .backends import BackendUnavailable, GpuError
from .exclusive import ReentrantCall
from .gguf_file import GGUFError, GGUFFile

__all__ = ["LLM", "Completion", "ContextOverflow", "BackendUnavailable", "GGUFError", "GGUFFile", "GpuError",
           "LLMClosed", "ReentrantCall"]
__version__ = "0.1.0"
