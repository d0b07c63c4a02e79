"""Source archives of the Cloud Functions: the function's folder (main.py, requirements.txt),
the shared `jobs/` package beside it, and the root openapi.yaml the functions serve. No
`__pycache__`, no bytecode. Named by a hash of the content, so a change deploys a new build
and an unchanged tree deploys nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pulumi

REPO = Path(__file__).resolve().parents[2]
SHARED_PACKAGE = "jobs"
API_DOCUMENT = "openapi.yaml"
REQUIRED = ("main.py", "requirements.txt")
_SKIP_SUFFIXES = (".pyc", ".pyo")


def _wanted(path: Path) -> bool:
    return path.is_file() and "__pycache__" not in path.parts and path.suffix not in _SKIP_SUFFIXES


def function_files(function: str, repo: Path = REPO) -> dict[str, Path]:
    """Archive path → file on disk for one function. Raises FileNotFoundError if a part is missing."""
    folder = repo / "functions" / function
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"functions/{function} lacks {', '.join(missing)}")
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if _wanted(p)}
    package = repo / SHARED_PACKAGE
    if not (package / "__init__.py").is_file():
        raise FileNotFoundError(f"the shared package {SHARED_PACKAGE}/ is missing")
    files.update({p.relative_to(repo).as_posix(): p for p in sorted(package.rglob("*")) if _wanted(p)})
    if not (repo / API_DOCUMENT).is_file():
        raise FileNotFoundError(f"{API_DOCUMENT} is missing at the repository root")
    files[API_DOCUMENT] = repo / API_DOCUMENT
    return files


def content_digest(files: dict[str, Path]) -> str:
    """A hash of names and contents (not timestamps): equal trees give equal digests."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return digest.hexdigest()


def function_archive(files: dict[str, Path]) -> pulumi.AssetArchive:
    """A zip built by Pulumi from individual files (a FileArchive of a folder would take __pycache__)."""
    return pulumi.AssetArchive({name: pulumi.FileAsset(str(path)) for name, path in sorted(files.items())})
