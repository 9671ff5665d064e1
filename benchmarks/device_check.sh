#!/usr/bin/env bash
# The device check: one command for a machine with a real GPU. It installs what was carried to it
# (wheels, Vulkan loader packages), says what is missing, runs the GPU test suite on the hardware
# adapter and the benchmark (wgpu-llm on the GPU; llama.cpp's GPU build beside it where one is
# importable), and writes a stamped results directory with a summary. Every stage has a time
# limit and the whole run stays within --budget seconds (default 540: 9 minutes).
#
#   benchmarks/device_check.sh [--out DIR] [--wheels DIR] [--gl DIR] [--software] [--budget S]
#
#   --out DIR     where everything goes (default: $OUT, else benchmarks/results/device-<date>/);
#                 at most 8 files, no subfolders
#   --wheels DIR  install DIR/*.whl (pip, no index) into a private target first
#   --gl DIR      unpack DIR/*.deb (libvulkan1, ...) into / when no Vulkan loader is installed
#   --software    (also --quick) allow a software adapter (lavapipe) and shrink the run to a few
#                 minutes: a trial of the script on a machine without a GPU
#   --budget S    seconds for the whole run
#
# Nothing is fetched from a network: real test models are used where the cache holds them,
# otherwise the real-model tests are left out (said in the summary) and the benchmark runs on a
# random-weight model in SmolLM2-135M's shapes (benchmarks/synthetic_model.py). See
# benchmarks/README.md ("Device check") for the preparation and the call.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

out="${OUT:-}"
wheels=""
gl=""
software=0
budget=540
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --wheels) wheels="$2"; shift 2 ;;
        --gl) gl="$2"; shift 2 ;;
        --software|--quick) software=1; shift ;;
        --budget) budget="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "device_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
stamp="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
out="${out:-benchmarks/results/device-$(date -u +%Y-%m-%d)}"
mkdir -p "$out" || exit 2
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"  # the synthetic model and pip's target: large, and not results
trap 'rm -rf "$work"' EXIT
summary="$out/summary.txt"
: >"$summary"
exec > >(tee "$out/device-check.log") 2>&1
start=$(date +%s)
PY="${PYTHON:-python3}"
failed=0  # the exit status: 1 when a stage failed or ran out of time

note() { echo "$*" | tee -a "$summary"; }
# grep without -q below: -q stops reading early, and under pipefail the writer's SIGPIPE fails the test
has_vulkan() { ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' >/dev/null; }
left() { echo $((budget - ($(date +%s) - start))); }

# stage NAME LIMIT CMD...: run CMD with at most LIMIT seconds (less when the budget is shorter,
# keeping 20 s for the summary), output in $out/NAME.log; records the result in the summary
stage() {
    local name=$1 limit=$2 rc t0
    shift 2
    local avail=$(($(left) - 20))
    [ "$limit" -gt "$avail" ] && limit=$avail
    if [ "$limit" -lt 15 ]; then
        note "$name: not run (the ${budget} s budget is spent)"
        failed=1
        return 124
    fi
    echo "== $name (at most ${limit} s): $*"
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    tail -n 25 "$out/$name.log"
    local took=$(($(date +%s) - t0))
    case $rc in
        0) note "$name: ok (${took} s)" ;;
        124|137) failed=1; note "$name: TIMED OUT after ${took} s (limit ${limit} s)" ;;
        *) failed=1; note "$name: FAILED, exit ${rc} (${took} s); see $name.log" ;;
    esac
    return $rc
}

note "wgpu-llm device check, $stamp"
note "tree: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git metadata') $(git -C "$ROOT" status --porcelain 2>/dev/null | grep . >/dev/null && echo '(with local changes)')"
note "host: $(nproc) cores, $(uname -srm); mode: $([ $software = 1 ] && echo 'software trial (--software)' || echo 'hardware GPU')"

