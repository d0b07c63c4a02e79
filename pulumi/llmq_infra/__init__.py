"""llmq's infrastructure as Pulumi components: one ComponentResource per module, composed by
`pulumi/__main__.py`. Only `config.py` reads `pulumi.Config`; components take typed Args.

A package (not loose modules) because Pulumi runs `pulumi/` with that folder first on sys.path:
loose modules named like `queue.py` would shadow the standard library.

The repository root goes on sys.path too (after everything else, so it shadows nothing): the
components take the names and numbers the code and the deployment share from `jobs.constants`."""

import sys
from pathlib import Path

_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.append(_REPO)
