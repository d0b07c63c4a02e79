#!/usr/bin/env bash
# Type-check runner/engines/vllm_engine.py against the real vLLM source.
#
# vLLM cannot be installed or run here (it needs CUDA and its own torch), so its wheel goes into a side
# virtualenv outside the repo with --no-deps, next to mypy and the few pure-typing packages whose types the
# adapter's calls go through (msgspec: SamplingParams is a msgspec.Struct; pydantic: vLLM's configs). vLLM's
# heavy dependencies (torch, transformers, ...) stay missing and read as Any; every `vllm.*` import must resolve.
# A canary file that misuses vLLM's API must fail, proving the signatures were really read.
#
# Not part of the test run (it downloads a ~340 MB wheel). Run by hand: bash scripts/check_vllm_engine.sh
# Environment: VLLM_VERSION (0.33.0), VLLM_CHECK_VENV (/tmp/vllm-check-venv), PYTHON (python3.11).
set -euo pipefail

VLLM_VERSION="${VLLM_VERSION:-0.33.0}"
MYPY_VERSION="2.4.1"
VENV="${VLLM_CHECK_VENV:-/tmp/vllm-check-venv}"
PYTHON="${PYTHON:-python3.11}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

case "$VENV" in
  "$REPO"|"$REPO"/*) echo "VLLM_CHECK_VENV must be outside the repo: $VENV" >&2; exit 2 ;;
esac

installed_vllm() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm"))' 2>/dev/null || true
}

if [[ ! -x "$VENV/bin/mypy" || "$(installed_vllm)" != "$VLLM_VERSION" ]]; then
  echo "setting up $VENV (vllm $VLLM_VERSION, mypy $MYPY_VERSION)" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "mypy==$MYPY_VERSION"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "vllm==$VLLM_VERSION"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    msgspec pydantic pydantic-core pydantic-settings typing-extensions annotated-types typing-inspection
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cat > "$work/mypy.ini" <<'EOF'
[mypy]
python_version = 3.11
strict = True
warn_unused_ignores = True
# vLLM's own dependencies are not installed: they read as Any. Modules are analysed for their types only;
# errors are reported for the files named on the command line.
ignore_missing_imports = True
follow_imports = silent

[mypy-vllm.*]
# The point of this check: every vllm module we use must resolve to its real source.
ignore_missing_imports = False
EOF

run_mypy() {
  (cd "$REPO" && "$VENV/bin/mypy" --config-file "$work/mypy.ini" --cache-dir "$VENV/.mypy_cache" "$@")
}

# Negative control: each misuse below must be reported, or vLLM's types did not resolve.
cat > "$work/vllm_canary.py" <<'EOF'
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import tokens_input
from vllm.sampling_params import SamplingParams
from vllm.v1.engine.async_llm import AsyncLLM


async def misuse(llm: AsyncLLM) -> None:
    SamplingParams(max_tokenz=1)
    AsyncEngineArgs(scheduling_policy="lottery")
    llm.generate(tokens_input([1]), SamplingParams(max_tokens=1), "r", prioritty=1)
    await llm.abort(42)
EOF
set +e
canary="$(run_mypy "$work/vllm_canary.py" 2>&1)"
set -e
expected=4
found="$(grep -c 'vllm_canary.py:[0-9]*: error' <<<"$canary" || true)"
if [[ "$found" -ne "$expected" ]]; then
  echo "canary: expected $expected errors from misusing vLLM's API, got $found; vLLM types did not resolve:" >&2
  echo "$canary" >&2
  exit 1
fi
echo "canary: vLLM signatures resolved ($found misuses caught)" >&2

run_mypy runner/engines/vllm_engine.py
