#!/usr/bin/env bash
# The whole GPU session as one command, for the lent device machine (one H200; numba,
# numba-cuda, CuPy and torch preinstalled; no network):
#
#   OUT=/path/to/results bash bench/gpu.sh [--quick]
#
# Stages, each under its own time limit (the defaults add up to under 8 minutes), each
# logging to $OUT; a stage that fails or runs out of time is recorded and the next one
# runs all the same:
#   install  pip install -e . of this tree, without dependencies and offline
#   check    pyopt check --device cuda --json $OUT/check.json
#   tests    the sim- and gpu-marked tests on real CUDA (CuPy arrays, Numba device arrays,
#            torch CUDA tensors), junit XML to $OUT/tests.xml
#   bench    pyopt bench --backend cuda --no-compile-times --plot, results and plots in
#            $OUT/bench/ (the cold/warm first-call processes would compile every CUDA
#            kernel twice more, CUDA kernels not being cached: a minute or more of the
#            lease; BENCH_ARGS="--backend cuda" brings them back)
# Then $OUT/summary.txt (the machine, every stage's status and time, the failed checks,
# the tests' closing line), printed last, and the stage logs packed into $OUT/logs.tar.gz:
# the device tool brings back at most 8 files, and this leaves summary.txt, check.json,
# tests.xml, logs.tar.gz and bench/ (results.json, results.csv, speedup.png,
# bandwidth.png). Exit status: 0 when every stage passed, else 1.
#
# --quick, the rehearsal: pyopt check --quick, the tests of GPU_TESTS_QUICK, pyopt bench
# --quick. Rehearse it here, where there is no GPU, under the Numba CUDA simulator:
#
#   NUMBA_ENABLE_CUDASIM=1 OUT=/tmp/gpu-rehearsal bash bench/gpu.sh --quick
#
# The simulator has no warp shuffles: there the check stage first installs those of
# tests/_cudasim.py and its tiny launch sizes, as the tests do. It times nothing: there
# the bench stage runs on the CPU, on one family, to rehearse its outputs.
#
# Variables: PYTHON (python3), GPU_TESTS and GPU_TESTS_QUICK (pytest targets),
# BENCH_ARGS (pyopt bench's options but --out, --plot, --no-progress), and the stages'
# limits in seconds INSTALL_S, CHECK_S, TESTS_S, BENCH_S: 440 in all, and at most 10 more
# each for a stage that ignores the interrupt, so 8 minutes at worst.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

quick=0
for arg in "$@"; do
    case $arg in
        --quick) quick=1 ;;
        -h | --help)
            sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "bench/gpu.sh: unknown argument $arg (only --quick)" >&2
            exit 2
            ;;
    esac
done
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"

PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# Real CUDA unless the caller asks for the simulator (the rehearsal).
export NUMBA_ENABLE_CUDASIM=${NUMBA_ENABLE_CUDASIM:-0}
simulator=$([ "$NUMBA_ENABLE_CUDASIM" != 0 ] && echo 1 || echo 0)

INSTALL_S=${INSTALL_S:-40}
CHECK_S=${CHECK_S:-120}
TESTS_S=${TESTS_S:-130}
BENCH_S=${BENCH_S:-150}
GPU_TESTS=${GPU_TESTS:-tests}
# The rehearsal's subset: the simulator runs a Python thread per CUDA thread.
GPU_TESTS_QUICK=${GPU_TESTS_QUICK:-tests/test_check.py tests/test_dropout.py}
check_args=(--device cuda --json "$OUT/check.json")
bench_args=(--backend cuda --no-compile-times)
tests=$GPU_TESTS
if [ "$quick" = 1 ]; then
    check_args+=(--quick)
    bench_args+=(--quick)
    tests=$GPU_TESTS_QUICK
