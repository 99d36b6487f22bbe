"""Safe, distinct, deterministic file names for whatever a service calls its objects.

The rules, applied in order to each name in one folder (documented in SEMANTICS.md):
 1. '/' becomes '∕' (U+2215) and NUL becomes '␀' (U+2400): both are impossible in a
    POSIX file name, and the look-alikes keep the name readable.
 2. '', '.' and '..' become '_', '_.' and '_..'.
 3. Names longer than 255 UTF-8 bytes are cut (at a character boundary) with their
    extension kept, and marked with '~' plus 8 hex digits of the object id's hash.
 4. When two or more objects of one folder would get the same name, every one of
    them gets ' ~' plus 8 hex digits of its id's hash before the extension. The
    result depends only on the object's name and id, never on listing order, so
    it is stable across listings and remounts.
Names differing only by case or by Unicode normalisation are distinct byte strings
on Linux and stay as they are.
"""
from __future__ import annotations

import hashlib
from collections import Counter

MAX_NAME = 255


def _tag(object_id: str) -> str:
    return hashlib.sha256(object_id.encode()).hexdigest()[:8]


def _split_ext(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    if dot <= 0 or len(name) - dot > 10:
        return name, ""
    return name[:dot], name[dot:]


def _fit(stem: str, suffix: str) -> str:
    """stem + suffix, cutting stem so that the result fits MAX_NAME bytes."""
    budget = MAX_NAME - len(suffix.encode())
    raw = stem.encode()
    if len(raw) > budget:
        stem = raw[:budget].decode("utf-8", "ignore")
    return stem + suffix


def clean(name: str, object_id: str = "") -> str:
    """Rules 1–3 for one name."""
    name = name.replace("/", "\u2215").replace("\x00", "\u2400")
    if name in ("", ".", ".."):
        name = "_" + name
    if len(name.encode()) > MAX_NAME:
        stem, ext = _split_ext(name)
        name = _fit(stem, f"~{_tag(object_id or name)}{ext}")
    return name


def with_tag(name: str, object_id: str) -> str:
    stem, ext = _split_ext(name)
    return _fit(stem, f" ~{_tag(object_id)}{ext}")


def unique_names(items: list[tuple[str, str]]) -> list[str]:
    """Safe names for (name, object_id) pairs of one folder, in the same order."""
    cleaned = [clean(name, oid) for name, oid in items]
    counts = Counter(cleaned)
    out = [with_tag(c, oid) if counts[c] > 1 else c for c, (_, oid) in zip(cleaned, items)]
    # a tagged name could still meet an untagged one, or two ids could share a tag
    taken: Counter[str] = Counter(out)
    if len(taken) != len(out):
        seen: set[str] = set()
        for i, name in enumerate(out):
            n = 2
            candidate = name
            while candidate in seen:
                stem, ext = _split_ext(name)
                candidate = _fit(stem, f" ({n}){ext}")
                n += 1
            seen.add(candidate)
            out[i] = candidate
    return out
