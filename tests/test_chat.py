"""Chat templates: rendered from the model's own Jinja template, in a sandbox, with clear errors."""

import pytest

from wgpu_llm.chat import BUILTIN_TEMPLATES, chat_template, render_chat
from wgpu_llm.gguf_file import GGUFError

TOKENS = ["<unk>", "<s>", "</s>", "hi"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")


def _metadata(template=TEMPLATE, **ids) -> dict:
    md = {"tokenizer.chat_template": template, "tokenizer.ggml.tokens": TOKENS,
          "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
    md.update({f"tokenizer.ggml.{k}_token_id": v for k, v in ids.items()})
    return {k: v for k, v in md.items() if v is not None}


MESSAGES = [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"}]


def test_renders_roles_contents_and_special_tokens():
    assert render_chat(_metadata(), None, MESSAGES) == "<s>[system]be terse</s>[user]hi</s>[assistant]"
    assert render_chat(_metadata(), None, MESSAGES, add_generation_prompt=False) == "<s>[system]be terse</s>[user]hi</s>"
    assert render_chat(_metadata(), None, []) == "<s>[assistant]"


def test_trim_blocks_and_lstrip_blocks():
    # as transformers renders chat templates: a block tag's own newline and indentation vanish
    template = "{% for m in messages %}\n    {% if true %}\n{{ m['content'] }}\n    {% endif %}\n{% endfor %}"
    assert render_chat(_metadata(template), None, MESSAGES) == "be terse\nhi\n"


@pytest.mark.parametrize("ids, bos, eos", [
    (dict(bos=None, eos=None), "", ""),  # no ids: empty texts
    (dict(bos=4, eos=-1), "", ""),  # out of range: empty, not an IndexError
    (dict(bos=3, eos=0), "hi", "<unk>"),  # the lowest and highest ids are in range
    (dict(bos="1", eos=2.0), "", "")  # not integers
])
def test_special_token_texts(ids, bos, eos):
    template = "{{ bos_token }}|{{ eos_token }}"
    assert render_chat(_metadata(template, **ids), None, MESSAGES) == f"{bos}|{eos}"
    metadata = _metadata(template)
    del metadata["tokenizer.ggml.tokens"]
    assert render_chat(metadata, None, MESSAGES) == "|"


@pytest.mark.parametrize("template", [None, ""])
def test_no_template(template):
    metadata = _metadata()
    if template is None:
        del metadata["tokenizer.chat_template"]
    else:
        metadata["tokenizer.chat_template"] = template
    with pytest.raises(ValueError, match=r"^this model has no chat template \(metadata 'tokenizer.chat_template'\) "
                                         r"and its family has no built-in one \(built-in: gemma, chatml, llama3\); "
                                         r"use generate\(\)$"):
        render_chat(metadata, None, MESSAGES)


GEMMA_TURNS = [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi "},
               {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Why?"}]


@pytest.mark.parametrize("metadata, name, text", [
    # llama.cpp's built-in gemma: the trimmed system text joins the first user turn, "model" for the assistant
    ({"general.architecture": "gemma3"}, "gemma",
     "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
     "<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"),
    ({"general.architecture": "qwen2"}, "chatml",
     "<|im_start|>system\n Be brief. <|im_end|>\n<|im_start|>user\nHi <|im_end|>\n<|im_start|>assistant\nHello"
     "<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"),
    ({"general.architecture": "llama", "tokenizer.ggml.tokens": ["<s>", "<|start_header_id|>"]}, "llama3",
     "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>"
     "\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>user"
     "<|end_header_id|>\n\nWhy?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    ({"general.architecture": "llama", "tokenizer.ggml.tokens": ["<s>", "<|im_start|>"]}, "chatml", None),
])
def test_builtin_template_for_a_file_without_one(metadata, name, text):
    metadata = {"tokenizer.ggml.tokens": ["<s>"], "tokenizer.ggml.bos_token_id": 0, **metadata}
    template, source = chat_template(metadata)
    assert template == BUILTIN_TEMPLATES[name] and source == f"built-in '{name}' (the file has none)"
    if text is not None:
        assert render_chat(metadata, None, GEMMA_TURNS) == text
    assert chat_template({**metadata, "tokenizer.chat_template": "{{ 1 }}"}) == ("{{ 1 }}", "the model's own")


@pytest.mark.parametrize("bad", [
    "hi", {"role": "user"}, {"content": "hi"}, {"role": 1, "content": "hi"}, {"role": "user", "content": None},
])
def test_bad_messages_are_named(bad):
    with pytest.raises(ValueError) as err:
        render_chat(_metadata(), None, [MESSAGES[0], bad])
    assert str(err.value) == f"message #1 must be a dict with string 'role' and 'content', got {bad!r}"


def test_template_errors_are_value_errors():
    raising = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must start with user') }}{% endif %}"
    with pytest.raises(ValueError, match=r"^the model's chat template failed: roles must start with user$"):
        render_chat(_metadata(raising), None, MESSAGES)
    assert render_chat(_metadata(raising), None, MESSAGES[1:]) == ""
    with pytest.raises(ValueError, match=r"^the model's chat template failed: ZeroDivisionError: division by zero$"):
        render_chat(_metadata("{{ 1 / 0 }}"), None, MESSAGES)


@pytest.mark.parametrize("template, message", [
    ("{% for %}", ": not a valid Jinja template (Expected an expression, got 'end of statement block', line 1)"),
    ("{{ m | nosuchfilter }}", ": not a valid Jinja template (No filter named 'nosuchfilter'., line 1)"),
    ("hi\n{% if x %}", ": not a valid Jinja template (Unexpected end of template. Jinja was looking for the "
                         "following tags: 'elif' or 'else' or 'endif'. The innermost block that needs to be closed is "
                         "'if'., line 2)"),
    (42, " = 42: expected a string"),
    (["{{ x }}"], " = ['{{ x }}']: expected a string"),
])
def test_malformed_template_is_a_file_error(template, message):
    """A template that is not a string or does not compile is the file's fault: a GGUFError naming
    the file and the key (a template that compiles and then refuses the messages stays a ValueError)."""
    with pytest.raises(GGUFError) as err:
        render_chat(_metadata(template), None, MESSAGES, source="m.gguf")
    assert str(err.value) == f"m.gguf: metadata 'tokenizer.chat_template'{message}"
    with pytest.raises(GGUFError, match="^metadata 'tokenizer.chat_template'"):
        render_chat(_metadata(template), None, MESSAGES)


def test_sandbox_refuses_unsafe_access():
    escape = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ValueError, match="chat template failed"):
        render_chat(_metadata(escape), None, MESSAGES)
    with pytest.raises(ValueError, match="chat template failed"):  # immutable: no appending to the messages
        render_chat(_metadata("{{ messages.append(1) }}"), None, MESSAGES)
    assert len(MESSAGES) == 2
