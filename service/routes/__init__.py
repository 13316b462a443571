"""Thin route modules: parse, call storage/validation, serialize."""
