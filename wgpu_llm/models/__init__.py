"""Architecture registry: GGUF `general.architecture` -> module with `Config` and `build_graph`."""

from __future__ import annotations

import inspect
from types import ModuleType

from ..gguf_file import GGUFError, GGUFFile
from ..graph import Graph
from . import gemma, gemma2, gemma3, gpt2, granite, llama, olmo2, phi2, phi3, qwen2, qwen3, stablelm

ARCHITECTURES: dict[str, ModuleType] = {"llama": llama, "qwen2": qwen2, "qwen3": qwen3, "gemma": gemma,
                                          "gemma2": gemma2, "gemma3": gemma3,
                                          "granite": granite, "olmo2": olmo2, "gpt2": gpt2,
                                          "stablelm": stablelm, "phi2": phi2, "phi3": phi3}


def architecture(gf: GGUFFile) -> ModuleType:
    if gf.architecture not in ARCHITECTURES:
        raise GGUFError(f"{gf.path}: architecture {gf.architecture!r} is not supported "
                        f"(supported: {', '.join(sorted(ARCHITECTURES))})")
    return ARCHITECTURES[gf.architecture]


def build_graph(gf: GGUFFile, all_logits: bool, n_ctx: int | None = None) -> Graph:
    """The architecture's forward step for a context of n_ctx tokens. Most graphs are the same for
    every context size and do not take it; those that change with it (phi3's LongRoPE factors) have
    an `n_ctx` parameter."""
    build = architecture(gf).build_graph
    if "n_ctx" in inspect.signature(build).parameters:
        return build(gf, all_logits=all_logits, n_ctx=n_ctx)
    return build(gf, all_logits=all_logits)
