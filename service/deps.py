"""FastAPI dependencies: settings, a database session, the blob store, the queue, the tenant."""
from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Iterator

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.auth import tenant_for_key
from storage.blobs import BlobStore
from storage.config import Settings
from storage.db import session_factory


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    session = session_factory(settings.resolved_database_url)()
    try:
        yield session
    finally:
        session.close()


DbDep = Annotated[Session, Depends(get_db)]


@lru_cache(maxsize=8)
def _blob_store(root: str) -> BlobStore:
    return BlobStore(root)


def get_blobs(settings: SettingsDep) -> BlobStore:
    return _blob_store(str(settings.blob_dir))


BlobsDep = Annotated[BlobStore, Depends(get_blobs)]


def get_queue(request: Request):
    """The Celery app used only to send messages (the workers' task code is never imported here)."""
    return request.app.state.celery


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer bkd_...`")


def get_tenant(db: DbDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The tenant of the request's API key (the request's one session is reused: FastAPI caches
    ``get_db`` per request)."""
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise HTTPException(401, "missing API key: send `Authorization: Bearer <key>`", headers=unauthorized)
    tenant = tenant_for_key(db, creds.credentials)
    # end the read transaction: the connection goes back to the pool (an upload may take minutes)
    db.commit()
    if tenant is None:
        raise HTTPException(401, "invalid or revoked API key", headers=unauthorized)
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]
