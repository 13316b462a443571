"""Celery workers: the only processes that load users' models (torch is imported in the tasks)."""
