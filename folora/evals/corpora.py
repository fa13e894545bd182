"""Real text that ships with every Python: the language reference as prose and standard-library sources as code.

Both are fixed by the interpreter version; their fingerprints are recorded with every result.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

# Modules of the standard library used as the code corpus: pure Python, stable, varied in style.
STDLIB_MODULES = (
    "textwrap.py", "fractions.py", "heapq.py", "bisect.py", "shlex.py", "graphlib.py", "colorsys.py",
    "string.py", "statistics.py", "calendar.py", "difflib.py", "fnmatch.py", "glob.py", "queue.py",
    "sched.py", "numbers.py", "operator.py", "pprint.py", "reprlib.py", "tabnanny.py", "json/decoder.py",
    "json/encoder.py", "csv.py", "ipaddress.py", "dataclasses.py", "functools.py", "contextlib.py",
)


def prose_documents(max_chars: int = 2000) -> list[str]:
    """Paragraph-aligned chunks of CPython's language reference (`pydoc_data/topics.py`), in a fixed order."""
    from pydoc_data.topics import topics

    chunks: list[str] = []
    for key in sorted(topics):
        chunks.extend(_chunk(topics[key], max_chars, separator="\n\n"))
    return chunks


def stdlib_code_documents(max_chars: int = 2000) -> list[str]:
    """Chunks of standard-library source files, split at blank lines, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[str] = []
    for name in STDLIB_MODULES:
        path = root / name
        if path.is_file():
            chunks.extend(_chunk(path.read_text(encoding="utf-8"), max_chars, separator="\n\n"))
    return chunks


def _chunk(text: str, max_chars: int, separator: str) -> list[str]:
    """Greedily pack separator-delimited blocks into chunks of at most about `max_chars` characters."""
    chunks, current = [], ""
    for block in text.split(separator):
        block = block.strip("\n")
        if not block.strip():
            continue
        if current and len(current) + len(block) + len(separator) > max_chars:
            chunks.append(current)
            current = ""
        current = f"{current}{separator}{block}" if current else block
    if current.strip():
        chunks.append(current)
    return [c[:max_chars] for c in chunks if len(c) >= 200]
