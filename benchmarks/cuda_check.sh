#!/usr/bin/env bash
# The CUDA checks in one command, for a machine with a GPU (docs/speed.md, docs/operators.md):
# the CUDA tests, the operators' benchmark with a float32 and a bfloat16 map, the training benchmark
# (ours against torchvision's FasterRCNN) in float32 and bf16, and the default run on the GPU.
#
#     bash benchmarks/cuda_check.sh [OUT_DIR [STEP ...]]   # logs under OUT_DIR (default: outputs/cuda_check)
#
# STEPs (default: all): tests ops_float32 ops_bfloat16 train_float32 train_bf16 default_run.
#
# Each step has its own time limit so that one slow step leaves the others their time. Where the
# project's packages are missing, put their wheels in .whl/ first: they are installed under
# /tmp/site (the machine's own torch and torchvision are used as they are).
set -u
out=${1:-${OUT:-outputs/cuda_check}}
shift $(( $# > 0 ? 1 : 0 ))
steps=" ${*:-tests ops_float32 ops_bfloat16 train_float32 train_bf16 default_run} "
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $out/NAME.log, print the tail
    local name=$1 limit=$2; shift 2
    [[ $steps == *" $name "* ]] || return 0
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc, $((SECONDS - t0)) s"
    tail -n 25 "$out/$name.log"
}
{
    nvidia-smi -L
    $py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
} 2>&1
# The dataset first (the training steps read it), alongside the tests.
$py -c "from detector.data.synthetic import ensure_synthetic_split as e
for split, n, seed in (('train', 1000, 1), ('val', 200, 2)): e('datasets/synthetic', split=split, num_images=n, seed=seed)" \
    >/tmp/cuda_check_dataset.log 2>&1 &
step tests 90 $py -m pytest -q -n 0 -p no:cacheprovider -k "cuda" tests/ops tests/evaluation/test_inference.py tests/engine/test_amp.py
step ops_float32 75 $py tools/benchmark.py ops --device cuda --repeat 20
step ops_bfloat16 75 $py tools/benchmark.py ops --device cuda --repeat 20 --dtype bfloat16
wait
step train_float32 90 $py tools/benchmark.py train --device cuda --rounds 20 --amp off
step train_bf16 90 $py tools/benchmark.py train --device cuda --rounds 20 --amp bf16
step default_run 150 $py tools/train.py output_dir=/tmp/cuda_default_run progress=false
cp /tmp/cuda_default_run/metrics.json "$out/default_run_metrics.json" 2>/dev/null
true
