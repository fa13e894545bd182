"""One identity for everything folora keeps and finds again: cached base evaluations, proxy samples, calibrations,
drafts, checkpoints and adopted cells.

An identity is a kind and three named parts: the **config** it depends on (a subset, flat), the **data** it read
(fingerprints), and the **code** that computed it (a digest of the source files of the modules involved, and the
versions of the packages that compute). `identity(...)` builds it; `.key` hashes it into a file stem; `.parts` is
what a checkpoint stores so that a mismatch can be explained key by key (`differences`). Every cache of the
project calls `identity`, and no other function hashes a cache key: a new cache states its three parts here, and a
change to any of them computes anew instead of pairing a stale cached thing with fresh numbers.

The code part of a cache is the digest of the modules that compute it and of every folora module they import,
found by reading their `import` statements (`code_digest`): editing the scoring code (`folora/evals/suite.py`,
`outcomes.py`, the shipped lm-eval tasks) invalidates the cached base evaluations, while an edit to the training
loop does not. A checkpoint keys on the digest of every source and config file a run executes (`tree_digest`).
docs/caches.md lists every cache with its three parts and where it lives.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCAL_PACKAGES = ("folora", "baselines")   # imports followed by `code_digest`; everything else is a package version
SOURCE_SUFFIXES = {".py", ".yaml", ".jsonl", ".json"}

# Keys that change how a run is executed or reported, never what it computes: a checkpoint written with one value
# resumes under another (a sweep restarted with fewer threads, a different W&B mode, checkpoints kept or not), and
# a cell computed with one is adopted by a run with another.
EXECUTION_KEYS = ("threads", "skip_completed", "logger", "train.checkpoint_every", "train.keep_checkpoint",
                  "train.on_code_change", "experiment", "reuse_from", "calibration_cache", "distributed_timeout_min",
                  "train.sharding")


@dataclass(frozen=True)
class Identity:
    """What a cached or resumed thing depends on: its kind and three named parts."""

    kind: str
    config: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    code: dict = field(default_factory=dict)

    @property
    def parts(self) -> dict:
        return {"config": self.config, "data": self.data, "code": self.code}

    @property
    def key(self) -> str:
        """A file stem naming exactly these parts (24 hex digits of a SHA-256)."""
        text = json.dumps({"kind": self.kind, **self.parts}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def identity(kind: str, *, config: dict | None = None, data: dict | None = None, code: dict | None = None) -> Identity:
    """The identity of a `kind` of cached thing (`base_eval`, `proxy`, `calibration`, `drafts`, `checkpoint`,
    `adoption`) from its config subset, data fingerprints and code digest (`code_part`)."""
    return Identity(kind, dict(config or {}), dict(data or {}), dict(code or {}))


def fingerprint(value) -> str:
    """A data fingerprint: 16 hex digits of the SHA-256 of `value` as sorted JSON (task examples, requests, token
    ids). Records keep these, so the format does not change."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def code_part(*modules: str, files: tuple[Path, ...] = (), packages: tuple[str, ...] = ()) -> dict:
    """The code part of an identity: the digest of `modules` (dotted names) with every local module they import and
    of `files` (folders are read whole; relative paths are relative to the checkout), and the versions of `packages`."""
    return {"digest": code_digest(*modules, files=files), **package_versions(packages)}


def package_versions(packages: tuple[str, ...]) -> dict[str, str | None]:
    out = {}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# --- code digests -----------------------------------------------------------------------------------------------

def code_digest(*modules: str, files: tuple[Path, ...] = ()) -> str:
    """A digest of the source of `modules`, of every module of folora or baselines they import (at module level or
    inside functions, followed transitively, with the packages' `__init__`s), and of `files`."""
    paths = set()
    for module in modules:
        paths |= _closure(module)
    for path in files:
        path = Path(path) if Path(path).is_absolute() else REPO / path
        paths |= {p for p in path.rglob("*") if _is_source(p)} if path.is_dir() else {path}
    return _digest(sorted(paths))


def tree_digest(repo: Path | None = None, folders: tuple[str, ...] = ("folora", "baselines", "conf")) -> str:
    """A digest of every source, config and shipped data file under `folders`: the code a run executes. A commit
    that only adds results or docs leaves it unchanged."""
    repo = repo or REPO
    return _digest(sorted(p for folder in folders for p in (repo / folder).rglob("*") if _is_source(p)), repo)


def _is_source(path: Path) -> bool:
    return path.is_file() and path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts


def _digest(paths: list[Path], root: Path | None = None) -> str:
    root = (root or REPO).resolve()
    digest = hashlib.sha256()
    for path in paths:
        path = path.resolve()
        name = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
        digest.update(str(name).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@cache
def _closure(module: str) -> frozenset[Path]:
    """The source files of `module` and of every local module it imports, transitively."""
    seen: set[str] = set()
    todo = [module]
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _source_of(name)
        if path is None:
            continue
        files.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]   # the packages' __init__ run first
        todo += _local_imports(path, name)
    return frozenset(files)


def _source_of(module: str) -> Path | None:
    """The file of a local module, found in the checkout without importing anything (None: not a module, e.g. a
    name imported from one)."""
    base = REPO.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _local_imports(path: Path, module: str) -> list[str]:
    """The local modules `path` imports: `import a.b`, `from a.b import c` (c a submodule or a name: both tried)
    and relative imports, anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return [name for name in found if name.split(".")[0] in LOCAL_PACKAGES]


# --- configs ----------------------------------------------------------------------------------------------------

def flat_config(tree, prefix: str = "") -> dict:
    """A nested config as {"a.b.c": value}; lists as their repr, so that two configs compare key by key."""
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out |= flat_config(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: tree if not isinstance(tree, list) else repr(tree)}


def without_keys(flat: dict, keys) -> dict:
    """A flat config less each of `keys` and everything under it."""
    return {k: v for k, v in flat.items() if not any(k == e or k.startswith(e + ".") for e in keys)}


def differences(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(config differences, code differences) between two identities' parts. A config key that only one side has
    was added or removed by a change of the code (its configs), so it counts as a code difference."""
    config, code = [], []
    for part in ("config", "data"):
        before_part, after_part = saved.get(part, {}), current.get(part, {})
        for key in sorted(set(before_part) | set(after_part)):
            before, after = before_part.get(key, "<absent>"), after_part.get(key, "<absent>")
            if before != after:
                side = code if "<absent>" in (before, after) else config
                side.append(f"{key}: {before!r} in the checkpoint, {after!r} now")
    for key in sorted(set(saved.get("code", {})) | set(current.get("code", {}))):
        if saved["code"].get(key) != current["code"].get(key):
            code.append(f"code {key}: {saved['code'].get(key)} in the checkpoint, {current['code'].get(key)} now")
    return config, code
