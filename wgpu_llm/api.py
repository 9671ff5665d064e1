"""The library: `LLM` loads a GGUF model onto a backend and tokenizes, scores and generates."""

from __future__ import annotations

import hashlib
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from . import models, zoo
from .arguments import check_generation, check_keywords, check_open, check_text, check_token_ids
from .backends import GpuError, check_activations, check_kv_cache, cpu_activations_note, one_line, open_backend
from .exclusive import Exclusive, exclusive, exclusive_generator
from .gguf_file import GGUFError, GGUFFile
from .graph import Graph
from .memory import WEIGHTS_DTYPES, InsufficientMemory
from .sampling import NonFiniteLogits, Sampler, SamplingParams
from .text import TextStream
from .tokenizer import Tokenizer
from .trace import Trace, enabled_by_env

DEFAULT_N_CTX = 4096
DEFAULT_N_BATCH = 512
# Compiled steps kept (besides the decode step, always kept), least recently used dropped first:
# a step is compiled per prompt-chunk length, and each holds device buffers and bind groups, so a
# server seeing many prompt lengths would otherwise keep one per length forever.
MAX_COMPILED_STEPS = 8
DECODE_STEP = (1, False, False)  # the _steps key of the one-token decode step


class ContextOverflow(ValueError):
    """The prompt (plus what must follow it) does not fit the context window."""


class LLMClosed(RuntimeError):
    """A call on an LLM after its close()."""


@dataclass
class Completion:
    text: str  # the generated part only
    tokens: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OpenedModel:
    """What LLM takes from a GGUF file before it reads any weight, every part checked."""
    file: GGUFFile
    arch: ModuleType  # the architecture's module in wgpu_llm.models
    config: object  # its Config
    n_ctx: int  # the context size the graphs are built for
    graphs: dict[bool, Graph]  # all_logits -> one forward step
    tokenizer: Tokenizer


def open_model(path: str | Path, n_ctx: int | None = None) -> OpenedModel:
    """Open and check a model file: layout, hyper-parameters, tensors, graph and vocabulary.
    n_ctx: the context size (default: min(4096, the model's training context)); a few graphs
    depend on it (phi3's LongRoPE factors).

    Everything here is sized by what the file holds, so a malformed file fails with a GGUFError
    naming it before any weight is read or any buffer sized by its metadata is allocated."""
    gf = GGUFFile(path)
    arch = models.architecture(gf)
    config = arch.Config.from_gguf(gf)
    train_ctx = config.n_ctx_train
    context = min(DEFAULT_N_CTX, train_ctx) if n_ctx is None else int(n_ctx)
    if not 1 <= context <= train_ctx:
        raise ValueError(f"n_ctx={n_ctx} must be in 1..{train_ctx} (the model's training context)")
    graphs = {all_rows: models.build_graph(gf, all_logits=all_rows, n_ctx=context) for all_rows in (True, False)}
    tokenizer = Tokenizer.from_metadata(gf.metadata, cache_key=_header_digest(gf), source=gf.path)
    if tokenizer.n_vocab != config.n_vocab:
        raise GGUFError(f"{gf.path}: metadata 'tokenizer.ggml.tokens' has {tokenizer.n_vocab} tokens, "
                        f"token_embd.weight has {config.n_vocab} rows")
    return OpenedModel(gf, arch, config, context, graphs, tokenizer)


