"""The GPU-resident decode loop: sampling on the GPU, next token ids fed from GPU memory.

- the top-k kernel (shaders/top_k.wgsl) returns exactly `sampling.top_k_filter`'s candidates
  (ids and values, in order, ties to the lower id), over one or several stages;
- `LLM.generate` on the GPU backend gives the CPU backend's tokens, text, finish reason: greedy
  through the GPU loop (several steps per command buffer), seeded top-k sampling through the GPU
  loop (same seed, same tokens), and the full-logits fallbacks (long penalty window, no top-k);
- end of generation, stop strings, max_tokens and the context's end stop the loop where the
  CPU stops; steps queued past an early stop do not disturb the next generation;
- a decode step's dispatch count: the step, plus one argmax or the top-k stages.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_gpu_backend import GEMMA_SHAPE
from tiny_models import write_tiny_model

from wgpu_llm import LLM
from wgpu_llm.sampling import Sampler, SamplingParams, top_k_filter

pytestmark = pytest.mark.gpu
PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def pair(request, adapter, tmp_path_factory):
    """(gpu LLM, cpu LLM) on one tiny model, both with an f32 KV cache on any adapter."""
    arch = request.param
    path = write_tiny_model(tmp_path_factory.mktemp("m") / f"{arch}.gguf", arch, "Q8_0", n_ctx=96,
                            **(GEMMA_SHAPE if arch == "gemma3" else {}))
    return LLM(path, backend="gpu", n_batch=8, kv_cache="f32"), LLM(path, backend="cpu", n_batch=8)


class Spy:
    """Counts how decode steps ran: full-logits calls (a one-token step past the prompt), GPU loop
    steps submitted (greedy or sampled)."""

    def __init__(self, monkeypatch, prompt_len: int = 0):
        from wgpu_llm.gpu import backend

        self.full_decode_calls = 0
        self.loop_steps = 0
        call, submit = backend._GpuStep.__call__, backend._Chunk.submit

        def counting_call(step, ids, pos0):
            self.full_decode_calls += step.n_tokens == 1 and pos0 >= prompt_len
            return call(step, ids, pos0)

        def counting_submit(chunk, rt):
            self.loop_steps += chunk.size
            return submit(chunk, rt)

        monkeypatch.setattr(backend._GpuStep, "__call__", counting_call)
        monkeypatch.setattr(backend._Chunk, "submit", counting_submit)


# ---- the top-k kernel ----
@pytest.mark.parametrize("width,k,values", [(100, 7, "ties"), (267, 40, "normal"), (3000, 40, "zeros"),
                                            (5000, 40, "ties"), (70000, 128, "normal"), (70000, 40, "ties"),
                                            (4097, 1, "normal"), (50, 64, "normal")])
def test_top_k_kernel_matches_host(adapter, width, k, values):
    from wgpu_llm.gpu import kernels as K
    from wgpu_llm.gpu import sample
    from wgpu_llm.gpu.backend import _pairs
    from wgpu_llm.gpu.runtime import Program, Runtime

    rt = Runtime(adapter)
    cfg = K.choose_config(rt.caps)
    rng = np.random.default_rng(width + k)
    if values == "ties":  # a handful of distinct values: ties everywhere, also across the k-th
        x = rng.integers(-3, 3, width).astype(np.float32)
    elif values == "zeros":  # -0.0 and +0.0 are the same value, ordered by index
        x = np.where(rng.random(width) < 0.5, -0.0, 0.0).astype(np.float32)
        x[7] = -1.0
    else:
        x = (rng.standard_normal(width) * 4).astype(np.float32)
    off = 5  # the row sits at an offset inside its buffer
    buf = rt.upload(np.concatenate([np.full(off, 1e9, np.float32), x]), "logits")
    n = sample.scratch_bytes(cfg, width, k)
    scratch, out = (rt.storage(n, "a"), rt.storage(n, "b")), rt.storage(8 * k, "out")
    kernels = sample.top_k(cfg, width, k, K.View(buf, off, width), scratch, out, "logits: top_k")
    (data,) = Program(rt, kernels, "top-k", [(out, 0, 8 * k)]).run()
    ids, vals = _pairs(data, k)
    ref_ids, ref_vals = top_k_filter(np.arange(width), x, k)
    assert ids.tolist() == ref_ids.tolist()
    assert np.array_equal(vals, ref_vals)
    assert len(kernels) == len(sample.stages(width, k, sample.chunk_size(cfg)))
    if width > sample.chunk_size(cfg):
        assert len(kernels) >= 2


@pytest.mark.parametrize("width,k", [(300, 20), (5000, 40)])
def test_top_k_kernel_ranks_nan_lowest(adapter, width, k):
    """NaN logits (either sign, any payload) rank below every number and -0 ties with +0: decided
    on the bits in the kernel, since WGSL lets a compiler assume floats are never NaN."""
    from wgpu_llm.gpu import kernels as K
    from wgpu_llm.gpu import sample
    from wgpu_llm.gpu.backend import _pairs
    from wgpu_llm.gpu.runtime import Program, Runtime

    rt = Runtime(adapter)
    cfg = K.choose_config(rt.caps)
    rng = np.random.default_rng(width)
    x = (rng.standard_normal(width) * 4).astype(np.float32)
    x[:8] = [-0.0, 0.0, -0.0, 0.0, -0.0, 0.0, -0.0, 0.0]
    bits = x.view(np.uint32)
    nan_at = rng.choice(np.arange(8, width), width // 5, replace=False)
    bits[nan_at] = rng.choice(np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF], np.uint32), nan_at.size)
    assert np.isnan(x).sum() == nan_at.size
    buf = rt.upload(x, "logits")
    n = sample.scratch_bytes(cfg, width, k)
    scratch, out = (rt.storage(n, "a"), rt.storage(n, "b")), rt.storage(8 * k, "out")
    kernels = sample.top_k(cfg, width, k, K.View(buf, 0, width), scratch, out, "logits: top_k")
    (data,) = Program(rt, kernels, "top-k", [(out, 0, 8 * k)]).run()
    ids, vals = _pairs(data, k)
    ref_ids, ref_vals = top_k_filter(np.arange(width), np.where(np.isnan(x), -np.inf, x).astype(np.float32), k)
    assert ids.tolist() == ref_ids.tolist()
    assert np.array_equal(vals, ref_vals)


def test_top_k_max_matches_kernel_limit():
    from wgpu_llm.gpu import backend, sample

    assert backend._GpuStep.max_top_k == sample.TOP_K_MAX


# ---- generation: GPU vs CPU ----
def compare(gpu: LLM, cpu: LLM, prompt=PROMPT, **kw):
    a, b = gpu.generate(prompt, **kw), cpu.generate(prompt, **kw)
    assert a.tokens == b.tokens
    assert a.text == b.text
    assert a.finish_reason == b.finish_reason
    assert a.stats["generated_tokens"] == b.stats["generated_tokens"] == len(a.tokens)
    return a


@pytest.mark.parametrize("chunk", [4, None])
def test_greedy_gpu_loop_matches_cpu(pair, monkeypatch, chunk):
    gpu, cpu = pair
    spy = Spy(monkeypatch, len(gpu.tokenize(PROMPT)))
    gpu.decode_chunk = chunk
    try:
        out = compare(gpu, cpu, max_tokens=24, temperature=0, ignore_eos=True)
    finally:
        gpu.decode_chunk = None
    assert len(out.tokens) == 24
    assert spy.full_decode_calls == 0  # no logits row came back during decode
    assert spy.loop_steps == 23  # the first token comes from the prefill; none computed past the end
    assert out.stats["decode_tokens_per_s"] > 0


def test_seeded_top_k_sampling_matches_cpu(pair, monkeypatch):
    gpu, cpu = pair
    spy = Spy(monkeypatch, len(gpu.tokenize(PROMPT)))
    for seed, temperature in ((1, 0.9), (2, 4.0), (3, 20.0)):  # tiny gemma's logits are peaked: hot too
        out = compare(gpu, cpu, max_tokens=20, temperature=temperature, top_k=40, top_p=0.95, min_p=0.05, seed=seed,
                      ignore_eos=True)
        assert len(out.tokens) == 20
    a = gpu.generate(PROMPT, max_tokens=20, temperature=20.0, top_k=20, top_p=1.0, min_p=0.0, seed=4, ignore_eos=True)
    b = gpu.generate(PROMPT, max_tokens=20, temperature=20.0, top_k=20, top_p=1.0, min_p=0.0, seed=5, ignore_eos=True)
    assert a.tokens != b.tokens  # it does sample
    assert spy.full_decode_calls == 0
    assert spy.loop_steps == 5 * 19


@pytest.mark.parametrize("kw", [{"temperature": 0.8, "repeat_penalty": 1.3, "repeat_last_n": 300, "seed": 1},
                                # a penalty window longer than the GPU keeps: full logits
                                {"temperature": 1.0, "top_k": 0, "min_p": 0.0, "seed": 2},  # no top-k: full logits
                                {"temperature": 0, "repeat_penalty": 1.3}])  # greedy with a penalty
def test_full_logits_fallbacks_match_cpu(pair, monkeypatch, kw):
    gpu, cpu = pair
    spy = Spy(monkeypatch, len(gpu.tokenize(PROMPT)))
    compare(gpu, cpu, max_tokens=12, ignore_eos=True, **kw)
    assert spy.full_decode_calls == 11 and spy.loop_steps == 0


def test_gpu_sampling_off_reads_full_logits(pair, monkeypatch):
    gpu, cpu = pair
    spy = Spy(monkeypatch, len(gpu.tokenize(PROMPT)))
    gpu.gpu_sampling = False
    try:
        compare(gpu, cpu, max_tokens=6, temperature=0, ignore_eos=True)
    finally:
        gpu.gpu_sampling = True
    assert spy.full_decode_calls == 5 and spy.loop_steps == 0


# ---- stopping ----
@pytest.mark.parametrize("mode", [{"temperature": 0}, {"temperature": 0.9, "top_k": 40, "seed": 7}])
def test_end_of_generation_stops_like_cpu(pair, monkeypatch, mode):
    gpu, cpu = pair
    full = cpu.generate(PROMPT, max_tokens=20, ignore_eos=True, **mode).tokens
    eos = full[9]  # pretend the 10th generated token ends the generation
    first = full.index(eos)
    for llm in pair:
        monkeypatch.setattr(llm.tokenizer, "eog_ids", {eos})
    spy = Spy(monkeypatch, len(gpu.tokenize(PROMPT)))
    gpu.decode_chunk = 1 if "top_k" not in mode else None
    try:
        out = compare(gpu, cpu, max_tokens=20, **mode)
    finally:
        gpu.decode_chunk = None
    assert out.tokens == full[:first] and out.finish_reason == "stop"
    if "top_k" not in mode:
        assert spy.loop_steps == first  # one step per command buffer: nothing queued past the end token


def test_stop_string_max_tokens_and_context_end_like_cpu(pair):
    gpu, cpu = pair
    full = compare(gpu, cpu, max_tokens=16, temperature=0, ignore_eos=True)
    if len(full.text) >= 6:
        stop = full.text[3:6]
        cut = compare(gpu, cpu, max_tokens=16, temperature=0, ignore_eos=True, stop=[stop])
        assert cut.text == full.text[:full.text.index(stop)] and cut.finish_reason == "stop"
    for n in (0, 1, 2, 5):
        assert len(compare(gpu, cpu, max_tokens=n, temperature=0, ignore_eos=True).tokens) == n
    # the context (96) ends before max_tokens: no step past its last position
    ids = gpu.tokenize(PROMPT)
    prompt = (ids * 20)[:90]
    out = compare(gpu, cpu, prompt=prompt, max_tokens=50, temperature=0, ignore_eos=True)
    assert len(out.tokens) == 96 - 90
    out = compare(gpu, cpu, prompt=prompt, max_tokens=50, temperature=0.9, top_k=40, seed=3, ignore_eos=True)
    assert len(out.tokens) == 96 - 90


def test_abandoned_stream_leaves_no_trace(pair):
    """Steps still queued when a stream is dropped write KV rows past the consumed positions; the
    next generation starts over at position 0 and rewrites every row before reading it."""
    gpu, cpu = pair
    gpu.decode_chunk = 8
    try:
        stream = gpu.stream(PROMPT, max_tokens=30, temperature=0, ignore_eos=True)
        next(stream)
        next(stream)
        stream.close()
        compare(gpu, cpu, prompt=PROMPT + " and", max_tokens=12, temperature=0, ignore_eos=True)
        compare(gpu, cpu, prompt=PROMPT + " and", max_tokens=12, temperature=0.9, top_k=40, seed=11, ignore_eos=True)
    finally:
        gpu.decode_chunk = None


# ---- the step's own loops ----
def cpu_greedy_ids(cpu, token: int, pos0: int, n: int) -> list[int]:
    """n greedy ids of the CPU's one-token step fed `token` at pos0, then each id it produced."""
    step, ids = cpu._step(1, False), []
    for pos in range(pos0, pos0 + n):
        token = int(np.argmax(step(np.array([token]), pos)[-1]))
        ids.append(token)
    return ids


