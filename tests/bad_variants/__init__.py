"""Variants that misbehave on purpose, loaded by module path as a user's would be.

Each module re-exports the contract's boilerplate from ``common`` and breaks ``attention``.
"""
