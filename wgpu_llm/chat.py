"""Chat prompts: the model's own Jinja chat template (`tokenizer.chat_template`), rendered with jinja2;
for a file without one, the built-in template of its family (as llama.cpp keeps built-in templates)."""

from __future__ import annotations

import os

from .arguments import check_text
from .gguf_file import GGUFError

KEY = "tokenizer.chat_template"

# Built-in templates, written to render what llama.cpp's built-in ones of the same name render.
BUILTIN_TEMPLATES = {
    # Gemma 1/2/3: a system message goes before the first user turn; the assistant's role is "model"
    "gemma": "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
             "{% set prefix = messages[0]['content'] | trim %}{% set prefix = prefix + '\n\n' %}"
             "{% set msgs = messages[1:] %}{% else %}{% set prefix = '' %}{% set msgs = messages %}{% endif %}"
             "{% for m in msgs %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n'"
             " + (prefix if loop.first else '') + (m['content'] | trim) + '<end_of_turn>\n' }}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}",
    "chatml": "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "llama3": "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
              "'<|end_header_id|>\n\n' + (m['content'] | trim) + '<|eot_id|>' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
}
# which built-in a file without a template gets: by architecture, else by the special tokens it has
_BUILTIN_BY_ARCH = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "qwen2": "chatml", "qwen3": "chatml"}
_BUILTIN_BY_TOKEN = (("<|start_header_id|>", "llama3"), ("<|im_start|>", "chatml"), ("<start_of_turn>", "gemma"))


def chat_template(metadata: dict, source: str | os.PathLike | None = None) -> tuple[str, str]:
    """(template, where it comes from): the file's own, else its family's built-in one.
    GGUFError naming `source` (the file) when the file's template is not a string; ValueError when
    the file has none and no built-in fits."""
    template = metadata.get(KEY)
    if template is not None and not isinstance(template, str):
        text = repr(template)
        raise GGUFError(f"{_where(source)}metadata {KEY!r} = {text if len(text) <= 60 else text[:57] + '...'}: "
                        f"expected a string")
    if template:
        return template, "the model's own"
    name = _BUILTIN_BY_ARCH.get(metadata.get("general.architecture"))
    if name is None:
        tokens = metadata.get("tokenizer.ggml.tokens")
        tokens = set(tokens) if isinstance(tokens, list) else set()  # (a malformed vocabulary: no token)
        name = next((n for tok, n in _BUILTIN_BY_TOKEN if tok in tokens), None)
    if name is None:
        raise ValueError(f"this model has no chat template (metadata {KEY!r}) and its family "
                         f"has no built-in one (built-in: {', '.join(BUILTIN_TEMPLATES)}); use generate()")
    return BUILTIN_TEMPLATES[name], f"built-in '{name}' (the file has none)"


def _where(source) -> str:
    return f"{source}: " if source is not None else ""


def render_chat(metadata: dict, tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                source: str | os.PathLike | None = None) -> str:
    """The conversation as the template writes it. A file's template that is not a string or does
    not compile is a GGUFError naming `source` (the file) and the key; an error the template raises
    while rendering (e.g. its own raise_exception on roles that do not alternate) is a ValueError."""
    template, _ = chat_template(metadata, source)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"message #{i} must be a dict with string 'role' and 'content', got {m!r}")
        for key in ("role", "content"):
            check_text(m[key], f"message #{i} {key!r}")
    from jinja2 import TemplateError, TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    tokens = metadata.get("tokenizer.ggml.tokens", [])

    def token_text(key):
        idx = metadata.get(key)
        return tokens[idx] if isinstance(idx, int) and isinstance(tokens, list) and 0 <= idx < len(tokens) else ""

    try:
        compiled = env.from_string(template)
    except TemplateSyntaxError as e:
        raise GGUFError(f"{_where(source)}metadata {KEY!r}: not a valid Jinja template ({e.message}, "
                        f"line {e.lineno})") from None
    try:
        return compiled.render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=token_text("tokenizer.ggml.bos_token_id"), eos_token=token_text("tokenizer.ggml.eos_token_id"))
    except TemplateError as e:
        raise ValueError(f"the model's chat template failed: {e}") from e
    except Exception as e:  # the template's own code failed (1 / 0, "a" + 1, ...): the same kind of failure
        raise ValueError(f"the model's chat template failed: {type(e).__name__}: {e}") from e
