"""Shared harness for keygate's Python test suites (tests/py, tests/e2e).

Runs from `.venv-stubs` (scripts/setup-test-env.sh). Nothing here imports
pytest at module level except `fixtures`, so the helpers can also be used
from scripts and a REPL.
"""
