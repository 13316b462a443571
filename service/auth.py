"""API keys: random bearer tokens mapped to a tenant, stored only as a SHA-256 hash.

A key has 32 random bytes, so a plain (unsalted) SHA-256 is enough to make a stolen database
useless for logging in, and lets the key be found by an indexed lookup of its hash.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import ApiKey, Tenant, utcnow

KEY_PREFIX = "bkd"


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> tuple[str, str]:
    """A new ``(key_id, key)``; the key embeds its id so an operator can tell keys apart."""
    key_id = f"key_{secrets.token_hex(4)}"
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class CreatedKey:
    id: str
    tenant: str
    key: str


def create_key(session: Session, tenant: str) -> CreatedKey:
    """Create a key for ``tenant`` (creating the tenant if new); the key is returned once."""
    tenant = tenant.strip()
    if not tenant or len(tenant) > 64:
        raise ValueError("a tenant name must have 1 to 64 characters")
    if session.get(Tenant, tenant) is None:
        session.add(Tenant(name=tenant))
        session.flush()
    key_id, key = generate_key()
    session.add(ApiKey(id=key_id, tenant=tenant, key_hash=hash_key(key)))
    session.commit()
    return CreatedKey(id=key_id, tenant=tenant, key=key)


def revoke_key(session: Session, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None:
        return False
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return True


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.execute(select(ApiKey).order_by(ApiKey.created_at)).scalars())


def tenant_for_key(session: Session, key: str) -> str | None:
    """The tenant of a valid, unrevoked key, else None."""
    digest = hash_key(key)
    row = session.execute(select(ApiKey).where(ApiKey.key_hash == digest)).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    # the lookup was by hash; compare again in constant time for good measure
    if not hmac.compare_digest(row.key_hash, digest):
        return None
    return row.tenant
