#!/usr/bin/env bash
# The scripted GPU run. Installs nothing: it runs on a bare GPU image with that image's python3
# and torch (the checkout is imported in place, see below).
#
#   benchmarks/gpu_check.sh [--out DIR]           every GPU test, then every GPU benchmark and
#                                                 the Markdown report (about 8 minutes on an H100)
#   benchmarks/gpu_check.sh --quick [--out DIR]   correctness first (every GPU test, 8 workers when
#                                                 pytest-xdist is there), then a short benchmark
#                                                 slice (window attention fwd+bwd, every layer:
#                                                 backends triton, sdpa and auto; copy bandwidth)
#                                                 and auto's table: within 7 minutes
#   benchmarks/gpu_check.sh --bisect [...]        the window-attention bisect (launch variants,
#                                                 toolkit ptxas, no integer specialisation x
#                                                 failing cases; compute-sanitizer; the row map of
#                                                 the first failing cell; the two-pass delta): one
#                                                 table. Combines with --quick: tests, bisect,
#                                                 benchmarks
#   benchmarks/gpu_check.sh --train [...]         the training-step benchmarks only (issue 20: stage
#                                                 1 and 2, fused and reference, eager and compiled,
#                                                 the step profile, activation checkpointing) and
#                                                 the report
#   benchmarks/gpu_check.sh --swin [...]          the Swin-family patches only (issue 28): their GPU
#                                                 tests (bf16, fp16), then timm's Swin-T 224 and
#                                                 Swin-V2-T 256 training step, patched vs unpatched,
#                                                 eager / SDPA / compiled, batch 64, and the report:
#                                                 one device call (about 9 minutes at most)
#   benchmarks/gpu_check.sh --smoke [...]         CPU smoke mode: tiny shapes under the Triton
#                                                 interpreter, so the script is tested by `make test`
#
# One session with 15 minutes of device time: `benchmarks/gpu_check.sh --quick --bisect --out $OUT`
# (about 8 minutes). Every step runs under its own time limit; a step that fails or times out is
# reported and the next one still runs. Writes to DIR (default benchmarks/results):
# gpu_env_<tag>_<date>.log, gpu_tests_<tag>_<date>.log, bisect_table.md (with the ptxas versions,
# the delta table and the row map) and bisect_logs_<tag>_<date>.tgz (launch logs, per-variant
# cells, sanitizer logs), gpu_check_<tag>_<date>.json (raw pytest-benchmark),
# gpu_check_<tag>_<date>.md (the report, with a .png) and auto_table.json (`auto`'s window-attention
# table with this GPU's measured entries merged in: benchmarks/auto_table.py; copy it over
# kernels/window_attn/auto_table.json to ship it): at most 8 files, as a device call brings back 8.
# Exit status: 0 when every step passed; the report is still written otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

smoke=0 quick=0 bisect=0 train=0 swin=0
out=benchmarks/results
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --quick) quick=1 ;;
    --bisect) bisect=1 ;;
    --train) train=1 ;;
    --out) out="$2"; shift ;;
    --swin) swin=1 ;;
    -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$swin" = 1 ] && [ $((quick + bisect + train)) -gt 0 ]; then
  echo "gpu_check: --swin runs on its own (not with --quick, --bisect or --train)" >&2
  exit 2
fi
mkdir -p "$out"

if [ "$smoke" = 1 ]; then
  py=${PYTHON:-.venv/bin/python}
  [ -x "$py" ] || py=python3
  export TRITON_INTERPRET=1 LFVILA_BENCH_SMOKE=1
  tag=cpu-smoke
else
  py=${PYTHON:-python3}
  export PYTHONUNBUFFERED=1
fi

# Import the checkout in place: setup.py maps kernels/ to lfvila.kernels; without an install the
# same mapping is a link lfvila/kernels -> ../kernels (ignored by git) and the checkout on
# PYTHONPATH. Nothing is installed: a GPU image has no registry for pip's build backend.
if ! "$py" -c "import lfvila.kernels" 2>/dev/null; then
  [ -e lfvila/kernels ] || ln -s ../kernels lfvila/kernels
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$py" -c "import lfvila.kernels"; then
    echo "gpu_check: cannot import lfvila.kernels from $PWD with $py" >&2
    exit 1
  fi
fi

