"""Fault-injection helpers for tests/test_reliability.py: bad and unusual image files, and a
subprocess runner that can watch an ingest's progress and kill or interrupt it."""
