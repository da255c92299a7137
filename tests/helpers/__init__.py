"""Helpers shared by the tests, in one place (STYLE.md 13): ports, paths, graphs, worker spawning,
the `strata` command-line runner and real servers for the operations tests. Fixtures stay in
tests/conftest.py."""
