"""A rag.toml someone else could have written is refused: it chooses the LLM URL that receives the API key."""

from __future__ import annotations

import os

import pytest

from rag.settings import Settings

PLANTED = 'llm_base_url = "http://attacker.example:8080/v1"\n'

needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                reason="giving a file to another user needs root")


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """A working directory with no RAG_* environment pointing elsewhere: `rag` reads ./rag.toml."""
    for name in list(os.environ):
        if name.startswith("RAG_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_own_config_file_is_read(cwd):
    (cwd / "rag.toml").write_text('llm_base_url = "http://gpu1:8000/v1"\n')
    os.chmod(cwd / "rag.toml", 0o644)
    assert Settings().llm_base_url == "http://gpu1:8000/v1"


@pytest.mark.attack(7, "a rag.toml planted by another user redirects the LLM URL and the API key")
@needs_root
def test_config_file_of_another_user_is_refused(cwd):
    # The attack: another local user drops rag.toml in a shared directory where the victim runs `rag`.
    planted = cwd / "rag.toml"
    planted.write_text(PLANTED)
    os.chown(planted, 65534, 65534)
    with pytest.raises(ValueError, match=r"refusing to read rag\.toml.*uid 65534.*chown") as info:
        Settings(llm_api_key="sk-secret")
    assert "attacker" not in str(info.value)


@pytest.mark.attack(7, "a rag.toml others can write redirects the LLM URL and the API key")
@pytest.mark.parametrize("mode", [0o666, 0o664])
def test_config_file_writable_by_others_is_refused(cwd, mode):
    planted = cwd / "rag.toml"
    planted.write_text(PLANTED)
    os.chmod(planted, mode)
    with pytest.raises(ValueError, match=r"writable by .*chmod go-w"):
        Settings()


@needs_root
def test_rag_config_names_the_file_that_is_checked(cwd, monkeypatch):
    elsewhere = cwd / "trusted.toml"
    elsewhere.write_text('llm_base_url = "http://gpu1:8000/v1"\n')
    os.chmod(elsewhere, 0o600)
    planted = cwd / "rag.toml"
    planted.write_text(PLANTED)
    os.chown(planted, 65534, 65534)
    monkeypatch.setenv("RAG_CONFIG", str(elsewhere))
    assert Settings().llm_base_url == "http://gpu1:8000/v1"
    monkeypatch.setenv("RAG_CONFIG", str(planted))
    with pytest.raises(ValueError, match="RAG_CONFIG to a file you trust"):
        Settings()


def test_the_command_line_exits_with_the_reason(cwd, capsys):
    import typer

    from rag.cli.common import load_settings

    (cwd / "rag.toml").write_text(PLANTED)
    os.chmod(cwd / "rag.toml", 0o666)
    with pytest.raises(typer.Exit) as info:
        load_settings()
    assert info.value.exit_code == 2
    assert "chmod go-w" in capsys.readouterr().err.replace("\n", "")


def test_a_misspelt_setting_is_an_error_that_names_the_right_one(cwd, capsys):
    """A typo used to be dropped in silence (extra="ignore"), leaving the default in force: in rag.toml, in
    Settings(...), and in RAG.with_settings (model_copy, which pydantic does not validate)."""
    import typer
    from pydantic import ValidationError

    from rag.cli.common import load_settings

    (cwd / "rag.toml").write_text("topk = 3\nmin_score = 0.3\n")
    os.chmod(cwd / "rag.toml", 0o600)
    with pytest.raises(typer.Exit) as info:
        load_settings()
    assert info.value.exit_code == 2
    assert "topk: no such setting (did you mean top_k?)" in capsys.readouterr().err.replace("\n", "")
    (cwd / "rag.toml").unlink()

    with pytest.raises(ValidationError, match="audit_log"):
        Settings(audit_log="")  # the field is audit_log_override (RAG_AUDIT_LOG); audit_log is derived
    assert Settings(audit_log_override="").audit_log is None  # fields by name too, not only by RAG_* alias
    with pytest.raises(ValidationError):
        Settings(min_score=5)  # a cosine: every question would be refused

    s = Settings()
    assert s.model_copy(update={"top_k": 4}).top_k == 4
    with pytest.raises(ValueError, match=r"topk: no such setting \(did you mean top_k\?\)"):
        s.model_copy(update={"topk": 3})
    for bad in ({"top_k": 0}, {"retrieval_mode": "nonsense"}):
        with pytest.raises(ValidationError):
            s.model_copy(update=bad)
    assert str(s.model_copy(update={"llm_base_url": "http://u:pw@gpu1/v1"}).llm_base_url) == "http://***@gpu1/v1"


def test_a_misspelt_variable_is_warned_about(cwd, monkeypatch, capsys):
    from rag.cli.common import load_settings

    monkeypatch.setenv("RAG_TOPK", "3")
    monkeypatch.setenv("RAG_DEMO_ENGINE", "llamacpp")  # read by scripts/demo.sh: not a typo
    monkeypatch.setenv("RAG_AUDIT_LOG", "")  # a setting by its alias
    assert load_settings().top_k != 3
    warned = capsys.readouterr().err.replace("\n", "")
    assert "RAG_TOPK: no such setting (did you mean RAG_TOP_K?); it is ignored" in warned
    assert "RAG_DEMO_ENGINE" not in warned and "RAG_AUDIT_LOG" not in warned


@pytest.mark.parametrize("env,toml,expected", [
    ({}, "top_k = \n", "rag.toml is not valid TOML: Invalid value (at line 1, column 9)"),
    ({"RAG_DEFAULT_GROUPS": "finance"}, None, """RAG_DEFAULT_GROUPS is not valid JSON, which a list or table setting """
                                              """must be in the environment: e.g. RAG_DEFAULT_GROUPS='["a", "b"]'"""),
    ({"RAG_CONFIG": "/nonexistent/rag.toml"}, None, "RAG_CONFIG names /nonexistent/rag.toml, which does not exist"),
])
def test_a_settings_error_names_the_variable_or_file_and_where(cwd, monkeypatch, capsys, env, toml, expected):
    """These said only 'TOMLDecodeError' or 'SettingsError', and a RAG_CONFIG naming no file was ignored."""
    import typer

    from rag.cli.common import load_settings

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if toml is not None:
        (cwd / "rag.toml").write_text(toml)
        os.chmod(cwd / "rag.toml", 0o600)
    with pytest.raises(typer.Exit):
        load_settings()
    assert expected in capsys.readouterr().err.replace("\n", "")
