"""Records (SQLAlchemy 2 + Alembic) and blobs (a content-addressed directory), shared by the
service and the workers. Nothing here imports torch."""