@pytest.mark.parametrize("chunk", [1, 3, 8, None])
def test_greedy_loop_directly(pair, chunk):
    gpu, cpu = pair
    step, ref = gpu._step(1, False), cpu_greedy_ids(cpu, 5, 3, 17)
    assert list(step.greedy_loop(5, 3, 17, chunk=chunk)) == ref
    stop = ref[6]
    assert list(step.greedy_loop(5, 3, 17, chunk=chunk, stop_ids=[stop])) == ref[:ref.index(stop) + 1]
    with pytest.raises(ValueError, match="context"):
        next(step.greedy_loop(5, 90, 10))
    with pytest.raises(ValueError, match="token ids"):
        next(step.greedy_loop(gpu.n_vocab, 3, 2))


@pytest.mark.parametrize("chunk_s,most_in_flight", [(10.0, 2), (1e-9, 1)])
def test_loop_keeps_a_second_command_buffer_in_flight(pair, monkeypatch, chunk_s, most_in_flight):
    """Steps no longer than LOOP_CHUNK_S: the next command buffer is submitted before the running
    one's ids are waited for (two on the GPU), and the ids are still the CPU's, stops included;
    longer steps: one at a time."""
    from wgpu_llm.gpu import backend
    from wgpu_llm.gpu.runtime import Runtime

    gpu, cpu = pair
    step, ref = gpu._step(1, False), cpu_greedy_ids(cpu, 5, 3, 17)
    monkeypatch.setattr(backend, "LOOP_CHUNK_S", chunk_s)
    submitted, in_flight = [0], []
    submit, read_back = backend._Chunk.submit, Runtime.read_back

    def counting_submit(c, rt):
        submitted[0] += 1
        return submit(c, rt)

    def counting_wait(rt, buf, nbytes, submission=None):
        in_flight.append(submitted[0] - len(in_flight))  # submitted, minus those waited for before
        return read_back(rt, buf, nbytes, submission)

    monkeypatch.setattr(backend._Chunk, "submit", counting_submit)
    monkeypatch.setattr(Runtime, "read_back", counting_wait)
    assert list(step.greedy_loop(5, 3, 17, chunk=2)) == ref
    assert max(in_flight) == most_in_flight
    stop = ref[6]  # inside the fourth chunk of two steps, with the fifth already on the GPU
    assert list(step.greedy_loop(5, 3, 17, chunk=2, stop_ids=[stop])) == ref[:ref.index(stop) + 1]
    assert list(step.greedy_loop(5, 3, 17, chunk=3)) == ref  # the steps run past the stop changed nothing


