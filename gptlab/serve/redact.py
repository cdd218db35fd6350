"""Error messages without the server's paths: a client learns which model failed, not where it lies on disk.

The library's messages name files by their full path, which is right for a person at a terminal
and wrong for an HTTP client (it maps the server's disk for whoever sends a bad request).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

# An absolute POSIX path of two parts or more, up to a quote, a space or punctuation that ends a clause.
_ABS_PATH = re.compile(r"(?<![\w/.:~-])/[^\s'\"`,;:()]+(?:/[^\s'\"`,;:()]+)+")


def hide_paths(text: str, names: Mapping[str, str] | None = None) -> str:
    """`text` with each prefix in `names` (a server path) replaced by its public name, then any other
    absolute path on this machine by its last part ("/srv/models/wine/config.json" -> "config.json").

    Only paths whose first folder exists here are touched, so the API's own routes ("GET /v1/models")
    read as they were.
    """
    for path, name in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):  # the longest, most specific first
        text = text.replace(path, name)
    return _ABS_PATH.sub(_last_part, text)


def _last_part(m: re.Match[str]) -> str:
    path = m.group(0)
    first = path.split("/")[1]
    return path.rstrip("/").rsplit("/", 1)[-1] if first and Path("/", first).exists() else path
