"""`wgpu-llm inspect`: a rich report of a GGUF file (architecture, hyper-parameters, tokenizer, tensors)."""

from __future__ import annotations

from collections import Counter
from dataclasses import fields
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import models, zoo
from .gguf_file import GGUFFile

MAX_ROWS = 40


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _count(value) -> str:
    """The length of an array value; anything else is shown as what it is (a malformed file)."""
    return str(len(value)) if isinstance(value, list) else f"not an array: {_short(repr(value))}"


def inspect_model(model: str | None, all_tensors: bool = False, console: Console | None = None) -> None:
    console = console or Console()
    if model is None or model in zoo.KNOWN_MODELS:
        path = zoo.model_path(model or zoo.DEFAULT_MODEL, show_progress=True)
    else:
        path = Path(model)
    gf = GGUFFile(path)
    md = gf.metadata
    # every text from the file is escaped: rich would read "[/x]" in a name as markup (and fail)
    console.print(f"[bold]{escape(path.name)}[/bold]  {_human(gf.file_size)}  GGUF, {len(gf.tensors)} tensors, "
                  f"{len(md)} metadata keys")
    console.print(f"name: {escape(str(md.get('general.name', '?')))}   "
                  f"architecture: [bold]{escape(gf.architecture)}[/bold]")

    hp = Table(title="hyper-parameters", show_header=False)
    try:
        cfg = models.architecture(gf).Config.from_gguf(gf)
        for f in fields(cfg):
            hp.add_row(f.name, escape(str(getattr(cfg, f.name))))
    except ValueError as e:
        hp.add_row("unsupported", escape(str(e)))
    console.print(hp)

    tok = Table(title="tokenizer", show_header=False)
    tok.add_row("kind", escape(f"{md.get('tokenizer.ggml.model', '?')} (pre: {md.get('tokenizer.ggml.pre', '-')})"))
    tok.add_row("tokens / merges", escape(f"{_count(md.get('tokenizer.ggml.tokens', []))} / "
                                          f"{_count(md.get('tokenizer.ggml.merges', []))}"))
    for key in ("bos_token_id", "eos_token_id", "add_bos_token", "add_eos_token"):
        if f"tokenizer.ggml.{key}" in md:
            tok.add_row(key, escape(_short(md[f"tokenizer.ggml.{key}"])))
    tok.add_row("chat template", "yes" if md.get("tokenizer.chat_template") else "no")
    console.print(tok)

    table = Table(title="tensors")
    for col in ("name", "type", "shape", "bytes"):
        table.add_column(col, justify="right" if col == "bytes" else "left")
    tensors = list(gf.tensors.values())
    for t in tensors if all_tensors else tensors[:MAX_ROWS]:
        table.add_row(escape(t.name), t.type_name, " x ".join(map(str, t.shape)), _human(t.n_bytes))
    if not all_tensors and len(tensors) > MAX_ROWS:
        table.add_row(f"... {len(tensors) - MAX_ROWS} more (--all-tensors)", "", "", "")
    console.print(table)

    totals = Table(title="totals by type")
    for col in ("type", "tensors", "parameters", "bytes"):
        totals.add_column(col, justify="left" if col == "type" else "right")
    count, params, size = Counter(), Counter(), Counter()
    for t in tensors:
        count[t.type_name] += 1
        params[t.type_name] += t.n_elements
        size[t.type_name] += t.n_bytes
    for name in sorted(count, key=lambda k: -size[k]):
        totals.add_row(name, str(count[name]), f"{params[name]:,}", _human(size[name]))
    totals.add_row("all", str(len(tensors)), f"{sum(params.values()):,}", _human(sum(size.values())))
    console.print(totals)