fi
# python -m pyopt: the installed `pyopt` command, whether or not its folder is on PATH.
pyopt_check=("$PYTHON" -m pyopt check)
if [ "$simulator" = 1 ]; then
    pyopt_check=("$PYTHON" -c '
import sys
sys.path.insert(0, "tests")
import _cudasim
from pyopt.cli import main
from pyopt.kernels import config
_cudasim.install()
for name, value in _cudasim.SMALL_LAUNCH.items():
    setattr(config, name, value)
sys.exit(main(["check", *sys.argv[1:]]))' )
    bench_args=(--backend cpu --quick --family clip --no-compile-times --repeats 3)
fi
if [ -n "${BENCH_ARGS:-}" ]; then
    read -r -a bench_args <<<"$BENCH_ARGS"
fi

summary=$OUT/summary.txt
logs=(install.log check.log tests.log bench.log)
failed=0

# quoted ARGS...: the arguments as one shell-quoted line, a multi-line one (a python -c
# script) shown as '...'.
quoted() {
    local arg words=()
    for arg in "$@"; do
        case $arg in
            *$'\n'*) words+=("'...'") ;;
            *) words+=("$(printf '%q' "$arg")") ;;
        esac
    done
    echo "${words[*]}"
}

# stage NAME LIMIT_S COMMAND...: COMMAND under a time limit (SIGINT first, so pytest
# still writes its report and pyopt check its JSON), output to $OUT/NAME.log, one line
# of status and time appended to the summary, the log's last lines printed.
stage() {
    local name=$1 limit=$2 start=$SECONDS status verdict
    shift 2
    echo "=== $name (limit ${limit} s): $(quoted "$@")"
    timeout --signal=INT --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    status=$?
    case $status in
        0) verdict=pass ;;
        124 | 137) verdict="timed out at ${limit} s" ;;
        *) verdict="failed (exit $status)" ;;
    esac
    [ "$status" = 0 ] || failed=1
    printf '%-8s %-22s %4d s   %s\n' "$name" "$verdict" $((SECONDS - start)) \
        "$(quoted "$@")" >>"$summary"
    tail -n 4 "$OUT/$name.log"
}

{
    echo "bench/gpu.sh$([ "$quick" = 1 ] && echo ' --quick') on $(hostname), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])' 2>&1)"
    if [ "$simulator" = 1 ]; then
        echo "NUMBA_ENABLE_CUDASIM=$NUMBA_ENABLE_CUDASIM: the Numba CUDA simulator, no GPU"
    elif command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem \
            --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
    else
        echo "gpu: nvidia-smi not found"
    fi
    echo
    printf '%-8s %-22s %6s   %s\n' stage status time command
} >"$summary"

stage install "$INSTALL_S" "$PYTHON" -m pip install --no-deps --no-build-isolation --no-index -e .
stage check "$CHECK_S" "${pyopt_check[@]}" "${check_args[@]}"
# shellcheck disable=SC2086  # $tests is a list of paths
stage tests "$TESTS_S" "$PYTHON" -m pytest $tests -m "sim or gpu" -p no:cacheprovider \
    --junitxml="$OUT/tests.xml"
stage bench "$BENCH_S" "$PYTHON" -m pyopt bench "${bench_args[@]}" --out "$OUT/bench" \
    --plot --no-progress

{
    echo
    if [ -f "$OUT/check.log" ]; then
        echo "pyopt check: $(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/check.log" || echo 'no closing line')"
        grep -E ' fail$|^ +raised ' "$OUT/check.log" | head -n 40
    fi
    if [ -f "$OUT/tests.log" ]; then
        echo "tests: $(grep -E '^=+ .* in [0-9.]+s.* =+$' "$OUT/tests.log" | tail -n 1)"
        grep -E '^(FAILED|ERROR) ' "$OUT/tests.log" | head -n 20
    fi
} >>"$summary"

present=()
for log in "${logs[@]}"; do
    [ -f "$OUT/$log" ] && present+=("$log")
done
if [ "${#present[@]}" -gt 0 ] && tar -czf "$OUT/logs.tar.gz" -C "$OUT" "${present[@]}"; then
    (cd "$OUT" && rm -f "${present[@]}")
fi

echo
cat "$summary"
exit "$failed"
