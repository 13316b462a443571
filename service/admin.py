"""Operator commands: ``python -m service.admin keys create --tenant NAME | revoke KEY_ID | list``.

Runs the migrations first, so it works on a fresh database.
"""
from __future__ import annotations

import argparse
import json
import sys

from service.auth import create_key, list_keys, revoke_key
from storage.config import get_settings
from storage.db import session_scope
from storage.migrate import upgrade


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.admin", description=__doc__)
    parser.add_argument("--database-url", default=None, help="default: BREGKD_DATABASE_URL / the settings")
    sub = parser.add_subparsers(dest="group", required=True)
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key for a tenant and print it (shown once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--json", action="store_true", help="print {id, tenant, key} as JSON")
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    keys.add_parser("list", help="list keys (never their secrets)")
    args = parser.parse_args(argv)

    url = args.database_url or get_settings().resolved_database_url
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
            for k in list_keys(session):
                state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
                print(f"{k.id}\t{k.tenant}\t{k.created_at:%Y-%m-%d %H:%M}\t{state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
