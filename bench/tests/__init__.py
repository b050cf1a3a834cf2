"""The bench's own tests: its measuring code (open loop, verdicts, SQLite work) is right.

They live with the bench so that tests/ never imports bench/ (pytest collects both).
"""
