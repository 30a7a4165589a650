"""The policy globs (rag/security/globs.py) against a glob library: where they agree, and where they must not.

The frozen cases pin the semantics a library would most likely change (dotfiles, trailing ``**``, ``*`` and
``/``, character classes, ``^`` and ``\\``); the property test compares with wcmatch, where it is installed, on
generated patterns and paths without ``^`` and ``\\`` (the two places where wcmatch reads a pattern differently,
see the module docstring of rag/security/globs.py).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from rag.security.globs import compile_pattern, glob_match
from wcmatch import glob as wcmatch_glob  # a dev dependency: in CI this test runs, never skips


def match(pattern: str, path: str) -> bool:
    return glob_match(compile_pattern(pattern), path.split("/"))


@pytest.mark.parametrize("pattern,path,expected", [
    ("*", ".env", True),                 # dotfiles are not special
    ("**", ".git/config", True),
    ("**/.*", ".hidden", True),
    ("[.]x", ".x", True),
    ("?", ".", True),
    ("finance/**", "finance", False),    # trailing **: one or more segments
    ("finance/**", "finance/a", True),
    ("finance/**", "finance/a/b", True),
    ("a/**/**/b", "a/b", True),
    ("**/**", "a", True),
    ("*", "a/b", False),                 # * never crosses / (pathspec: True, .gitignore's "folder and below")
    ("a**", "a/b", False),               # (pathspec: True)
    ("a[/]b", "a/b", False),             # a class never matches /
    ("[!a]", "b", True),
    ("[^a]", "b", False),                # ^ is literal, not a negation (wcmatch: True)
    ("[^a]", "^", True),
    ("[^a]", "a", True),
    ("a\\*", "a\\x", True),              # \ is an ordinary character (wcmatch: False, it escapes)
    ("a\\*", "a*", False),               # (wcmatch: True)
    ("[*]", "*", True),
    ("[]]", "]", True),
    ("[a-]", "-", True),
    ("[z-a]", "q", False),               # an empty range matches nothing (pathspec raises)
    ("[", "[", True),                    # an unclosed [ is literal (pathspec: False)
    ("a[", "a[", True),
])
def test_frozen_semantics(pattern, path, expected):
    assert match(pattern, path) is expected


# Where wcmatch agrees: no ^ (a negation there) and no \ (an escape there).
PATTERN_CHARS = list("ab.x*?[]!-")
PATH_CHARS = list("ab.x-*[]!?")
pattern_segments = st.one_of(st.just("**"), st.text(st.sampled_from(PATTERN_CHARS), min_size=1, max_size=5))
# A document's path relative to a policy file's folder never has "." or ".." segments.
path_segments = st.text(st.sampled_from(PATH_CHARS), min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))


@hsettings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(segments=st.lists(pattern_segments, min_size=1, max_size=4), trailing_slash=st.booleans(),
       path=st.lists(path_segments, min_size=1, max_size=4))
def test_agrees_with_wcmatch(segments, trailing_slash, path):
    pattern = "/".join(segments) + ("/" if trailing_slash else "")
    try:
        compiled = compile_pattern(pattern)
    except ValueError:
        return  # refused before any matching (".." or nothing left)
    flags = wcmatch_glob.GLOBSTAR | wcmatch_glob.DOTMATCH | wcmatch_glob.CASE
    assert glob_match(compiled, path) == wcmatch_glob.globmatch("/".join(path), "/".join(compiled), flags=flags)
