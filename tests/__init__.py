"""Behaviour tests (a package so helpers like `tests.http_server` can be imported)."""
