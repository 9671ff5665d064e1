"""Chat prompts: the model's own Jinja chat template (`tokenizer.chat_template`), rendered with jinja2."""

from __future__ import annotations

from .arguments import check_text


def render_chat(metadata: dict, tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    template = metadata.get("tokenizer.chat_template")
    if not isinstance(template, str) or not template:
        raise ValueError("this model has no chat template (metadata 'tokenizer.chat_template'); use generate()")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"message #{i} must be a dict with string 'role' and 'content', got {m!r}")
        for key in ("role", "content"):
            check_text(m[key], f"message #{i} {key!r}")
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    tokens = metadata.get("tokenizer.ggml.tokens", [])

    def token_text(key):
        idx = metadata.get(key)
        return tokens[idx] if isinstance(idx, int) and 0 <= idx < len(tokens) else ""

    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=token_text("tokenizer.ggml.bos_token_id"), eos_token=token_text("tokenizer.ggml.eos_token_id"))
    except TemplateError as e:
        raise ValueError(f"the model's chat template failed: {e}") from e
