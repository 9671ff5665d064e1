"""One chat turn with SmolLM2-135M-Instruct through its own chat template."""

from wgpu_llm import LLM

llm = LLM("smollm2-135m")
reply = llm.chat([{"role": "user", "content": "Name three planets of the solar system."}],
                 max_tokens=60, temperature=0.0)
print(reply.text)
