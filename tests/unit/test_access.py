"""Access policy: .rag-access.toml files, globs, nearest-answer-wins, --groups as fallback."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from rag.security.access import POLICY_FILE, AccessPolicy, compile_pattern, glob_match, split_groups
from rag.errors import AccessPolicyError
from rag.settings import Settings


def write(root: Path, rel: str, text: str = "x") -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def match(pattern: str, path: str) -> bool:
    return glob_match(compile_pattern(pattern), path.split("/"))


@pytest.mark.parametrize("pattern,path,expected", [
    ("*.pdf", "a.pdf", True),
    ("*.pdf", "sub/a.pdf", False),          # * never crosses /, patterns are anchored
    ("*", "sub/a.pdf", False),
    ("sub/*", "sub/a.pdf", True),
    ("sub/*", "sub/deeper/a.pdf", False),
    ("**/*.pdf", "a.pdf", True),             # leading ** = zero or more folders
    ("**/*.pdf", "x/y/a.pdf", True),
    ("a/**/b.md", "a/b.md", True),           # middle ** = zero or more folders
    ("a/**/b.md", "a/x/y/b.md", True),
    ("a/**/b.md", "x/a/b.md", False),
    ("finance/**", "finance/q1/r.pdf", True),  # trailing ** = everything inside
    ("finance/**", "finance", False),          # ... but not a file named like the folder
    ("finance/", "finance/r.pdf", True),       # trailing / = the same
    ("finance/", "financial/r.pdf", False),
    ("**", "any/thing/at/all.txt", True),
    ("?.md", "a.md", True),
    ("?.md", "ab.md", False),
    ("a?b", "a/b", False),                     # ? never matches /
    ("[ab].md", "b.md", True),
    ("[!ab].md", "b.md", False),
    ("[*].md", "*.md", True),                  # a class makes * literal
    ("a**", "abc", True),                      # ** inside a segment is just *
    ("a**", "a/bc", False),
    ("/top.md", "top.md", True),               # leading / ignored
    ("/", "x/y.md", True),                     # this folder, i.e. everything inside
    ("./x/y.md", "x/y.md", True),
    ("Report.PDF", "report.pdf", False),       # case-sensitive
])
def test_glob(pattern, path, expected):
    assert match(pattern, path) is expected


def test_bad_patterns():
    for bad in ("", "   ", "../x", "a/../b", "."):
        with pytest.raises(ValueError):
            compile_pattern(bad)


def test_nested_files_nearest_answer_wins(tmp_path):
    root = tmp_path / "docs"
    write(root, POLICY_FILE, """
default = ["staff"]

[[rule]]
match = "finance/**"
groups = ["finance"]

[[rule]]
match = "finance/board/**"
groups = ["board"]
""")
    write(root, "finance/payroll/" + POLICY_FILE, 'default = ["payroll", "admins"]\n')
    write(root, "hr/" + POLICY_FILE, '[[rule]]\nmatch = "secret.md"\ngroups = ["hr"]\n')
    pol = AccessPolicy(["admins"])

    def groups(rel: str) -> tuple[str, ...]:
        return pol.resolve(write(root, rel), root).groups

    assert groups("readme.md") == ("staff",)
    assert groups("finance/q1.pdf") == ("finance",)
    assert groups("finance/board/minutes.pdf") == ("board",)          # later rule wins
    assert groups("finance/payroll/2024.xlsx") == ("admins", "payroll")  # nearer file wins over the root's rule
    assert groups("finance/payroll/deep/x.md") == ("admins", "payroll")
    assert groups("hr/secret.md") == ("hr",)
    # hr's file has no answer for other files: the folder above is asked, not the fallback
    assert groups("hr/handbook.md") == ("staff",)

    a = pol.resolve(root / "finance/board/minutes.pdf", root)
    assert a.decided_by == "rule" and a.policy_file == root / POLICY_FILE and a.line == 8
    assert a.rule == ("finance/board/**",)
    assert f"{root / POLICY_FILE}:8" in a.explain() and "finance/board/**" in a.explain()
    d = pol.resolve(root / "finance/payroll/2024.xlsx", root)
    assert d.decided_by == "default" and d.policy_file == root / "finance/payroll" / POLICY_FILE
    assert json.loads(json.dumps(d.to_dict()))["groups"] == ["admins", "payroll"]

    assert pol.policy_files(root / "finance/payroll/deep/x.md", root) == [
        root / "finance/payroll" / POLICY_FILE, root / POLICY_FILE]


def test_last_matching_rule_wins_and_lists(tmp_path):
    write(tmp_path, POLICY_FILE, """
[[rule]]
match = ["**/*.pdf", "scans/"]
groups = ["a", "b", "a"]

[[rule]]
match = "**/public-*.pdf"
groups = ["everyone"]

