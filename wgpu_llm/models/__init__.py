"""Architecture registry: GGUF `general.architecture` -> module with `Config` and `build_graph`."""

from __future__ import annotations

from types import ModuleType

from ..gguf_file import GGUFError, GGUFFile
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