SPIN_WGSL = """
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    var x = out[g.x % 2u] + g.x;
    for (var i = 0u; i < out[3] + 1000u; i++) { x = (x * x) ^ (x >> 3u) ^ i; }
    if (x == 7u) { out[0] = x; }
}"""


def test_read_back_waits_for_its_own_submission_only(rt):
    """A decode loop's second command buffer must not delay the first one's ids: waiting for a
    submission returns while a later, long one still runs (wgpu-py's map_sync would wait for it)."""
    from wgpu_llm.gpu.runtime import _native_submission

    if _native_submission() is None:
        pytest.skip("not wgpu-native: no submission indices")
    ffi, lib = _native_submission()
    u = rt.wgpu.BufferUsage
    data, staging = rt.upload(np.arange(4, dtype=np.uint32), "ids"), rt.buffer(16, u.MAP_READ | u.COPY_DST, "s")
    enc = rt.device.create_command_encoder()
    enc.copy_buffer_to_buffer(data, 0, staging, 0, 16)
    first = rt.submit([enc.finish()], 0)
    spin = rt.device.create_compute_pipeline(
        layout="auto", compute={"module": rt.device.create_shader_module(code=SPIN_WGSL), "entry_point": "main"})
    scratch = rt.storage(16, "scratch")
    bind = rt.device.create_bind_group(layout=spin.get_bind_group_layout(0),
                                       entries=[{"binding": 0, "resource": {"buffer": scratch}}])
    enc = rt.device.create_command_encoder()
    for _ in range(2):  # a second or two on a CPU adapter; the first submission is a 16-byte copy
        cp = enc.begin_compute_pass()
        cp.set_pipeline(spin)
        cp.set_bind_group(0, bind)
        cp.dispatch_workgroups(4096)
        cp.end()
    t0 = time.perf_counter()
    second = rt.submit([enc.finish()], 2)
    assert first is not None and second > first
    ids = rt.read_back(staging, 16, first)
    waited_first = time.perf_counter() - t0
    assert ids.view(np.uint32).tolist() == [0, 1, 2, 3]
    lib.wgpuDevicePoll(rt.device._internal, True, ffi.new("WGPUSubmissionIndex *", second))
    waited_second = time.perf_counter() - t0
    assert waited_first < waited_second / 4


