"""``python -m service.admin`` finds the server's database as the server does, says which it used,
and never creates an empty one for ``list`` or ``revoke``."""
from __future__ import annotations

import pytest

from service.admin import main as admin_main


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A server data dir, and a current directory that is not where the server runs."""
    server = tmp_path / "server-data"
    cwd = tmp_path / "somewhere-else"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in ("BREGKD_DATA_DIR", "BREGKD_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return server, cwd


def test_list_and_revoke_refuse_to_create_a_database(elsewhere, capsys):
    server, cwd = elsewhere
    for argv in (["keys", "list"], ["keys", "revoke", "key_x"]):
        assert admin_main(argv) == 1
        err = capsys.readouterr().err
        assert f"no database at {cwd / 'var' / 'bregkd.db'}" in err
        assert "BREGKD_DATA_DIR" in err and "--data-dir" in err
    assert list(cwd.iterdir()) == []  # nothing created here


def test_the_database_used_is_named_and_found_like_the_servers(elsewhere, capsys, monkeypatch):
    server, cwd = elsewhere
    assert admin_main(["--data-dir", str(server), "keys", "create", "--tenant", "acme"]) == 0
    captured = capsys.readouterr()
    assert f"database: sqlite:///{server.resolve() / 'bregkd.db'} (from --data-dir {server})" in captured.err
    key_id = next(line for line in captured.out.splitlines() if line.startswith("created key")).split()[2]

    monkeypatch.setenv("BREGKD_DATA_DIR", str(server))  # what the server reads
    assert admin_main(["keys", "list"]) == 0
    captured = capsys.readouterr()
    assert key_id in captured.out and "acme" in captured.out
    assert f"(from BREGKD_DATA_DIR={server})" in captured.err
    assert list(cwd.iterdir()) == []


def test_an_empty_database_says_so_instead_of_printing_nothing(elsewhere, capsys):
    from storage.migrate import upgrade

    server, _ = elsewhere
    server.mkdir()
    url = f"sqlite:///{server / 'r.db'}"
    upgrade(url)  # the server's migrations ran, no key was created yet
    assert admin_main(["--database-url", url, "keys", "list"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"database: {url} (from --database-url)" in captured.err and "no keys yet" in captured.err
