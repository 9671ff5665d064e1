"""Benchmark wgpu-llm next to llama.cpp and transformers; see benchmarks/README.md.

    python benchmarks/run.py [--models gemma3-270m,smollm2-135m] [--cases ...]
                             [--engines wgpu-llm,llama.cpp,transformers] [--backend cpu|gpu|all] [--quick]

The same as `wgpu-llm bench ...`.
"""

import sys
from pathlib import Path

try:
    from wgpu_llm.bench import main
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from wgpu_llm.bench import main

if __name__ == "__main__":
    sys.exit(main())
