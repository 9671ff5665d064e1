"""What every architecture file shares: reading hyper-parameters and checking tensor shapes."""

from __future__ import annotations

from ..gguf_file import GGUFError, GGUFFile


def weight_shapes(gf: GGUFFile) -> dict[str, tuple[int, int]]:
    """GGUF tensor name -> (rows, cols) as the graph sees it (a 1-D tensor of n is (1, n))."""
    shapes = {}
    for name, info in gf.tensors.items():
        shape = info.shape
        shapes[name] = (1, shape[0]) if len(shape) == 1 else (int(shape[-2]), int(shape[-1]))
    return shapes


def check_tensors(gf: GGUFFile, expected: dict[str, tuple[int, ...]]) -> None:
    """Every expected tensor must exist with exactly the expected (numpy-order) shape."""
    for name, shape in expected.items():
        info = gf.tensor(name)
        if tuple(info.shape) != tuple(shape):
            raise GGUFError(f"{gf.path}: tensor {name!r} has shape {info.shape}, expected {tuple(shape)}")


def positive(gf: GGUFFile, key: str, value: int) -> int:
    if value <= 0:
        raise GGUFError(f"{gf.path}: metadata {key!r} = {value}: expected a positive integer")
    return value


def output_weight(gf: GGUFFile) -> str:
    """The output head: `output.weight`, or the token embedding when the two are tied."""
    return "output.weight" if "output.weight" in gf.tensors else "token_embd.weight"
