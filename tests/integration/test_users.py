"""Users file, passwords, API keys, login (password and proxy headers) and `rag users`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from hypothesis import given, settings as hsettings, strategies as st
from typer.testing import CliRunner

from conftest import ROOT, rag_cmd
from rag.security.auth import (
    Identity,
    authenticate_api_key,
    authenticate_password,
    identity_as,
    identity_from_headers,
    local_identity,
)
from rag.errors import UsersFileError
from rag.settings import Settings
from rag.security.users import User, UserDirectory, dump_users, parse_users

# Real argon2id, cheap parameters: the tests hash dozens of passwords. One test checks the production defaults.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def directory(tmp_path) -> UserDirectory:
    return UserDirectory(tmp_path / "users.toml", hasher=FAST)


def test_add_list_remove_update(directory):
    assert directory.users() == [] and not directory.path.exists()
    alice = directory.add("alice", ["staff", "finance", "staff"], "correct horse")
    directory.add("bob", ["hr"])
    assert alice.groups == ("finance", "staff") and alice.created
    assert [u.name for u in directory.users()] == ["alice", "bob"]
    assert directory.get("bob").password_hash is None

    with pytest.raises(UsersFileError, match="already exists.*--update"):
        directory.add("alice", ["x"])
    key = directory.issue_api_key("alice")
    updated = directory.add("alice", ["board"], update=True)
    assert updated.groups == ("board",) and updated.password_hash == alice.password_hash  # password, keys kept
    assert len(updated.api_keys) == 1 and directory.user_for_api_key(key).name == "alice"

    directory.remove("bob")
    assert "bob" not in directory and "alice" in directory
    with pytest.raises(UsersFileError, match="no user 'bob'.*rag users add bob"):
        directory.remove("bob")
    for bad in ("", "-x", "a b", "a,b", "a\nb", "x" * 300, "a/b"):
        with pytest.raises(UsersFileError, match="invalid user name"):
            directory.add(bad, ["g"])
    with pytest.raises(UsersFileError, match="no commas"):
        directory.add("carol", ["a,b"])
    with pytest.raises(UsersFileError, match="too short"):
        directory.add("carol", ["g"], "short")
    assert "carol" not in directory


def test_hashes_are_argon2_never_the_secret_and_file_is_0600(directory):
    directory.add("alice", ["g"], "s3cret-password")
    key = directory.issue_api_key("alice")
    text = directory.path.read_text()
    assert "s3cret-password" not in text and key not in text and key[len("rag_"):] not in text
    u = directory.get("alice")
    assert u.password_hash.startswith("$argon2id$")
    assert stat.S_IMODE(directory.path.stat().st_mode) == 0o600
    # the file is TOML an admin can read, and it round-trips
    data = tomllib.loads(text)
    assert data["users"]["alice"]["groups"] == ["g"]
    assert parse_users(text) == {"alice": u}
    assert not [p for p in directory.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_production_hasher_and_unknown_users_cost_the_same(tmp_path):
    d = UserDirectory(tmp_path / "users.toml")  # argon2-cffi defaults (RFC 9106 low-memory profile)
    d.add("alice", ["g"], "correct horse")
    assert d.get("alice").password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    d.verify_password("nobody", "warm-up")  # the dummy hash is made once per directory

    def cost(name: str) -> float:
        t = time.perf_counter()
        assert d.verify_password(name, "wrong password") is None
        return time.perf_counter() - t

    known = min(cost("alice") for _ in range(2))
    unknown = min(cost("nobody") for _ in range(2))
    assert unknown > 0.5 * known and known > 0.5 * unknown, (known, unknown)


def test_login_good_bad_unknown_disabled(directory):
    directory.add("alice", ["finance"], "correct horse")
    directory.add("bob", ["hr"])  # no password: proxy/API-key only
    assert authenticate_password(directory, "alice", "correct horse").name == "alice"
    assert authenticate_password(directory, " alice ", "correct horse").name == "alice"
    assert authenticate_password(directory, "alice", "correct horsE") is None
    assert authenticate_password(directory, "alice", "") is None
    assert authenticate_password(directory, "mallory", "correct horse") is None
    assert authenticate_password(directory, "bob", "") is None and authenticate_password(directory, "bob", "x") is None
    directory.set_password("alice", "battery staple")
    assert authenticate_password(directory, "alice", "correct horse") is None
    assert authenticate_password(directory, "alice", "battery staple") is not None
    directory.set_disabled("alice")
    assert authenticate_password(directory, "alice", "battery staple") is None
    with pytest.raises(UsersFileError, match="no user"):
        directory.set_password("mallory", "whatever-long")


def test_unusable_location_is_an_actionable_error(tmp_path):
    (tmp_path / "blocker").write_text("a file where the folder should be")
    d = UserDirectory(tmp_path / "blocker" / "users.toml", hasher=FAST)
    with pytest.raises(UsersFileError, match="cannot change the users file .*permissions"):
        d.add("bob", ["g"])
    with pytest.raises(UsersFileError, match="cannot read the users file .*RAG_USERS_FILE"):
        d.users()


def test_old_hash_parameters_are_upgraded_on_login(tmp_path):
    old = UserDirectory(tmp_path / "users.toml", hasher=FAST)
    old.add("alice", ["g"], "correct horse")
    stronger = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    new = UserDirectory(tmp_path / "users.toml", hasher=stronger)
    assert new.verify_password("alice", "correct horse") is not None
    assert "t=2" in new.get("alice").password_hash and not stronger.check_needs_rehash(new.get("alice").password_hash)


def test_api_keys(directory):
    directory.add("alice", ["finance"])
    directory.add("bob", ["hr"])
    k1, k2 = directory.issue_api_key("alice"), directory.issue_api_key("alice")
    kb = directory.issue_api_key("bob")
    assert k1 != k2 and k1.startswith("rag_") and len(k1) > 40
    assert directory.user_for_api_key(k1).name == "alice" and directory.user_for_api_key(kb).name == "bob"
    for wrong in (k1[:-1], k1 + "x", "", "rag_", kb.upper()):
        assert directory.user_for_api_key(wrong) is None
    ident = authenticate_api_key(directory, k2)
    assert ident == Identity("alice", ("everyone", "finance", "user:alice"), "api_key")
    assert authenticate_api_key(directory, "nope") is None
    kid = directory.get("alice").api_keys[0].id
    assert directory.revoke_api_keys("alice", kid) == 1
    assert directory.user_for_api_key(k1) is None and directory.user_for_api_key(k2) is not None
    assert directory.revoke_api_keys("alice") == 1 and directory.user_for_api_key(k2) is None
    directory.set_disabled("bob")
    assert directory.user_for_api_key(kb) is None


_ADDER = """
import sys, time
from rag.security.users import UserDirectory
path, tag, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
d = UserDirectory(path)
while time.time() < start:
    time.sleep(0.001)
