#!/usr/bin/env bash
# Set up (or refresh) the Python environment of vla_mm. Idempotent: a re-run with nothing changed takes seconds.
#
#   tools/setup_env.sh [--wheelhouse DIR] [--python PY]
#
#   VLA_VENV        virtual environment to create/use (default: <repo>/.venv). If VLA_VENV=system, the current
#                   python environment is used as it is (an existing torch there is respected).
#   VLA_WHEELHOUSE  local folder with a prebuilt mmcv==2.1.0 wheel (same as --wheelhouse). Used when its wheel
#                   imports with the installed torch; otherwise mmcv is built from the PyPI sdist.
#   VLA_TORCH_SPEC  torch to install into a new venv (default: "torch==2.14.1 torchvision==0.29.1").
#   MMCV_FORCE_CUDA 1/0 to force CUDA ops on/off when building mmcv (default: on when nvcc and a GPU are present).
#
# Steps: venv -> torch -> mmcv 2.1.0 with ops -> runtime + test requirements -> vla_mm (editable) -> import check.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VLA_VENV:-$ROOT/.venv}
WHEELHOUSE=${VLA_WHEELHOUSE:-}
PY=${PYTHON:-python3}
TORCH_SPEC=${VLA_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
CACHE=${VLA_CACHE:-$ROOT/.cache}

while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse) WHEELHOUSE=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "setup_env.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[setup_env] %s\n' "$*"; }
die() { printf '[setup_env] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- 1. the environment
if [ "$VENV" = system ]; then
  PYBIN=$(command -v "$PY") || die "no '$PY' on PATH"
else
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    "$PY" -m venv "$VENV" || die "could not create a venv with $PY"
  fi
  PYBIN=$VENV/bin/python
fi
PIP=(pip_quiet "$PYBIN" -m pip --disable-pip-version-check)
# pip's warnings about this machine's unused local index locations are noise; errors still show
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
export PIP_DISABLE_PIP_VERSION_CHECK=1

# ---------------------------------------------------------------- 2. torch (an existing one is respected)
if "$PYBIN" -c 'import torch' 2>/dev/null; then
  log "torch $("$PYBIN" -c 'import torch; print(torch.__version__)') already installed: keeping it"
else
  log "installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  "${PIP[@]}" install -q $TORCH_SPEC || die "torch install failed ($TORCH_SPEC)"
fi
TORCH_VER=$("$PYBIN" -c 'import torch; print(torch.__version__.split("+")[0])')
PYVER=$("$PYBIN" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')

# ---------------------------------------------------------------- 3. mmcv 2.1.0 with ops
mmcv_ok() { "$PYBIN" -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == "2.1.0"; mmcv.ops.nms' 2>/dev/null; }

if mmcv_ok; then
  log "mmcv 2.1.0 with ops already importable"
else
  # build tools (setuptools<70: mmcv's setup.py imports pkg_resources) and mmcv's own runtime dependencies
  "${PIP[@]}" install -q 'setuptools<70' wheel ninja packaging addict Pillow pyyaml yapf opencv-python numpy \
    'mmengine==0.10.7' || die "could not install the mmcv build tools and dependencies"
  installed=0
  if [ -n "$WHEELHOUSE" ]; then
    if ls "$WHEELHOUSE"/mmcv-2.1.0-cp"$PYVER"-*.whl >/dev/null 2>&1; then
      log "installing mmcv from the wheelhouse $WHEELHOUSE"
      if "${PIP[@]}" install -q --find-links "$WHEELHOUSE" --no-index --no-deps "mmcv==2.1.0" && mmcv_ok; then
        installed=1
      else
        log "the wheelhouse mmcv does not import with torch $TORCH_VER: building from source instead"
        "${PIP[@]}" uninstall -q -y mmcv >/dev/null 2>&1 || true
      fi
    else
      log "no mmcv-2.1.0 wheel for cp$PYVER in $WHEELHOUSE: building from source"
    fi
  fi
  if [ "$installed" = 0 ]; then
    built=$CACHE/wheels/torch$TORCH_VER-cp$PYVER
    if ! ls "$built"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
      src=$CACHE/mmcv-src
      rm -rf "$src" && mkdir -p "$src" "$built"
      log "downloading the mmcv 2.1.0 sdist"
      "${PIP[@]}" download -q --no-deps --no-binary :all: "mmcv==2.1.0" -d "$src" || die "could not download the mmcv sdist"
      tar -xzf "$src"/mmcv-2.1.0.tar.gz -C "$src"
      # torch >= 2.10 headers need C++20; mmcv 2.1.0 forces c++14/c++17
      sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$src/mmcv-2.1.0/setup.py"
      if [ -n "${MMCV_FORCE_CUDA:-}" ]; then
        force_cuda=$MMCV_FORCE_CUDA
      elif command -v nvcc >/dev/null 2>&1 && "$PYBIN" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        force_cuda=1
      else
        force_cuda=0
      fi
      if [ "$force_cuda" = 1 ]; then
        export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PYBIN" -c 'import torch; m,n=torch.cuda.get_device_capability(); print(f"{m}.{n}")')}
      fi
      log "building mmcv 2.1.0 with ops from source (FORCE_CUDA=$force_cuda; about 15 min on 2 cores)"
      (cd "$src/mmcv-2.1.0" && MMCV_WITH_OPS=1 FORCE_CUDA=$force_cuda MAX_JOBS=${MAX_JOBS:-$(nproc)} \
         "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$built" .) || die "mmcv source build failed"
      rm -rf "$src"
    fi
    "${PIP[@]}" install -q --no-deps "$built"/mmcv-2.1.0-*.whl || die "could not install the built mmcv wheel"
    mmcv_ok || die "mmcv 2.1.0 built but 'import mmcv.ops' fails"
  fi
fi

# ---------------------------------------------------------------- 4. the rest, then vla_mm itself
stamp=$VENV/.vla_mm_requirements.sha
[ "$VENV" = system ] && stamp=$CACHE/.system_requirements.sha && mkdir -p "$CACHE"
want=$(cat "$ROOT"/requirements/*.txt "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PYBIN" -c 'import vla_mm' 2>/dev/null; then
  log "requirements unchanged since the last run"
else
  log "installing runtime and test requirements"
  "${PIP[@]}" install -q -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt" \
    || die "requirements install failed"
  log "installing vla_mm (editable)"
  "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT" || die "vla_mm install failed"
  echo "$want" > "$stamp"
fi

# ---------------------------------------------------------------- 5. verify
fail=0
for mod in mmcv.ops mmengine mmpretrain.models mmseg.models mmdet.models vla_mm vla_mm.ops; do
  if ! out=$(cd / && "$PYBIN" -c "import vla_mm, $mod" 2>&1); then
    printf '[setup_env] FAILED: import %s\n%s\n' "$mod" "$(echo "$out" | tail -n 3)" >&2
    fail=1
  fi
done
[ "$fail" = 0 ] || die "some imports failed (above)"
log "ready: $PYBIN (torch $TORCH_VER, mmcv 2.1.0 with ops, mmpretrain, mmseg, mmdet, vla_mm)"
