"""Operator commands: ``python -m service.admin keys create --tenant NAME | revoke KEY_ID | list``.

The database is found as the server finds it: ``--database-url``, else ``BREGKD_DATABASE_URL``,
else ``<data dir>/bregkd.db`` with the data directory from ``--data-dir``, ``BREGKD_DATA_DIR``,
a ``.env`` file or the default ``var`` (relative to the current directory, as for the server).
Which database was used is printed on stderr. ``list`` and ``revoke`` refuse to create a new
SQLite database: a missing file means the command runs elsewhere than the server. ``create``
runs the migrations first, so it works on a fresh database.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from service.auth import create_key, list_keys, revoke_key
from storage.config import Settings
from storage.db import session_scope
from storage.migrate import upgrade


def _database(args: argparse.Namespace) -> tuple[str, str]:
    """The database URL and where it came from (the same resolution as the server's settings)."""
    if args.database_url:
        return args.database_url, "--database-url"
    # read afresh (not the process's cached settings): the same fields and sources as the server's
    settings = Settings(data_dir=args.data_dir) if args.data_dir else Settings()
    if settings.database_url:
        return settings.database_url, "BREGKD_DATABASE_URL"
    if args.data_dir:
        source = f"--data-dir {args.data_dir}"
    elif os.environ.get("BREGKD_DATA_DIR"):
        source = f"BREGKD_DATA_DIR={os.environ['BREGKD_DATA_DIR']}"
    else:
        source = f"data dir {settings.data_dir} (the default or .env; relative to {Path.cwd()})"
    return settings.resolved_database_url, source


def _shown(url: str) -> str:
    """The URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: show it as given
        return url


def _sqlite_file(url: str) -> Path | None:
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix) and url[len(prefix):] not in ("", ":memory:"):
            return Path(url[len(prefix):])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=None, help="default: BREGKD_DATABASE_URL, else <data dir>/bregkd.db")
    parser.add_argument("--data-dir", default=None, help="the server's data directory (default: BREGKD_DATA_DIR / var)")
    sub = parser.add_subparsers(dest="group", required=True)
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key for a tenant and print it (shown once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--json", action="store_true", help="print {id, tenant, key} as JSON")
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    keys.add_parser("list", help="list keys (never their secrets)")
    args = parser.parse_args(argv)

    url, source = _database(args)
    sqlite_file = _sqlite_file(url)
    if args.action != "create" and sqlite_file is not None and not sqlite_file.is_file():
        print(f"error: no database at {sqlite_file.resolve()} (from {source}); run this where the server runs, "
              "or name its database with --data-dir, --database-url, BREGKD_DATA_DIR or BREGKD_DATABASE_URL",
              file=sys.stderr)
        return 1
    print(f"database: {_shown(url)} (from {source})", file=sys.stderr)
    upgrade(url)
    with session_scope(url) as session:
        if args.action == "create":
            try:
                created = create_key(session, args.tenant)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            if args.json:
                print(json.dumps({"id": created.id, "tenant": created.tenant, "key": created.key}))
            else:
                print(f"created key {created.id} for tenant {created.tenant}; store it now, it is not shown again:")
                print(created.key)
        elif args.action == "revoke":
            if not revoke_key(session, args.key_id):
                print(f"error: no key with id {args.key_id!r}; see `keys list`", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
        else:
            found = list_keys(session)
            for k in found:
                state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
                print(f"{k.id}\t{k.tenant}\t{k.created_at:%Y-%m-%d %H:%M}\t{state}")
            if not found:
                print("no keys yet: create one with `keys create --tenant NAME`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