for i in range(15):
    d.add(f"{tag}{i}", ["g"])
"""


def test_concurrent_adds_from_two_processes_all_survive(tmp_path):
    path = tmp_path / "users.toml"
    start = time.time() + 1.5  # both interpreters are up by then, so their adds really overlap
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [subprocess.Popen([sys.executable, "-c", _ADDER, str(path), tag, str(start)], env=env,
                              stderr=subprocess.PIPE, text=True) for tag in ("p", "q")]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    names = {u.name for u in UserDirectory(path).users()}
    assert names == {f"{t}{i}" for t in "pq" for i in range(15)}


def test_parse_errors_name_the_file(tmp_path):
    path = tmp_path / "users.toml"
    d = UserDirectory(path, hasher=FAST)
    for text, needle in [('[users."a"]\ngroups = ["x"\n', "users.toml:"),
                         ('[users."a"]\ngroup = ["x"]\n', "unknown key"),
                         ('[users."a"]\npassword_hash = "plain"\n', "argon2"),
                         ('[user."a"]\n', "unknown top-level"),
                         ('[users."a b"]\n', "invalid user name")]:
        path.write_text(text)
        with pytest.raises(UsersFileError, match=needle) as ei:
            d.users()
        assert str(path) in str(ei.value)
        with pytest.raises(UsersFileError):  # and a change never overwrites what it cannot read
            d.add("zed", ["g"])
        assert path.read_text() == text


names = st.from_regex(r"\w[\w.@+-]{0,20}", fullmatch=True)
group = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters=","), min_size=1,
                max_size=12).filter(lambda g: g == g.strip() and g.strip())


@hsettings(max_examples=60, deadline=None)
@given(st.dictionaries(names, st.tuples(st.lists(group, max_size=4), st.booleans()), max_size=5))
def test_file_format_round_trips(entries):
    users = {n: User(n, tuple(sorted(set(gs))), None, (), dis, "2025-01-01T00:00:00Z")
             for n, (gs, dis) in entries.items()}
    assert parse_users(dump_users(users)) == users


# --- identity: modes and proxy headers -------------------------------------------------------------------


def test_local_mode_has_no_filter():
    ident = local_identity()
    assert ident.unrestricted and ident.groups_any is None and ident.via == "local"


def test_proxy_headers_ignored_unless_proxy_mode(tmp_path, directory):
    directory.add("alice", ["finance"])
    headers = {"X-Forwarded-User": "alice", "X-Forwarded-Groups": "hr"}
    for mode in ("none", "password"):
        s = Settings(data_dir=tmp_path, auth=mode)
        assert identity_from_headers(s, headers, directory) is None
    s = Settings(data_dir=tmp_path, auth="proxy")
    ident = identity_from_headers(s, headers, directory)
    # default RAG_AUTH_PROXY_GROUPS=users: the header names the user, the users file grants the groups
    assert ident == Identity("alice", ("everyone", "finance", "user:alice"), "proxy")
    assert ident.groups_any == ident.groups
    # without a directory passed in, the one named by the settings is read
    s = Settings(data_dir=tmp_path, auth="proxy", RAG_USERS_FILE=str(directory.path))
    assert identity_from_headers(s, headers).groups == ("everyone", "finance", "user:alice")


def test_proxy_header_names_case_insensitive_and_group_sources(tmp_path, directory):
    directory.add("alice", ["finance"])
    base = Settings(data_dir=tmp_path, auth="proxy")
    h = [("x-forwarded-user", "alice"), ("X-FORWARDED-GROUPS", "hr, ops"), ("x-forwarded-groups", "lab,user:bob")]
    assert identity_from_headers(base, h, directory).groups == ("everyone", "finance", "user:alice")
    header = base.model_copy(update={"auth_proxy_groups": "header"})
    # repeated header lines count, user:* from the IdP is dropped (only we grant personal groups)
    assert identity_from_headers(header, h, directory).groups == ("everyone", "hr", "lab", "ops", "user:alice")
    both = base.model_copy(update={"auth_proxy_groups": "both"})
    assert identity_from_headers(both, h, directory).groups == (
        "everyone", "finance", "hr", "lab", "ops", "user:alice")
    # unknown to the users file: signed in by the proxy, implicit groups only
    assert identity_from_headers(base, {"X-Forwarded-User": "zoe"}, directory).groups == ("everyone", "user:zoe")
    other = base.model_copy(update={"auth_proxy_user_header": "X-Forwarded-Preferred-Username"})
    assert identity_from_headers(other, {"x-forwarded-preferred-username": "alice",
                                         "X-Forwarded-User": "8f3a-sub"}, directory).name == "alice"


def test_proxy_headers_refused_when_suspicious(tmp_path, directory):
    directory.add("alice", ["finance"])
    directory.add("bob", ["hr"])
    directory.set_disabled("bob")
    s = Settings(data_dir=tmp_path, auth="proxy")
    assert identity_from_headers(s, {}, directory) is None
    assert identity_from_headers(s, {"X-Forwarded-User": "  "}, directory) is None
    assert identity_from_headers(s, {"X-Forwarded-User": "bob"}, directory) is None  # disabled
    assert identity_from_headers(s, {"X-Forwarded-User": "a,b"}, directory) is None
    # a client's own header next to the proxy's: two different names, refused
    assert identity_from_headers(s, [("X-Forwarded-User", "mallory"), ("x-forwarded-user", "alice")],
                                 directory) is None
    assert identity_from_headers(s, {"X-Forwarded-User": ["alice", "alice"]}, directory).name == "alice"
    secret = Settings(data_dir=tmp_path, auth="proxy", auth_proxy_secret="s3cr3t-between-proxy-and-app")
    h = {"X-Forwarded-User": "alice"}
    assert identity_from_headers(secret, h, directory) is None
    assert identity_from_headers(secret, {**h, "X-Rag-Proxy-Secret": "wrong"}, directory) is None
    assert identity_from_headers(secret, {**h, "x-rag-proxy-secret": "s3cr3t-between-proxy-and-app"},
                                 directory).name == "alice"


def test_streamlit_headers_object(tmp_path, directory):
    from streamlit.runtime.context import StreamlitHeaders

    directory.add("alice", ["finance"])
    s = Settings(data_dir=tmp_path, auth="proxy", auth_proxy_groups="header")
    h = StreamlitHeaders([("X-Forwarded-User", "alice"), ("X-Forwarded-Groups", "a"), ("X-Forwarded-Groups", "b")])
    assert identity_from_headers(s, h, directory).groups == ("a", "b", "everyone", "user:alice")
    spoof = StreamlitHeaders([("X-Forwarded-User", "mallory"), ("X-Forwarded-User", "alice")])
    assert identity_from_headers(s, spoof, directory) is None


def test_identity_as(directory):
    directory.add("alice", ["finance"])
    assert identity_as(directory, "alice") == Identity("alice", ("everyone", "finance", "user:alice"), "cli")
    with pytest.raises(UsersFileError, match="rag users list"):
        identity_as(directory, "nobody")


# --- CLI ----------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path):
    from rag.cli import app

    runner = CliRunner()
    env = {"RAG_DATA_DIR": str(tmp_path / "data"), "RAG_USERS_FILE": str(tmp_path / "u" / "users.toml")}

    def run(*args: str, input: str | None = None):
        return runner.invoke(app, list(args), input=input, env=env)

    run.path = tmp_path / "u" / "users.toml"
    return run


def test_cli_users(cli):
    r = cli("users", "add", "alice", "--groups", "finance, staff", "--password-stdin", input="correct horse\n")
    assert r.exit_code == 0, r.output
    assert "added alice" in r.stdout
    # prompted twice, hidden: a mismatch asks again
    r = cli("users", "add", "bob", "--groups", "hr", input="first-pass\nother-pass\nsecond-pw\nsecond-pw\n")
    assert r.exit_code == 0, r.output
    assert "first-pass" not in r.output and "do not match" in r.output
    d = UserDirectory(cli.path)
    assert d.verify_password("bob", "second-pw") is not None and d.verify_password("alice", "correct horse")
    r = cli("users", "add", "carol", "--no-password", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["user"]["password"] is False

    r = cli("users", "add", "alice", "--groups", "x", "--no-password")
    assert r.exit_code == 2 and "already exists" in r.output and "--update" in r.output
    r = cli("users", "add", "alice", "--groups", "board", "--update")  # no prompt: the password is kept
    assert r.exit_code == 0, r.output
    assert UserDirectory(cli.path).verify_password("alice", "correct horse").groups == ("board",)

    r = cli("users", "key", "alice")
    assert r.exit_code == 0
    key = r.stdout.strip()
    assert key.startswith("rag_") and UserDirectory(cli.path).user_for_api_key(key).name == "alice"
    r = cli("users", "list", "--json")
    listing = json.loads(r.stdout)
    assert [u["name"] for u in listing["users"]] == ["alice", "bob", "carol"]
    assert listing["users"][0]["password"] is True and len(listing["users"][0]["api_keys"]) == 1
    for secret in ("$argon2", key, UserDirectory(cli.path).get("alice").api_keys[0].sha256):
        assert secret not in r.stdout
    r = cli("users", "list")
    assert r.exit_code == 0 and "alice" in r.stdout and "$argon2" not in r.stdout

    r = cli("users", "passwd", "alice", "--password-stdin", input="battery staple\n")
    assert r.exit_code == 0 and UserDirectory(cli.path).verify_password("alice", "battery staple")
    r = cli("users", "passwd", "nobody", "--password-stdin", input="whatever-long\n")
    assert r.exit_code == 2 and "no user 'nobody'" in r.output
    r = cli("users", "passwd", "alice", "--password-stdin", input="short\n")
    assert r.exit_code == 2 and "too short" in r.output

    kid = UserDirectory(cli.path).get("alice").api_keys[0].id
    r = cli("users", "key", "alice", "--revoke", kid, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["revoked"] == 1
    assert UserDirectory(cli.path).user_for_api_key(key) is None
    r = cli("users", "remove", "bob")
    assert r.exit_code == 0 and "bob" not in UserDirectory(cli.path)
    r = cli("users", "remove", "bob")
    assert r.exit_code == 2 and "no user 'bob'" in r.output


def test_cli_console_script_password_stdin(tmp_path):
    env = {"RAG_DATA_DIR": str(tmp_path / "data")}
    exe = Path(sys.executable).parent / "rag"
    r = subprocess.run([str(exe), "users", "add", "dave", "--groups", "ops", "--password-stdin"],
                       input="pass word with spaces\n", capture_output=True, text=True, env={**os.environ, **env},
                       timeout=120)
    assert r.returncode == 0, r.stderr
    path = Path(tmp_path / "data" / "users.toml")
    assert UserDirectory(path).verify_password("dave", "pass word with spaces") is not None
    r = rag_cmd("users", "list", "--json", env=env, timeout=120)
    assert json.loads(r.stdout)["users"][0]["groups"] == ["ops"]