# ---- what was carried: the Vulkan loader, wheels ----
if [ -n "$gl" ]; then
    if has_vulkan; then
        note "vulkan loader: installed already ($gl not unpacked)"
    elif ls "$gl"/*.deb >/dev/null 2>&1; then
        for f in "$gl"/*.deb; do dpkg -x "$f" / || note "could not unpack $f"; done
        ldconfig
        note "vulkan loader: unpacked $(ls "$gl"/*.deb | wc -l) packages from $gl"
    else
        note "vulkan loader: --gl $gl holds no .deb files"
    fi
fi
if ! has_vulkan; then
    note "MISSING: no Vulkan loader (libvulkan.so.1); carry one with --gl (benchmarks/README.md)"
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nvidia_icd" ] && [ ! -f /usr/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES="$nvidia_icd"  # the driver's mounted ICD file, which the loader does not search
    note "vulkan driver: VK_DRIVER_FILES=$VK_DRIVER_FILES"
fi
if [ -n "$wheels" ]; then
    if ls "$wheels"/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" \
            "$wheels"/*.whl && note "wheels: installed $(ls "$wheels"/*.whl | wc -l) from $wheels" \
            || note "wheels: pip could not install $wheels/*.whl"
        export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        note "wheels: --wheels $wheels holds no .whl files"
    fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this tree's wgpu_llm, installed or not
export PYTHONUNBUFFERED=1

missing=$("$PY" - <<'EOF'
import importlib.util
need = ["numpy", "gguf", "tokenizers", "wgpu", "click", "rich", "jinja2", "pytest", "psutil"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
    note "MISSING python packages: $missing (carry wheels with --wheels; benchmarks/README.md)"
fi
if echo " $missing " | grep -E ' (numpy|gguf|tokenizers|wgpu|click|rich|jinja2) ' >/dev/null; then
    note "wgpu-llm cannot run without them: stopping"
    exit 1
fi

# ---- the adapter ----
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    | sed 's/^/gpu (nvidia-smi): /' | tee -a "$summary"
stage devices 60 env COLUMNS=200 "$PY" -m wgpu_llm.cli devices
allow=$([ $software = 1 ] && echo True || echo False)
adapter=$("$PY" - "$allow" <<'EOF' 2>>"$out/devices.log"
import sys
from wgpu_llm.gpu.device import GpuUnavailable, choose_adapter, list_adapters
try:
    chosen, why = choose_adapter(allow_software=sys.argv[1] == "True", selector=None)
except GpuUnavailable as e:
    print(f"none: {e}")
    sys.exit(0)
index = next(a.index for a in list_adapters() if a.name == chosen.info.get("device") and
             a.backend.lower() == str(chosen.info.get("backend_type", "")).lower())
print(f"{index}: {why}")
EOF
)
note "adapter: ${adapter:-none: the adapter check failed (devices.log)}"
case "$adapter" in
    none*|"")
        note "no usable adapter: the GPU tests and the benchmark need one; stopping"
        exit 1 ;;
esac
export WGPU_LLM_ADAPTER="${adapter%%:*}" WGPU_LLM_REQUIRE_GPU=1

# ---- models: the cached real ones, else a synthetic one for the benchmark ----
real=$("$PY" - <<'EOF'
from wgpu_llm import zoo
print(" ".join(n for n, m in zoo.KNOWN_MODELS.items() if (zoo.cache_dir() / m.filename).is_file()))
EOF
)
have_all=1
for name in gemma3-270m smollm2-135m; do
    echo " $real " | grep " $name " >/dev/null || have_all=0
done
if [ $have_all = 1 ]; then
    note "test models: cached ($real)"
else
    note "test models: not all cached (have: ${real:-none}; no network to fetch them): real-model tests left out"
fi

# ---- the GPU test suite on that adapter ----
tests=(-m gpu tests/)
if [ $software = 1 ]; then  # a few minutes on a CPU: the tiny models and the kernel unit tests
    tests=(-m gpu tests/test_gpu_backend.py tests/test_gpu_choices.py tests/test_cli.py -k "tiny or devices or choose")
fi
if [ $have_all = 0 ]; then  # tests that read a real model (not all are marked slow)
    tests+=(-m "gpu and not slow" --deselect tests/test_gpu_backend.py::test_smollm2_gpu_matches_cpu
            --deselect "tests/test_gpu_limits.py::test_small_binding_limit_changes_nothing[smollm2-135m]"
            --deselect tests/test_gpu_quant.py::test_real_model_weights)
fi
stage tests $([ $software = 1 ] && echo 240 || echo 270) "$PY" -m pytest -q -rs -p no:cacheprovider "${tests[@]}"
grep -E '^[0-9]+ (passed|failed)|^(FAILED|ERROR) ' "$out/tests.log" | sed 's/^/  /' | tail -n 12 | tee -a "$summary"

# ---- the benchmark ----
if echo " $real " | grep " smollm2-135m " >/dev/null; then
    model=smollm2-135m
else
    model="$work/smollm2-135m-shaped.gguf"
    # its log is kept only when it fails: the results directory holds at most 8 files
    stage synthetic-model 90 "$PY" benchmarks/synthetic_model.py smollm2-135m "$model" && rm -f "$out/synthetic-model.log" \
        || model=""
fi
engines="wgpu-llm"
# the prefill with activations="f16" beside it where the adapter has shader-f16 (not on a software
# adapter: compiling its f16 tiles there takes minutes, and it has no f16 arithmetic to show)
if [ $software = 0 ]; then engines="wgpu-llm,wgpu-llm:gpu-f16"; fi
llama=$("$PY" - <<'EOF' 2>/dev/null
try:
    import llama_cpp
    from wgpu_llm.bench import _llama_cpp_gpu_name
    print(_llama_cpp_gpu_name(llama_cpp) or "cpu-only")
except Exception as e:  # not installed, or a build that does not load here
    print(f"unavailable ({type(e).__name__}: {e})")
EOF
)
case "$llama" in
    cpu-only|unavailable*|"") note "llama.cpp: ${llama:-unavailable}: no GPU rows from it" ;;
    *) note "llama.cpp: GPU build ($llama): side by side"; engines="$engines,llama.cpp:gpu" ;;
esac
if [ -n "$model" ]; then
    cases=prefill_128,decode_128
    quick=()
    [ $software = 1 ] && quick=(--quick --repeat 1)
    export GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}"
    # a software adapter compiles llama.cpp's Vulkan shaders for minutes: more time there
    limit=$([ $software = 1 ] && echo 330 || echo 200)
    stage bench $limit "$PY" -m wgpu_llm.bench --models "$model" \
        --backend gpu --engines "$engines" --cases "$cases" "${quick[@]}" --timeout $((limit - 30)) \
        --json "$out/bench.json" --no-png
    grep -E 'prefill tok/s|^│ (wgpu-llm|llama)' "$out/bench.log" | head -n 20 | tee -a "$summary"
    # the host's cost of a decode step by phase (record, finish, submit, read) on this GPU's host
    stage host-time 90 "$PY" benchmarks/host_time.py --models "$model" --json "$out/host-time.json"
    tail -n 3 "$out/host-time.log" | head -n 2 | tee -a "$summary"
fi

note "done in $(($(date +%s) - start)) s (budget ${budget} s); results in $out"
exit "$failed"
