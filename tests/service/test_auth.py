"""API keys: stored hashed, mapped to a tenant, revocable; the admin command."""
from __future__ import annotations

from sqlalchemy import select

from service.admin import main as admin_main
from service.auth import create_key, hash_key, revoke_key, tenant_for_key
from storage.db import session_scope
from storage.migrate import upgrade
from storage.models import ApiKey


def test_keys_are_stored_hashed_and_map_to_their_tenant(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    with session_scope(url) as db:
        a = create_key(db, "acme")
        b = create_key(db, "globex")
        rows = db.execute(select(ApiKey)).scalars().all()
        assert {r.key_hash for r in rows} == {hash_key(a.key), hash_key(b.key)}
        assert all(a.key not in r.key_hash and r.key_hash != a.key for r in rows)
        assert tenant_for_key(db, a.key) == "acme" and tenant_for_key(db, b.key) == "globex"
        assert tenant_for_key(db, a.key + "x") is None
        assert revoke_key(db, a.id)
        assert tenant_for_key(db, a.key) is None
        assert not revoke_key(db, "key_missing")


def test_admin_command_creates_lists_and_revokes(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert admin_main(["--database-url", url, "keys", "create", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    key = out.strip().splitlines()[-1]
    key_id = key.split("_")[1] + "_" + key.split("_")[2]
    assert key.startswith("bkd_key_") and key_id in out
    assert admin_main(["--database-url", url, "keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and "acme" in listed and key not in listed and "active" in listed
    assert admin_main(["--database-url", url, "keys", "revoke", key_id]) == 0
    assert admin_main(["--database-url", url, "keys", "revoke", "key_nope"]) == 1
    admin_main(["--database-url", url, "keys", "list"])
    assert "revoked" in capsys.readouterr().out
