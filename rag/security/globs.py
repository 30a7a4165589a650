r"""The globs of ``.rag-access.toml`` rules; their syntax is documented in rag/security/access.py's docstring.

fnmatch.translate lets "*" cross "/" and 3.11 has neither glob.translate nor PurePath.full_match (3.13), so
patterns are matched segment by segment: fnmatch on single segments cannot cross "/", and "**" is handled by
the small dynamic programme below.

Why not a library (measured with hypothesis against wcmatch 12.0 and pathspec 1.1, tests/unit/test_globs.py):
wcmatch's globmatch with GLOBSTAR | DOTMATCH | CASE agrees on dotfiles, "*" and "?" within a segment, "**" and
trailing "**", "[!..]" and ranges, but reads "^" and "\" differently, and has no flag to read them as we do:
``[^a]`` matches "b" for wcmatch ("^" negates) and only "^" or "a" here (fnmatch: "^" is literal), and ``a\*``
matches "a*" for wcmatch ("\" escapes) where here it matches "a\x" ("\" is an ordinary character in a file
name). Either would change which documents existing policy files give to whom. pathspec implements .gitignore,
where a pattern that matches a folder also matches everything in it: "/*" matches "a/b", which "*" here must
not (it never crosses "/"); its "[" alone matches nothing and "[z-a]" raises, both literal or empty here.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase


def compile_pattern(pattern: str) -> tuple[str, ...]:
    """A pattern's segments, normalized (see the module docstring); ValueError if it cannot match anything."""
    p = pattern.strip()
    if not p:
        raise ValueError("empty match pattern")
    if p.endswith("/"):
        p += "**"
    segs = tuple(s for s in p.split("/") if s not in ("", "."))
    if not segs:
        raise ValueError(f"pattern {pattern!r} matches nothing; use \"**\" for everything")
    if ".." in segs:
        raise ValueError(f"pattern {pattern!r} contains '..': a policy file governs only its own folder and below")
    return segs


def glob_match(segs: tuple[str, ...], path: Sequence[str]) -> bool:
    """Whether compiled pattern segments match a relative path given as its segments."""
    n = len(path)
    # reach[j]: the pattern so far matches exactly path[:j]
    reach = [True] + [False] * n
    last = len(segs) - 1
    for k, seg in enumerate(segs):
        new = [False] * (n + 1)
        if seg == "**":
            # zero or more segments; as the last segment at least one (everything *inside* a folder)
            seen = False
            for j in range(n + 1):
                if k == last:
                    new[j] = seen
                    seen = seen or reach[j]
                else:
                    seen = seen or reach[j]
                    new[j] = seen
        else:
            for j in range(n):
                if reach[j] and fnmatchcase(path[j], seg):
                    new[j + 1] = True
        reach = new
        if not any(reach):
            return False
    return reach[n]
