"""`python -m store.admin` (the store's one door for tools) and `rlad keys create`, which goes through it."""

from __future__ import annotations

import subprocess

from typer.testing import CliRunner

from rlad.cli import app
from rlad.service import admin_command
from store.db import read_session
from store.teams import team_for_key


def test_create_key_prints_a_key_that_authenticates_its_team(service_env, capsys) -> None:
    from store.admin import main

    assert main(["create-key", "--team", "ops"]) == 0
    key = capsys.readouterr().out.strip()
    with read_session() as s:
        assert key.startswith("rlad_") and team_for_key(s, key=key).name == "ops"


def test_rlad_keys_create_mints_through_the_admin_command(service_env) -> None:
    result = CliRunner().invoke(app, ["keys", "create", "--team", "vision"], env=service_env)
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[0]
    with read_session() as s:
        assert team_for_key(s, key=key).name == "vision"


def test_an_unmigrated_database_is_a_clear_error(tmp_path) -> None:
    env = {"RLAD_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(admin_command("create-key", "--team", "x"), env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert f"cannot use the database sqlite:///{tmp_path}/rlad.db" in done.stderr and "rlad up" in done.stderr
    assert "Traceback" not in done.stderr
    result = CliRunner().invoke(app, ["keys", "create", "--team", "x"], env=env)
    assert result.exit_code == 1 and "cannot use the database" in result.output
