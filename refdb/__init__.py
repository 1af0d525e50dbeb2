"""The reference database (SPEC.md capability F): city halls push, DC applications query.

Not built yet: the package exists so the card layout of SPEC.md holds; its
issue ("Reference-DB mode") fills it.
"""
