"""A random-weight GGUF with a real model's shapes, for speed measurements where the real model
cannot be had (a machine without network access): the same layers, widths, vocabulary size and
weight type, hence the same kernels, bytes read and dispatches per step; its text is noise.

    python benchmarks/synthetic_model.py smollm2-135m OUT.gguf

Written with tests/tiny_models.py (gguf-py's GGUFWriter and quantizer).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# the shapes of the known models' llama-architecture counterparts (weight type as in the zoo's file)
SHAPES = {
    "smollm2-135m": dict(arch="llama", qtype="Q4_1", n_layer=30, d_model=576, n_head=9, n_kv_head=3, head_dim=64,
                         d_ff=1536, n_vocab=49152, n_ctx=8192, tied_output=True),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shape", choices=sorted(SHAPES))
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    from tiny_models import write_tiny_model

    t0 = time.perf_counter()
    shape = dict(SHAPES[args.shape])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_tiny_model(args.out, shape.pop("arch"), shape.pop("qtype"), **shape)
    print(f"{args.out}: random weights in {args.shape}'s shapes, {args.out.stat().st_size / 1e6:.0f} MB, "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