[[rule]]
match = "**/*draft*"
groups = []
""")
    pol = AccessPolicy(["admins"])
    assert pol.resolve(write(tmp_path, "x/report.pdf"), tmp_path).groups == ("a", "b")  # deduplicated, sorted
    assert pol.resolve(write(tmp_path, "scans/img.png"), tmp_path).groups == ("a", "b")
    assert pol.resolve(write(tmp_path, "public-faq.pdf"), tmp_path).groups == ("everyone",)
    assert pol.resolve(write(tmp_path, "public-draft.pdf"), tmp_path).groups == ()  # nobody
    assert pol.resolve(write(tmp_path, "notes.md"), tmp_path).decided_by == "settings-default"


def test_default_groups_and_groups_option(tmp_path):
    write(tmp_path, POLICY_FILE, '[[rule]]\nmatch = "finance/**"\ngroups = ["finance"]\n')
    doc, fin = write(tmp_path, "misc/a.md"), write(tmp_path, "finance/b.md")
    settings = Settings(data_dir=tmp_path / "data")
    plain = AccessPolicy.for_run(settings)
    assert plain.resolve(doc, tmp_path).groups == ("admins",)
    assert "RAG_DEFAULT_GROUPS" in plain.resolve(doc, tmp_path).explain()
    custom = AccessPolicy.for_run(settings.model_copy(update={"default_groups": ["nobody-yet"]}))
    assert custom.resolve(doc, tmp_path).groups == ("nobody-yet",)
    # --groups replaces the default for documents no rule covers, but never a policy file's decision.
    run = AccessPolicy.for_run(settings, split_groups("sales, ops,"))
    assert run.resolve(doc, tmp_path).groups == ("ops", "sales")
    why = run.resolve(doc, tmp_path)
    assert why.decided_by == "groups-option" and "--groups" in why.explain()
    assert run.resolve(fin, tmp_path).groups == ("finance",)
    assert AccessPolicy.for_run(settings, []).resolve(doc, tmp_path).groups == ("admins",)


def test_settings_refuse_bad_default_groups(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="no commas"):
        Settings(data_dir=tmp_path, default_groups=["finance,hr"])


def test_root_bounds_the_search(tmp_path):
    write(tmp_path, POLICY_FILE, 'default = ["above-root"]\n')
    root = tmp_path / "docs"
    doc = write(root, "a.md")
    pol = AccessPolicy(["admins"])
    assert pol.resolve(doc, root).groups == ("admins",)  # files above the ingest root are never read
    assert pol.resolve(doc, tmp_path).groups == ("above-root",)
    # A file ingested on its own: its folder's policy applies (root = the file itself).
    write(root, POLICY_FILE, 'default = ["here"]\n')
    assert AccessPolicy(["admins"]).resolve(doc, doc).groups == ("here",)
    with pytest.raises(ValueError, match="not inside"):
        pol.resolve(tmp_path / "elsewhere.md", root)


@pytest.mark.parametrize("text,line,needle", [
    ('default = ["a"]\n[[rule]]\nmatch = "x\ngroups = []\n', 3, "invalid TOML"),
    ('[[rules]]\nmatch = "x"\ngroups = ["a"]\n', None, "'rules'"),
    ('defaults = ["a"]\n', None, "'defaults'"),
    ('\n\ndefault = "staff"\n', 3, "must be a list"),
    ('[[rule]]\nmatch = "x"\ngroups = ["a"]\n\n[[rule]]\nmatch = "y"\n', 5, "rule 2: needs both"),
    ('[[rule]]\nmatch = "x"\ngroups = ["a,b"]\n', 1, "no commas"),
    ('[[rule]]\nmatch = "../x"\ngroups = ["a"]\n', 1, "'..'"),
    ('[[rule]]\nmatch = "x"\ngroup = ["a"]\n', 1, "unknown key"),
    ('[[rule]]\nmatch = "x"\ngroups = "a"\n', 1, "must be a list"),
    ('[[rule]]\nmatch = []\ngroups = ["a"]\n', 1, "match must be"),
])
def test_parse_errors_name_file_and_line(tmp_path, text, line, needle):
    pf = write(tmp_path, "sub/" + POLICY_FILE, text)
    doc = write(tmp_path, "sub/a.md")
    with pytest.raises(AccessPolicyError) as ei:
        AccessPolicy(["admins"]).resolve(doc, tmp_path)
    msg = str(ei.value)
    assert str(pf) in msg and needle in msg and "ingest again" in msg
    if line is not None:
        assert f"{pf}:{line}:" in msg


def test_non_utf8_policy_is_an_error(tmp_path):
    write(tmp_path, POLICY_FILE, "")
    (tmp_path / POLICY_FILE).write_bytes(b'default = ["caf\xe9"]\n')
    with pytest.raises(AccessPolicyError, match="UTF-8"):
        AccessPolicy(["admins"]).resolve(write(tmp_path, "a.md"), tmp_path)


def test_signature_changes_with_policy_files(tmp_path):
    doc = write(tmp_path, "a/b/c.md")
    sig0 = AccessPolicy(["admins"]).signature(doc, tmp_path)
    assert AccessPolicy(["admins"]).signature(doc, tmp_path) == sig0
    assert AccessPolicy(["other"]).signature(doc, tmp_path) != sig0
    write(tmp_path, "a/" + POLICY_FILE, 'default = ["x"]\n')  # a new file on the chain
    sig1 = AccessPolicy(["admins"]).signature(doc, tmp_path)
    assert sig1 != sig0
    write(tmp_path, "a/" + POLICY_FILE, 'default = ["y"]\n')  # an edit
    assert AccessPolicy(["admins"]).signature(doc, tmp_path) != sig1
    write(tmp_path, "elsewhere/" + POLICY_FILE, 'default = ["z"]\n')  # not on the chain
    sig2 = AccessPolicy(["admins"]).signature(doc, tmp_path)
    (tmp_path / "elsewhere" / POLICY_FILE).unlink()
    assert AccessPolicy(["admins"]).signature(doc, tmp_path) == sig2


# --- property test: the implementation against a brute-force reference ------------------------------------


def ref_glob(pat: str, s: str, seg_start: bool = True) -> bool:
    """Character by character, straight from the documented rules (no fnmatch, no segment DP)."""
    if pat == "":
        return s == ""
    if seg_start and pat == "**":
        return s != ""  # trailing **: one or more segments
    if seg_start and pat.startswith("**/"):
        if ref_glob(pat[3:], s, True):  # zero folders
            return True
        return "/" in s and ref_glob(pat, s.split("/", 1)[1], True)
    c = pat[0]
    if c == "*":
        return any(ref_glob(pat[1:], s[k:], False) for k in range(len(s) + 1) if "/" not in s[:k])
    if s == "":
        return False
    if c == "?":
        return s[0] != "/" and ref_glob(pat[1:], s[1:], False)
    return s[0] == c and ref_glob(pat[1:], s[1:], c == "/")


def ref_resolve(policies: dict[tuple[str, ...], dict], doc: tuple[str, ...], fallback: list[str]) -> tuple:
    for depth in range(len(doc) - 1, -1, -1):
        pol = policies.get(doc[:depth])
        if pol is None:
            continue
        rel = "/".join(doc[depth:])
        hits = [r["groups"] for r in pol["rules"] if any(ref_glob(p, rel) for p in r["match"])]
        if hits:
            return tuple(sorted(set(hits[-1])))
        if pol.get("default") is not None:
            return tuple(sorted(set(pol["default"])))
    return tuple(sorted(set(fallback)))


NAMES = ["a", "b", "ab"]
SEGMENTS = ["a", "b", "ab", "*", "?", "a*", "*b", "**", "*.md", "b.md"]
group_lists = st.lists(st.sampled_from(["g1", "g2", "g3", "admins"]), max_size=3)
patterns = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map("/".join)
policy = st.fixed_dictionaries({
    "default": st.none() | group_lists,
    "rules": st.lists(st.fixed_dictionaries({"match": st.lists(patterns, min_size=1, max_size=2),
                                             "groups": group_lists}), max_size=4),
})
folders = st.lists(st.sampled_from(NAMES), max_size=3).map(tuple)
docs = st.tuples(folders, st.sampled_from(["a.md", "b.md", "c.txt", "abb"])).map(lambda t: t[0] + (t[1],))


def policy_toml(pol: dict) -> str:
    lines = [] if pol["default"] is None else [f"default = {json.dumps(pol['default'])}"]
    for r in pol["rules"]:
        lines += ["", "[[rule]]", f"match = {json.dumps(r['match'])}", f"groups = {json.dumps(r['groups'])}"]
    return "\n".join(lines) + "\n"


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies=st.dictionaries(folders, policy, max_size=4), documents=st.lists(docs, min_size=1, max_size=8),
       fallback=group_lists)
def test_resolution_matches_reference(policies, documents, fallback):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "root"
        root.mkdir()
        for folder, pol in policies.items():
            write(root, "/".join((*folder, POLICY_FILE)), policy_toml(pol))
        pol_obj = AccessPolicy(fallback)
        for doc in documents:
            path = root.joinpath(*doc)
            if path.is_dir():  # a document name that is also a folder here
                continue
            write(root, "/".join(doc))
            assert pol_obj.resolve(path, root).groups == ref_resolve(policies, doc, fallback), doc


@hsettings(max_examples=400, deadline=None)
@given(pattern=patterns, path=st.lists(st.sampled_from(NAMES + ["a.md", "b.md", "x"]), min_size=1, max_size=4))
def test_glob_matches_reference(pattern, path):
    assert glob_match(compile_pattern(pattern), path) == ref_glob(pattern, "/".join(path))
