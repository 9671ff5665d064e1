"""Print a GGUF file's architecture, hyper-parameters, tokenizer and tensors (like `wgpu-llm inspect`)."""

import sys

from wgpu_llm.report import inspect_model

inspect_model(sys.argv[1] if len(sys.argv) > 1 else None)
