#!/usr/bin/env bash
# The scripted GPU run: the GPU-marked tests, then the GPU benchmarks and their Markdown report.
# Sized to finish in under 8 minutes on one H100.
#
#   benchmarks/gpu_check.sh [--out DIR]     on a GPU machine, with that machine's own python3 and
#                                           torch (installs this checkout with pip --no-deps -e)
#   benchmarks/gpu_check.sh --smoke [...]   CPU smoke mode: tiny shapes under the Triton
#                                           interpreter, so the script itself is tested by `make test`
#
# Writes to DIR (default benchmarks/results): gpu_tests_<tag>_<date>.log, gpu_check_<tag>_<date>.json
# (raw pytest-benchmark) and gpu_check_<tag>_<date>.md (the report). Exit status: 0 when every step
# passed; the report is still written when tests or benchmarks failed.
set -uo pipefail
cd "$(dirname "$0")/.."

smoke=0
out=benchmarks/results
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"

if [ "$smoke" = 1 ]; then
  py=${PYTHON:-.venv/bin/python}
  [ -x "$py" ] || py=python3
  export TRITON_INTERPRET=1 LFVILA_BENCH_SMOKE=1
  tag=cpu-smoke
else
  py=${PYTHON:-python3}
  if ! "$py" -c "import lfvila.kernels" 2>/dev/null; then
    LFVILA_SKIP_CUDA_BUILD=1 "$py" -m pip install -q --no-deps --no-build-isolation -e . || exit 1
  fi
  if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device; use --smoke on a CPU machine" >&2
    exit 1
  fi
  tag=$("$py" -c "import torch, re; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
  export PYTHONUNBUFFERED=1
fi
date=$(date +%Y%m%d)
status=0
start=$(date +%s)

echo "== gpu_check ($tag): tests marked gpu"
if [ "$smoke" = 1 ]; then
  # Without a GPU the GPU tests only prove that they import and collect.
  "$py" -m pytest tests -m gpu --collect-only -q 2>&1 | tee "$out/gpu_tests_${tag}_${date}.log" | tail -n 3
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
else
  "$py" -m pytest tests -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$out/gpu_tests_${tag}_${date}.log" | tail -n 25
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

echo "== gpu_check ($tag): benchmarks marked gpu ($(( $(date +%s) - start )) s so far)"
json="$out/gpu_check_${tag}_${date}.json"
"$py" -m pytest benchmarks -m gpu -q -p no:cacheprovider --benchmark-json="$json" \
  --benchmark-columns=median,iqr,rounds --benchmark-sort=name 2>&1 | tail -n 15
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== gpu_check ($tag): report"
if [ -s "$json" ]; then
  "$py" benchmarks/report.py "$json" --out "$out/gpu_check_${tag}_${date}.md" \
    --command "benchmarks/gpu_check.sh $( [ "$smoke" = 1 ] && echo --smoke )" || status=1
else
  echo "gpu_check: no benchmark results in $json" >&2
  status=1
fi
echo "== gpu_check ($tag): done in $(( $(date +%s) - start )) s, status $status; results in $out"
exit $status
