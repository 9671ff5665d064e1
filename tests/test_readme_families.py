"""The README's table of architectures and GPU weight types is the code's."""

import re
from pathlib import Path

from wgpu_llm import models

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
SECTION = README.split("<!-- families:begin -->")[1].split("<!-- families:end -->")[0]


def test_every_architecture_and_only_those():
    listed = re.findall(r"^\| `([a-z0-9_]+)` \|", SECTION, flags=re.M)
    assert sorted(listed) == sorted(models.ARCHITECTURES)


def test_gpu_weight_types():
    from wgpu_llm.gpu import quant

    listed = re.search(r"dequantized inside the kernels: ([^;]+);", " ".join(SECTION.split())).group(1)
    assert [t.strip() for t in listed.split(",")] == list(quant.SUPPORTED_TYPES)
