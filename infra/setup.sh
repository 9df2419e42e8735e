#!/usr/bin/env bash
# Set up a fresh machine: system packages (when missing), then .venv with everything.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -f /usr/share/wordnet/index.noun ] || need_apt+=(wordnet-base)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# the Ray cluster launcher (infra/ray/*.yaml) reaches nodes over SSH and syncs files with rsync
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v rsync >/dev/null 2>&1 || need_apt+=(rsync)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "setup: installing system packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# .venv is up to date: nothing to install (`ray up` runs this on every node each time)
if [ .venv/.installed -nt pyproject.toml ] && [ .venv/.installed -nt infra/setup.sh ]; then
  echo "setup: ready (.venv up to date)"
  exit 0
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[all]"
# PP-OCR's text detector (text_mask). Its wheel asks for opencv-python, which would shadow the
# headless OpenCV everything else uses; its other requirements are in pyproject.toml.
.venv/bin/pip install -q --no-deps "rapidocr-onnxruntime>=1.3"
# MTCNN face detector (face_blur.detector: mtcnn), weights inside the wheel; its pins on torch and
# numpy are older than ours, and it needs nothing else.
.venv/bin/pip install -q --no-deps "facenet-pytorch>=2.6"
touch .venv/.installed
echo "setup: ready (.venv)"