def test_sampler_finish_is_the_chain_after_top_k():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    for params in (SamplingParams(temperature=0.7, top_k=40, seed=3), SamplingParams(temperature=1.3, top_k=5, seed=4),
                   SamplingParams(temperature=0.5, top_k=100, top_p=0.5, min_p=0.2, seed=5)):
        a, b = Sampler(params), Sampler(params)
        ids, cand = top_k_filter(np.arange(1000), logits, params.top_k)
        assert [a(logits, []) for _ in range(20)] == [b.finish(ids, cand) for _ in range(20)]
    assert Sampler(SamplingParams(temperature=0)).plan() == ("greedy", 0)
    assert Sampler(SamplingParams(top_k=40)).plan() == ("top_k", 40)
    assert Sampler(SamplingParams(top_k=0)).plan() == ("full", 0)
    assert Sampler(SamplingParams(temperature=0, repeat_penalty=1.1)).plan() == ("full", 0)


# ---- dispatches ----
def test_dispatches_per_decode_step(pair):
    gpu, _ = pair
    step = gpu._step(1, False)
    n_layer = gpu.config.n_layer
    # llama: QKV (the norm on load), attention (rope first), o-proj, gate+up (the norm on load),
    # down per layer; embed, head (the final norm on load). gemma3: see
    # test_gpu_backend.test_tiny_gemma3. A CPU adapter's mat-vec keeps the norms apart (two
    # dispatches more per layer, one for the output norm): backend.norm_on_load_mode
    per_layer, extra = (5, 2) if gpu.file.architecture == "llama" else (5, 3)
    if gpu.backend.cfg.linear_whole_rows:
        per_layer, extra = per_layer + 2, extra + 1
    assert step.n_dispatches == per_layer * n_layer + extra
    assert step.sampling_dispatches("greedy") == step.n_dispatches + 1  # + argmax
    assert step.sampling_dispatches("top_k", 40) == step.n_dispatches + 1  # a tiny vocabulary: one stage


