#!/usr/bin/env bash
# One prepared training run for a lent GPU machine (the device tool's `run`), so that a short lease trains
# instead of being set up, and nothing it produced stays behind on the machine when it is given back.
#
#   bash tools/gpu_lease.sh CONFIG MINUTES [BENCH_BATCHES...]
#
# From this machine, once datasets/ is built as the default denoiser's model card says (about 35 MB):
#   run(command="bash tools/gpu_lease.sh configs/ssmir/denoise-color-small-v2-gpu7.yaml 8 16 32",
#       carry=["datasets"], timeout_s=600)
#
# 1. prints the machine's GPU and the versions of torch, triton and numba;
# 2. if batch sizes are given, times the config's training step at each of them on the GPU
#    (benchmarks/bench_train_step.py, random data, about a minute);
# 3. trains CONFIG with `ssmir train --time-budget MINUTES`m (the probe sizes the schedule to the minutes left);
# 4. copies into $OUT what ships or resumes the run: ema.safetensors, last.pth (weights, EMA, optimizer and
#    scheduler state: `ssmir train --config OUT/config.yaml --resume OUT/last.pth` goes on from it anywhere),
#    the scaled config.yaml, metrics.csv and the logs.
# The machine has the Python packages ssmir needs (torch, triton, numba, accelerate, einops, typer, ...), so ssmir
# runs from the source tree; nothing is installed.
set -euo pipefail
config=${1:?usage: bash tools/gpu_lease.sh CONFIG MINUTES [BENCH_BATCHES...]}
minutes=${2:?usage: bash tools/gpu_lease.sh CONFIG MINUTES [BENCH_BATCHES...]}
shift 2
[ -f "$config" ] || { echo "gpu_lease.sh: config $config: no such file" >&2; exit 2; }
case "$minutes" in ''|*[!0-9.]*) echo "gpu_lease.sh: MINUTES must be a number, got '$minutes'" >&2; exit 2;; esac
out=${OUT:-runs/lease-out}
run=runs/lease
mkdir -p "$out"
rm -rf "$run"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'EOF' 2>&1 | tee "$out/env.txt"
import torch
print("torch", torch.__version__, "| GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("triton", "numba", "accelerate"):
    try:
        print(name, __import__(name).__version__)
    except ImportError:
        print(name, "missing")
EOF
if [ "$#" -gt 0 ]; then
    device=cpu
    python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && device=cuda
    python3 benchmarks/bench_train_step.py --device "$device" --config "$config" --backends auto --batch "$@" \
        --repeat 6 --warmup 2 2>&1 | tee "$out/bench.txt"
fi
workers=$(( $(nproc) > 8 ? 8 : $(nproc) ))
status=0
python3 -m ssmir train --config "$config" --output "$run" --time-budget "${minutes}m" --workers "$workers" \
    > "$out/train.log" 2>&1 || status=$?
tail -n 5 "$out/train.log" | tr '\r' '\n' | tail -n 5
for f in ema.safetensors last.pth config.yaml metrics.csv; do
    [ -f "$run/$f" ] && cp "$run/$f" "$out/"
done
ls -l "$out"
exit "$status"
