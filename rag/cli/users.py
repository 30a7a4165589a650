"""`rag users …`: a thin shell over rag.security.users (registered in rag.cli).

Shared helpers (consoles, settings, error exit) are imported from rag.cli inside the commands, when rag.cli is
fully loaded, so importing either module first works.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from rag.security.access import split_groups
from rag.errors import RagError

users_app = typer.Typer(help="Users, their groups, passwords and API keys (the file RAG_USERS_FILE).",
                        no_args_is_help=True)


def _directory():
    from rag.cli.common import load_settings as _settings
    from rag.security.users import UserDirectory

    return UserDirectory.from_settings(_settings())


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        # One line; only the line break is removed (spaces may be part of a password).
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


def _fail(exc: RagError) -> typer.Exit:
    from rag.cli.common import fail

    return fail(exc)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Login name (letters, digits, . _ @ + -).")],
    groups: Annotated[str, typer.Option(help="Comma-separated groups, e.g. finance,staff.")] = "",
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from the first "
                                                                          "line of stdin (for scripts).")] = False,
    no_password: Annotated[bool, typer.Option("--no-password", help="No password: for users who sign in through "
                                                                    "the proxy or use API keys only.")] = False,
    update: Annotated[bool, typer.Option("--update", help="Change an existing user's groups (and password with "
                                                          "--password-stdin) instead of refusing.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Add a user with their groups; asks for the password twice (hidden) unless told otherwise."""
    from rag.cli.common import err, out

    directory = _directory()
    try:
        exists = directory.get(name) is not None
        password = None
        if password_stdin:
            password = _read_password(True)
        elif not no_password and not (update and exists):
            password = _read_password(False)
        user = directory.add(name, split_groups(groups), password, update=update)
    except RagError as exc:
        raise _fail(exc) from None
    if as_json:
        out.print_json(json.dumps({"user": user.to_public_dict(), "updated": exists, "file": str(directory.path)}))
        return
    out.print(f"{'updated' if exists else 'added'} [bold]{user.name}[/] (groups: {', '.join(user.groups) or 'none'}"
              f"{'' if user.password_hash else '; no password'}) in {directory.path}")
    if not user.groups:
        err.print(Text("note: without groups the user reads only documents for 'everyone' or 'user:"
                       f"{user.name}'", style="yellow"))


@users_app.command("list")
def users_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List users and their groups (never password hashes or keys)."""
    from rag.cli.common import out

    directory = _directory()
    try:
        users = directory.users()
    except RagError as exc:
        raise _fail(exc) from None
    if as_json:
        out.print_json(json.dumps({"file": str(directory.path), "users": [u.to_public_dict() for u in users]}))
        return
    if not users:
        out.print(f"No users in {directory.path}. Add one with [bold]rag users add NAME --groups g1,g2[/].")
        return
    table = Table("name", "groups", "password", "api keys", "status")
    for u in users:
        table.add_row(u.name, ", ".join(u.groups), "yes" if u.password_hash else "no",
                      ", ".join(k.id for k in u.api_keys) or "-", "disabled" if u.disabled else "active")
    out.print(table)


@users_app.command("remove")
def users_remove(
    name: Annotated[str, typer.Argument()],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Remove a user (with their password and API keys)."""
    from rag.cli.common import out

    directory = _directory()
    try:
        directory.remove(name)
    except RagError as exc:
        raise _fail(exc) from None
    if as_json:
        out.print_json(json.dumps({"removed": name}))
    else:
        out.print(f"removed [bold]{name}[/] from {directory.path}")


@users_app.command("passwd")
def users_passwd(
    name: Annotated[str, typer.Argument()],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from the first "
                                                                          "line of stdin.")] = False,
) -> None:
    """Set a user's password (asked twice, hidden)."""
    from rag.cli.common import out

    directory = _directory()
    try:
        directory.require(name)  # before asking for a password that would be thrown away
        directory.set_password(name, _read_password(password_stdin))
    except RagError as exc:
        raise _fail(exc) from None
    out.print(f"password of [bold]{name}[/] changed")


@users_app.command("key")
def users_key(
    name: Annotated[str, typer.Argument()],
    revoke: Annotated[str | None, typer.Option("--revoke", help="Revoke the key with this id (see `rag users "
                                                                "list`), or 'all'.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print a new API key for a user. It is shown once and only its digest is stored: keep it now."""
    from rag.cli.common import err, out

    directory = _directory()
    try:
        if revoke is not None:
            n = directory.revoke_api_keys(name, None if revoke == "all" else revoke)
            if as_json:
                out.print_json(json.dumps({"user": name, "revoked": n}))
            else:
                out.print(f"revoked {n} API key(s) of [bold]{name}[/]")
            raise typer.Exit(0 if n or revoke == "all" else 1)
        key = directory.issue_api_key(name)
    except RagError as exc:
        raise _fail(exc) from None
    if as_json:
        out.print_json(json.dumps({"user": name, "api_key": key}))
        return
    # The key alone on stdout (for `KEY=$(rag users key bob)`); the advice on stderr.
    out.print(key, markup=False, highlight=False)
    err.print(Text(f"API key for {name}: shown only this once, store it now (revoke with rag users key {name} "
                   "--revoke ID)", style="dim"))