class LLM:
    """A GGUF model on a backend.

    model: path of a GGUF file, a known model name (see `wgpu_llm.zoo`), or None for the default.
    backend: "auto" (a hardware GPU when there is one, else the CPU), "gpu" or "cpu".
    n_ctx: context size in tokens (default: min(4096, the model's training context)). A phi3 model
        with LongRoPE takes its long factors when n_ctx exceeds its original context length, as
        llama.cpp does, so the logits at any position depend on n_ctx there.
    n_batch: prompt tokens per prefill step.
    adapter: GPU adapter index or name substring (default: the best one; env WGPU_LLM_ADAPTER).
    trace: time every step op by op into `self.trace` (a wgpu_llm.trace.Trace; `self.trace.report()`);
        default: the environment variable WGPU_LLM_TRACE. Off, nothing is timed.
    weights_dtype: the numpy backend's weight matrices, "float32" or "float16" (half the memory;
        slower; logits within 1e-5 NMSE of float32 on smollm2-135m: see the README's "Memory").
    kv_cache: the KV cache's element type, "f16" (half its memory and reads; the logits' accuracy
        against f32 is measured in the README's "Memory"), "f32", or "auto": f16 on a hardware GPU
        with the shader-f16 feature, f32 on a software adapter and on the CPU. Either backend takes
        either type; `self.backend.kv_type` and `describe()` say which one it has.
    activations: "f32" (default) or "f16", a GPU option: the prefill mat-mat (steps of many tokens,
        gpu/matmul.py) stages its activation and dequantized weight tiles in f16 and multiplies in
        f16, accumulating in f32 (half its workgroup memory, f16 arithmetic), on an adapter with
        the shader-f16 feature; the prefill logits stay within tolerances.ACTIVATIONS_F16_LOGITS_TOL
        (NMSE) of f32's. Decode steps (the mat-vec) and all other ops stay f32. On an adapter without
        shader-f16 the GPU runs f32 and says so (`self.backend.activations`, `describe()`, a line on
        stderr). The CPU computes in f32 only: backend="cpu" with "f16" raises ValueError; "auto"
        that ends on the CPU (no GPU, or a GPU failure) runs f32 and `backend_reason` says so.

    Before loading, the model's memory needs are checked (wgpu_llm.memory): a model that will not
    fit raises wgpu_llm.memory.InsufficientMemory (a MemoryError) saying what is needed, what is
    available and what to do; WGPU_LLM_IGNORE_MEMORY_CHECK=1 skips the check.

    `llm.cache_prompt = True` makes each generation reuse the KV cache of the longest prefix its
    prompt shares with what the previous call left there (a chat's earlier turns): only the rest is
    computed. Off by default: the reused rows were computed in other chunks, so logits may differ
    from a fresh run in the last bits.

    On a GPU backend, greedy decoding (temperature 0) and top-k sampling (0 < top_k <= 128, with a
    repetition penalty over at most 256 recent ids) pick tokens on the GPU: the decode loops feed
    each step the previous step's argmax, or the id the GPU drew (repetition penalty, top-k, top-p,
    min-p, temperature, the draw with a uniform from the sampler's generator: same seed, same
    tokens as the CPU but where f32 rounding flips a draw, see wgpu_llm.gpu.sample), from GPU
    memory and submit steps ahead of the host (`decode_chunk` steps per command buffer; None: sized
    from the measured step time), reading back 4 bytes a token. The first token comes from the
    prompt's top k (or, with a penalty, its whole logits row) on the host. No top-k, a longer
    penalty window, or greedy with a penalty read the whole logits row (`gpu_sampling = False`
    forces that everywhere).

    A GPU that fails in the middle of a generation or a `logits` call (a lost device, out of memory:
    a wgpu_llm.GpuError) on an LLM opened with backend="auto" is replaced by the numpy backend: the
    call goes on from the tokens so far (prompt and generated ones, computed again on the CPU), one
    line on stderr says so, and later calls run on the CPU. backend="gpu" raises the GpuError.

    One call at a time: calls from several threads wait for each other (see `wgpu_llm.exclusive`).

    `llm.close()` frees the weights, KV cache and compiled steps at once (on a GPU: destroys the
    device buffers) instead of whenever the garbage collector gets to them; `with LLM(...) as llm:`
    closes at the end of the block. Any later call raises LLMClosed.
    """

    def __init__(self, model: str | Path | None = None, backend: str = "auto", n_ctx: int | None = None,
                 n_batch: int = DEFAULT_N_BATCH, adapter: str | None = None, trace: bool | None = None,
                 weights_dtype: str = "float32", kv_cache: str = "auto", activations: str = "f32"):
        check_open(model, backend, n_ctx, n_batch, adapter, trace)  # before anything is read or built
        check_kv_cache(kv_cache)
        check_activations(activations, backend)
        if weights_dtype not in WEIGHTS_DTYPES:
            raise ValueError(f"weights_dtype {weights_dtype!r} is not one of {', '.join(WEIGHTS_DTYPES)}")
        self._exclusive = Exclusive()
        self._closed = False
        if model is None or (isinstance(model, str) and model in zoo.KNOWN_MODELS):
            path = zoo.model_path(model or zoo.DEFAULT_MODEL, show_progress=True)
        else:
            path = Path(model)
        model = open_model(path, n_ctx)
        self.file, self.arch, self.config, self.tokenizer = model.file, model.arch, model.config, model.tokenizer
        self._graphs = model.graphs
        self.n_ctx = model.n_ctx
        self.n_batch = n_batch
        self.weights_dtype = weights_dtype
        self.kv_cache = kv_cache  # as asked for: a CPU that takes over from the GPU resolves "auto" again
        self.activations = activations  # as asked for (the backend's `activations`: what it runs)
        self._steps: OrderedDict[tuple[int, bool, bool], object] = OrderedDict()  # least recently used first
        # the weights are loaded and the decode step built now (open_backend's `load`), not in the first request
        self.backend, self.backend_reason = open_backend(backend, self.file, self.n_ctx, adapter,
                                                         list(self._graphs.values()), n_batch, weights_dtype,
                                                         load=self._load, kv_cache=kv_cache,
                                                         activations=activations)
        self._falls_back_to_cpu = backend == "auto"  # on a GPU failure in a call (see the class docstring)
        self.gpu_sampling = True  # sample on the GPU where the backend can (see above)
        self.decode_chunk: int | None = None  # steps per command buffer of the GPU decode loops (None: adaptive)
        self.cache_prompt = False  # reuse the cached K/V of the previous call's common prefix (see below)
        self._cached: list[int] = []  # tokens whose K/V the cache holds at positions 0..
        self.trace = None
        if trace or (trace is None and enabled_by_env()):
            self.trace = Trace(self.file, self.backend.name, self.backend.describe())
        self.backend.tracer = self.trace
        self.file.release_pages()  # the weights now live in the backend: drop the file pages we touched
        _return_freed_memory()

    def __repr__(self) -> str:
        closed = ", closed" if self._closed else ""
        return (f"LLM({self.file.path.name!r}, arch={self.file.architecture}, "
                f"backend={self.backend.describe()!r}{closed})")

    # ---- lifetime ----
    @exclusive
    def close(self) -> None:
        """Free the backend's memory now: weights, KV cache, compiled steps. Closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        self._steps.clear()
        self._cached = []
        self.backend.close()
        _return_freed_memory()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> LLM:
        self._check_open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise LLMClosed(f"this LLM is closed ({self.file.path.name}): open a new LLM to use the model again")

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    # ---- tokens ----
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of text; BOS is added exactly when the model's metadata says so."""
        self._check_open()
        check_text(text)
        return self.tokenizer.encode(text, add_special=add_special)

    def detokenize(self, ids: list[int]) -> str:
        self._check_open()
        ids = check_token_ids(ids, "ids")
        self._check_ids(ids, allow_empty=True)
        return self.tokenizer.decode(ids)

    def _check_ids(self, ids, allow_empty: bool = False) -> None:
        if not allow_empty and len(ids) == 0:
            raise ValueError("no tokens given")
        bad = [t for t in ids if not 0 <= int(t) < self.n_vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} out of range 0..{self.n_vocab - 1}")

    def _load(self, backend) -> None:
        """Load the weights onto `backend` by building its decode step (open_backend's `load`)."""
        self._steps = OrderedDict({DECODE_STEP: backend.compile(self._graphs[False], 1)})

    def _continue_on_cpu(self, error: GpuError) -> None:
        """Replace a failed GPU backend by the numpy one (said once on stderr), or raise `error`
        where the LLM may not fall back. The KV cache starts empty."""
        if not self._falls_back_to_cpu or self.backend.name != "gpu":
            raise error
        try:
            backend, _ = open_backend("cpu", self.file, self.n_ctx, None, list(self._graphs.values()), self.n_batch,
                                      self.weights_dtype, load=self._load, kv_cache=self.kv_cache)  # f32 activations
        except InsufficientMemory:  # the CPU cannot take over: the GPU's failure is the one to report
            raise error from None
        print(f"wgpu-llm: the GPU failed, continuing on the CPU: {one_line(error)}", file=sys.stderr)
        self.backend = backend
        self.backend_reason = f"cpu: the GPU failed ({one_line(error)})" + cpu_activations_note(self.activations)
        self.backend.tracer = self.trace
        self._cached = []

    # ---- forward ----
    def _step(self, n_tokens: int, all_rows: bool, batched: bool = False):
        """The compiled step of n_tokens rows (batched: one row for each of n_tokens sequences)."""
        self._check_open()
        key = (n_tokens, all_rows, batched)
        if key in self._steps:
            self._steps.move_to_end(key)
            return self._steps[key]
        graph = self._graphs[all_rows]
        step = self.backend.compile(graph, n_tokens, batched=True) if batched else self.backend.compile(graph, n_tokens)
        self._steps[key] = step
        evictable = [k for k in self._steps if k != DECODE_STEP]
        for old in evictable[:max(0, len(evictable) - MAX_COMPILED_STEPS)]:
            del self._steps[old]  # its buffers go with the last reference (a running call may hold one)
        return step

    def _prefill(self, ids: list[int], all_rows: bool, head=None, begin: int = 0):
        """Run ids[begin:] from position begin in chunks of n_batch (positions before begin are in
        the KV cache already); logits of every row or of the last.
        head(step, chunk, pos0): how to run the last chunk instead (a sampling step's result)."""
        if len(ids) > self.n_ctx:
            raise ContextOverflow(f"{len(ids)} tokens do not fit the context of {self.n_ctx} tokens "
                                  f"(pass a larger n_ctx, up to {self.config.n_ctx_train})")
        if self.trace is not None:
            self.trace.phase = "prefill"
        out = []
        for start in range(begin, len(ids), self.n_batch):
            chunk = np.asarray(ids[start:start + self.n_batch], dtype=np.int32)
            step = self._step(len(chunk), all_rows)
            if head is not None and start + self.n_batch >= len(ids):
                return head(step, chunk, start)
            logits = step(chunk, start)
            out.append(logits.copy() if all_rows else logits)  # a step reuses its output buffer
        return np.concatenate(out) if all_rows else out[-1]

    @exclusive
    def logits(self, ids: list[int]) -> np.ndarray:
        """float32 logits of shape (len(ids), n_vocab) for every position, in a fresh context."""
        ids = check_token_ids(ids, "ids")
        self._check_ids(ids)
        self._cached = []
        try:
            logits = self._prefill(ids, all_rows=True)
        except GpuError as e:
            self._continue_on_cpu(e)
            logits = self._prefill(ids, all_rows=True)
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        self._cached = ids
        return logits

    def forget_cache(self) -> None:
        """Treat the KV cache as empty: the next prompt is computed from its first token."""
        self._cached = []

    def _reusable_prefix(self, prompt_ids: list[int]) -> int:
        """Leading prompt tokens whose K/V the cache holds from the previous call (with
        cache_prompt); the last prompt token is always computed again (its logits are needed)."""
        if not self.cache_prompt:
            return 0
        n = 0
        for a, b in zip(self._cached, prompt_ids[:-1]):
            if a != b:
                break
            n += 1
        return n

    # ---- generation ----
    def _tokens(self, prompt_ids: list[int], max_tokens: int, sampler: Sampler, stats: dict,
                ignore_eos: bool = False) -> Iterator[int]:
        """Sample up to max_tokens ids after the prompt; stops at end of generation or the context end.
        On a backend that counts its device work (the GPU's `counters()`), stats also get the decode
        tokens' host time (the CPU time of the thread iterating this generator less its waits for the
        device: GpuBackend.counters) and dispatches per token."""
        t0 = time.perf_counter()
        t_first = cpu_first = None
        counters = getattr(self.backend, "counters", None)
        first_counts = (0.0, 0)
        generated = self._generated(prompt_ids, max_tokens, sampler, () if ignore_eos else self.tokenizer.eog_ids,
                                    stats)
        try:
            for i, token in enumerate(generated):
                if t_first is None:
                    t_first, cpu_first = time.perf_counter(), time.thread_time()
                    stats["ttft_s"] = t_first - t0
                    stats["prefill_tokens_per_s"] = len(prompt_ids) / stats["ttft_s"]
                    if counters is not None:
                        first_counts = counters()
                if token in self.tokenizer.eog_ids and not ignore_eos:
                    stats["finish_reason"] = "stop"
                    return
                stats["generated_tokens"] = i + 1
                if i > 0:
                    wall = time.perf_counter() - t_first
                    stats["decode_tokens_per_s"] = i / wall
                    if counters is not None:
                        wait_cpu_s, dispatches = counters()
                        host_s = time.thread_time() - cpu_first - (wait_cpu_s - first_counts[0])
                        stats["decode_host_s_per_token"] = host_s / i
                        stats["decode_dispatches_per_token"] = (dispatches - first_counts[1]) / i
                yield token
        finally:
            generated.close()
        stats["finish_reason"] = "length"

    def _sampling_mode(self, sampler: Sampler, decode) -> tuple[str, int]:
        """("greedy" | "sample" | "full", k): where the sampler's choice is made for this backend.
        "sample": the whole chain on the GPU (a k the top-k kernel serves, and a repetition penalty,
        if any, over at most `decode.max_repeat_last_n` recent ids); else "full" for the sampled
        chains (every logit read back) -- top_k = 0 too: a top-k would only approximate it."""
        p = sampler.params
        if not self.gpu_sampling or not hasattr(decode, "greedy_loop"):
            return "full", 0
        if sampler.plan() == ("greedy", 0):
            return "greedy", 0
        if p.greedy or not 0 < p.top_k <= min(decode.max_top_k, self.n_vocab - 1):
            return "full", 0  # greedy with a penalty, a k the GPU kernel does not serve, or no filtering at all
        if p.penalised and p.repeat_last_n > decode.max_repeat_last_n:
            return "full", 0
        return "sample", p.top_k

    def _generated(self, prompt_ids: list[int], max_tokens: int, sampler: Sampler, stop_ids=(),
                   stats: dict | None = None) -> Iterator[int]:
        """The sampled ids (see _sampled_ids and _tracked_ids). A GPU failure (see _continue_on_cpu)
        continues the generation on the CPU from a prompt of the tokens so far: the same tokens as
        the CPU computing all of them (with the same sampler)."""
        begin = self._reusable_prefix(prompt_ids)
        if stats is not None:
            stats["cached_tokens"] = begin
        self._cached = []  # rewritten from `begin` on: nothing is reusable until the prefill is done
        produced: list[int] = []
        try:
            yield from self._tracked_ids(prompt_ids, begin, max_tokens, sampler, stop_ids, produced)
        except GpuError as e:
            self._continue_on_cpu(e)
            self._cached = []  # the new backend's cache holds nothing yet
            if stats is not None:
                stats["backend"] = self.backend.name
            if len(produced) < max_tokens:
                yield from self._tracked_ids([*prompt_ids, *produced], 0, max_tokens - len(produced), sampler,
                                             stop_ids, produced)

    def _tracked_ids(self, prompt_ids: list[int], begin: int, max_tokens: int, sampler: Sampler, stop_ids,
                     produced: list[int]) -> Iterator[int]:
        """_sampled_ids, each appended to `produced`; self._cached holds what the KV cache holds: the
        prompt once it is prefilled, then every token a decode step was fed."""
        fed = None
        for token in self._sampled_ids(prompt_ids, begin, max_tokens, sampler, stop_ids):
            if fed is None:
                fed = self._cached = list(prompt_ids)
            else:
                fed.append(produced[-1])  # token was computed from the one before: that one is in the cache
            produced.append(token)
            yield token

    def _sampled_ids(self, prompt_ids: list[int], begin: int, max_tokens: int, sampler: Sampler,
                     stop_ids=()) -> Iterator[int]:
        """The sampled ids: the first from the prompt's last logits (the prompt computed from
        position begin on), each next one from a decode step fed the previous one (at most
        max_tokens, no step past the context's end). Where the backend can, greedy and top-k
        choose on the GPU (see the class docstring); steps computed ahead of an early stop are
        dropped unread (the GPU loops queue none past a stop_ids token)."""
        pos = len(prompt_ids)
        if max_tokens <= 0:
            self._prefill(prompt_ids, all_rows=False, begin=begin)
            return
        n_decode = min(max_tokens - 1, self.n_ctx - pos)  # decode steps at pos .. pos + n_decode - 1
        decode = self._step(1, False)
        mode, k = self._sampling_mode(sampler, decode)
        trace = self.trace
        if mode == "greedy":
            token = int(self._prefill(prompt_ids, False, lambda step, ids, p: step.greedy(ids, p), begin)[-1])
            yield token
            if n_decode > 0:
                if trace is not None:
                    trace.phase = "decode"
                yield from decode.greedy_loop(token, pos, n_decode, chunk=self.decode_chunk, stop_ids=stop_ids)
            return
        if mode == "sample":
            if sampler.params.penalised:  # the first draw from the whole row, penalised on the host
                logits = self._prefill(prompt_ids, all_rows=False, begin=begin)[-1]
                token = self._timed_sampling(sampler, logits, list(prompt_ids))
            else:
                ids, cand = self._prefill(prompt_ids, False, lambda step, ids, p: step.top_k(ids, p, k), begin)
                token = self._timed_sampling(sampler.finish, ids, cand)
            yield token
            if n_decode > 0:
                if trace is not None:
                    trace.phase = "decode"
                yield from self._gpu_draws(decode, sampler, [*prompt_ids, token], n_decode, stop_ids)
            return
        history = list(prompt_ids)
        logits = self._prefill(prompt_ids, all_rows=False, begin=begin)[-1]
        for i in range(n_decode + 1):
            token = self._timed_sampling(sampler, logits, history)
            yield token
            if i == n_decode:
                return
            history.append(token)
            if trace is not None:
                trace.phase = "decode"
            logits = decode(np.asarray([token], dtype=np.int32), pos + i)[-1]

    def _gpu_draws(self, decode, sampler: Sampler, history: list[int], n_decode: int, stop_ids) -> Iterator[int]:
        """The sampled GPU loop's ids after history (its last id fed to the first step). The loop
        draws with uniforms taken from the sampler's generator up front; whatever ends the loop
        (done, a stop id, closed early, a GPU failure), the generator is left as the host path
        leaves it: one draw per id given (so a fallback to the CPU goes on with the same draws)."""
        rng = sampler.rng
        start = rng.bit_generator.state
        uniforms = rng.random(n_decode)  # the same numbers as n_decode calls of rng.random()
        given = 0
        try:
            for token in decode.sample_loop(history[-1], len(history) - 1, n_decode, sampler.params, uniforms,
                                            history[-decode.max_repeat_last_n:], chunk=self.decode_chunk,
                                            stop_ids=stop_ids):
                given += 1
                yield token
        except NonFiniteLogits as e:
            raise self.damaged(e) from None
        finally:
            rng.bit_generator.state = start
            rng.random(given)

    def damaged(self, e: NonFiniteLogits) -> GGUFError:
        """Logits that are not finite come from the file's weights: the error names the file."""
        return GGUFError(f"{self.file.path}: {e}: its tensor data may be damaged")

    def _timed_sampling(self, fn, *args) -> int:
        t0 = time.perf_counter()
        try:
            token = fn(*args)
        except NonFiniteLogits as e:
            raise self.damaged(e) from None
        if self.trace is not None:
            self.trace.record_sampling(time.perf_counter() - t0)
        return token

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            check_text(prompt, "prompt")
            ids = self.tokenize(prompt)
        else:
            ids = check_token_ids(prompt)
        self._check_ids(ids)
        if len(ids) >= self.n_ctx:
            raise ContextOverflow(f"the prompt has {len(ids)} tokens; the context holds {self.n_ctx} "
                                  f"and needs room for at least one generated token")
        return ids

    @exclusive_generator
    def stream(self, prompt: str | list[int], max_tokens: int = 128, *, stop: list[str] | None = None,
               stats: dict | None = None, ignore_eos: bool = False, **sampling) -> Iterator[str]:
        """Yield the generated text in pieces (never a broken UTF-8 character, never part of a stop string).

        sampling: temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed (see SamplingParams).
        stats: a dict to fill with prompt_tokens, generated_tokens, ttft_s, prefill/decode tokens/s, tokens;
            on a GPU also decode_host_s_per_token (the decode tokens' wall time less the time the host
            waited for the device's results) and decode_dispatches_per_token.
        ignore_eos: keep generating past end-of-generation tokens (for benchmarks).
        The LLM is busy from the first piece until the generator is exhausted or closed (`close()`).
        """
        check_keywords("LLM.stream()", sampling, ("max_tokens", "stop", "stats", "ignore_eos"))
        stops = [s for s in check_generation(max_tokens, stop, stats, ignore_eos) if s]
        sampler = Sampler(SamplingParams(**sampling))
        ids = self._prompt_ids(prompt)
        stats = {} if stats is None else stats
        stats.update(prompt_tokens=len(ids), generated_tokens=0, ttft_s=0.0, prefill_tokens_per_s=0.0,
                     decode_tokens_per_s=0.0, finish_reason="length", tokens=[], backend=self.backend.name)
        max_tokens = min(max_tokens, self.n_ctx - len(ids))
        text = TextStream(self.tokenizer, stops)
        for token in self._tokens(ids, max_tokens, sampler, stats, ignore_eos):
            stats["tokens"].append(token)
            piece = text.add(token)
            if piece:
                yield piece
            if text.stopped:
                stats["finish_reason"] = "stop"
                return
        piece = text.finish()
        if piece:
            yield piece

    @exclusive
    def generate(self, prompt: str | list[int], max_tokens: int = 128, *, stop: list[str] | None = None,
                 ignore_eos: bool = False, **sampling) -> Completion:
        """Generate a completion: `.text` and `.tokens` (generated part only), `.stats`, `.finish_reason`."""
        check_keywords("LLM.generate()", sampling, ("max_tokens", "stop", "ignore_eos"))
        stats: dict = {}
        text = "".join(self.stream(prompt, max_tokens, stop=stop, stats=stats, ignore_eos=ignore_eos, **sampling))
        tokens = stats.pop("tokens")
        return Completion(text, tokens, stats.pop("finish_reason"), stats)

    def create_completion(self, prompt: str | list[int], max_tokens: int | None = 16, *, stream: bool = False,
                          **params):
        """OpenAI's `completions.create` on this model: a dict shaped like OpenAI's response, or with
        stream=True an iterator of chunk dicts. params: temperature (default 1, as OpenAI's), top_p,
        seed, stop, logprobs (how many top tokens per token), and llama-server's top_k, min_p,
        repeat_penalty, ignore_eos. Bad values are ValueErrors naming the parameter, raised here."""
        from .completions import prepare

        job = prepare(self, {"prompt": prompt, "max_tokens": max_tokens, "stream": stream, **params}, chat=False)
        return self._completion_chunks(job) if stream else self._completion(job)

    def create_chat_completion(self, messages: list[dict], max_tokens: int | None = None, *, stream: bool = False,
                               **params):
        """OpenAI's `chat.completions.create` on this model (see create_completion); logprobs=True
        with top_logprobs=n reports each token's log-probability and the n most likely."""
        from .completions import prepare

        job = prepare(self, {"messages": messages, "max_tokens": max_tokens, "stream": stream, **params}, chat=True)
        return self._completion_chunks(job) if stream else self._completion(job)

    @exclusive
    def _completion(self, job) -> dict:
        return job.whole(self)

    @exclusive_generator
    def _completion_chunks(self, job) -> Iterator[dict]:
        yield from job.chunks(self)

    @exclusive
    def chat(self, messages: list[dict], max_tokens: int = 256, **kwargs) -> Completion:
        """Generate the assistant's reply to messages ([{"role": ..., "content": ...}]) with the model's template."""
        check_keywords("LLM.chat()", {k: v for k, v in kwargs.items() if k not in ("stop", "ignore_eos")},
                       ("max_tokens", "stop", "ignore_eos"))
        return self.generate(self.chat_prompt(messages), max_tokens, **kwargs)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of messages formatted by the model's chat template, ready for the assistant's turn."""
        from .chat import render_chat

        text = render_chat(self.file.metadata, self.tokenizer, messages, source=self.file.path)
        bos = self.tokenizer.bos_id
        ids = self.tokenize(text)
        if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]  # the template wrote BOS itself
        return ids


def _return_freed_memory() -> None:
    """Give the heap memory freed while loading back to the OS (glibc keeps it otherwise: building
    Gemma 3's tokenizer alone leaves ~200 MB of freed-but-held heap)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _header_digest(gf: GGUFFile) -> str:
    """Identity of the file's metadata (everything before the tensor data): the tokenizer cache key."""
    end = min((t.offset for t in gf.tensors.values()), default=gf.file_size)
    return hashlib.sha256(gf.raw_bytes(0, end)).hexdigest()[:32]
