#!/usr/bin/env bash
# Source this at the start of every GPU-machine run (see ../shared/device/README.md):
#   source tools/device_prelude.sh [--peers]
# Installs the carried OpenMMLab wheels (.whl/*.whl) and this project into /tmp/site, and, with --peers, the
# benchmark peers in .whl/peers (flash-linear-attention 0.6.0, mamba-ssm / Vision-RWKV CUDA ops).
# NVLink multicast stays off in every process (it can take a shared host's GPUs out of service).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
_peers=0; [ "${1:-}" = "--peers" ] && _peers=1
# reinstall when the carried sources changed (their content, not git's HEAD: the copy's .git can lag the tree)
_stamp="$(find vla_mm ops setup.py pyproject.toml setup.cfg -type f \( -name '*.py' -o -name '*.toml' -o -name '*.cfg' \) 2>/dev/null | sort | xargs md5sum | md5sum | cut -c1-16)-$_peers"
if [ ! -f /tmp/site/.vla_mm_ready ] || [ "$(cat /tmp/site/.vla_mm_ready)" != "$_stamp" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
  if [ "$_peers" = 1 ] && ls .whl/peers/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/peers/*.whl || return 1
  fi
  python3 -m pip install -q --no-deps --no-build-isolation --no-cache-dir --upgrade --target /tmp/site . || return 1
  rm -rf build
  echo "$_stamp" > /tmp/site/.vla_mm_ready
fi
export PYTHONPATH=/tmp/site PYTHONSAFEPATH=1
python3 -c 'import torch, triton; print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__, "triton", triton.__version__)'