def test_sampling_on_a_chunked_step(adapter, tmp_path):
    """A step split into chunks (small binding limit): greedy and top-k read the last chunk's output."""
    import dataclasses

    from cpu_fallback.backend import CpuBackend
    from wgpu_llm.gguf_file import GGUFFile
    from wgpu_llm.gpu.backend import GpuBackend, _ChunkedStep
    from wgpu_llm.models import architecture

    gf = GGUFFile(write_tiny_model(tmp_path / "llama.gguf", "llama", "Q8_0"))
    gpu, cpu = GpuBackend(gf, 16, adapter), CpuBackend(gf, 16)
    gpu.rt.caps = dataclasses.replace(gpu.rt.caps, max_binding=4096)
    last = architecture(gf).build_graph(gf, all_logits=False)
    step = gpu.compile(last, 7)
    assert isinstance(step, _ChunkedStep)
    ids = np.array([5, 9, 2, 7, 1, 3, 8])
    ref = cpu.compile(last, 7)(ids, 0)[-1]
    ref_ids, ref_vals = top_k_filter(np.arange(len(ref)), ref, 12)
    got_ids, got_vals = step.top_k(ids, 0, 12)
    assert got_ids.tolist() == ref_ids.tolist()
    assert np.abs(got_vals - ref_vals).max() <= 1e-3 * np.abs(ref_vals).max()
    assert step.greedy(ids, 0).tolist() == [int(np.argmax(ref))]