if [ "$smoke" = 0 ]; then
  if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device; use --smoke on a CPU machine" >&2
    exit 1
  fi
  tag=$("$py" -c "import torch, re; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
fi
date=$(date +%Y%m%d)
status=0
start=$(date +%s)

# step NAME SECONDS FUNCTION: run a step whose commands go through `limited` (that many seconds),
# say how it ended, keep going.
limit=60
limited() { timeout --signal=INT --kill-after=20 "$limit" "$@"; }
step() {
  local name=$1 rc
  limit=$2
  echo "== gpu_check ($tag): $name (limit ${limit} s; $(( $(date +%s) - start )) s so far)"
  "$3"
  rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "gpu_check: $name TIMED OUT after ${limit} s" >&2
  elif [ "$rc" != 0 ]; then
    echo "gpu_check: $name failed (exit $rc)" >&2
  fi
  [ "$rc" = 0 ] || status=1
  return 0
}

environment() {
  "$py" - <<'EOF'
import platform, subprocess, torch, triton
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "triton", triton.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs")
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    print(smi.stdout.strip())
for name in ("av", "nvidia.dali", "deepspeed", "flash_attn", "xdist", "torchvision", "timm",
             "transformers"):
    try:
        __import__(name)
        print(name, "yes")
    except Exception as exc:  # noqa: BLE001
        print(name, "no", type(exc).__name__)
EOF
}
environment > "$out/gpu_env_${tag}_${date}.log" 2>&1
cat "$out/gpu_env_${tag}_${date}.log"

tests() {
  local log="$out/gpu_tests_${tag}_${date}.log"
  local where=(tests)
  [ "$swin" = 1 ] && where=(tests/kernels/test_swin_patches_gpu.py)
  if [ "$smoke" = 1 ]; then
    # Without a GPU the GPU tests only prove that they import and collect.
    limited "$py" -m pytest "${where[@]}" -m gpu --collect-only -q 2>&1 | tee "$log" | tail -n 3
    return "${PIPESTATUS[0]}"
  fi
  local workers=()
  if "$py" -c "import xdist" 2>/dev/null; then workers=(-n 8); fi
  limited "$py" -m pytest "${where[@]}" -m gpu -q -rs -p no:cacheprovider "${workers[@]}" 2>&1 | tee "$log" | tail -n 40
  return "${PIPESTATUS[0]}"
}

bisect() {
  # details (per-variant launch logs and cells, sanitizer logs) go to one archive, the row map
  # and the delta table into bisect_table.md: a device call brings back at most 8 files. The
  # variants run in parallel processes (9 and 3 sanitizers on the GPU machine's 16 cores); the
  # script stops the ones still running 30 s before the step's limit, so the table is written
  # with the cells that finished (TIMEOUT for the others) before the step is killed
  local args=(--out "$out/bisect" --time-limit $((limit - 30))) rc
  mkdir -p "$out/bisect"
  if [ "$smoke" = 1 ]; then
    # two worker processes: the parallel path the GPU takes
    args+=(--smoke --cases tiny-packed-shift:fp32 --variants baseline,one-unit,nan-scratch --jobs 2)
  else
    args+=(--sanitizer --sanitizer-timeout 170)
  fi
  limited "$py" benchmarks/bisect_window_attention.py "${args[@]}"
  rc=$?
  [ -f "$out/bisect/bisect_table.md" ] && cp "$out/bisect/bisect_table.md" "$out/"
  tar czf "$out/bisect_logs_${tag}_${date}.tgz" -C "$out" bisect && rm -rf "$out/bisect"
  return $rc
}

json="$out/gpu_check_${tag}_${date}.json"
benchmarks() {
  local select=()
  if [ "$quick" = 1 ]; then
    # the library's routes (what auto's table needs) and auto itself; not the outside baselines
    select=(-k "copy_bandwidth or (window_attention_op and fwd_bwd and (triton or sdpa or auto) and not sdpa-windows)")
  elif [ "$train" = 1 ]; then
    select=(benchmarks/test_bench_train_step.py)
  elif [ "$swin" = 1 ]; then
    select=(benchmarks/test_bench_swin.py)
    # compiled cases that could not finish inside the step's limit are skipped, not cut off
    export LFVILA_SWIN_BENCH_BUDGET_S=$((limit - 40))
  fi
  local where=(benchmarks)
  if { [ "$train" = 1 ] || [ "$swin" = 1 ]; } && [ "$quick" = 0 ]; then
    where=()  # the file is in select
  fi
  limited "$py" -m pytest "${where[@]}" -m gpu -q -p no:cacheprovider --benchmark-json="$json" \
    --benchmark-columns=median,iqr,rounds --benchmark-sort=name "${select[@]}" 2>&1 | tail -n 15
  return "${PIPESTATUS[0]}"
}

report() {
  if [ ! -s "$json" ]; then
    echo "gpu_check: no benchmark results in $json" >&2
    return 1
  fi
  local flags=""
  [ "$smoke" = 1 ] && flags+=" --smoke"
  [ "$quick" = 1 ] && flags+=" --quick"
  [ "$train" = 1 ] && flags+=" --train"
  [ "$swin" = 1 ] && flags+=" --swin"
  limited "$py" benchmarks/report.py "$json" --out "$out/gpu_check_${tag}_${date}.md" \
    --command "benchmarks/gpu_check.sh$flags" || return $?
  { [ "$train" = 1 ] || [ "$swin" = 1 ]; } && return 0  # no window-attention op rows: no table
  # auto's table from the op rows (fwd+bwd of triton / sdpa / reference per window size)
  limited "$py" benchmarks/auto_table.py "$json" --out "$out/auto_table.json"
}

if [ "$quick" = 1 ]; then
  # worst case 200 + 220 + 150 + 30 s: a device call's 10 minutes (the bisect stops its own
  # cells 30 s early; the report and the table take seconds)
  step "GPU tests" 200 tests
  [ "$bisect" = 1 ] && step "window-attention bisect" 220 bisect
  step "benchmark slice" 150 benchmarks
  step "report and auto table" 30 report
elif [ "$train" = 1 ]; then
  # full-size models, 2 stages x 2 backends x eager/compiled, the profile, checkpointing
  step "training-step benchmarks" 540 benchmarks
  step "report" 30 report
elif [ "$swin" = 1 ]; then
  # worst case 180 + 360 + 30 s: one device call
  step "Swin-patch GPU tests" 180 tests
  step "Swin benchmarks" 360 benchmarks
  step "report" 30 report
elif [ "$bisect" = 1 ]; then
  step "window-attention bisect" 300 bisect
else
  step "GPU tests" 900 tests
  step "GPU benchmarks" 1800 benchmarks
  step "report and auto table" 60 report
fi
echo "== gpu_check ($tag): done in $(( $(date +%s) - start )) s, status $status; results in $out"
exit $status
