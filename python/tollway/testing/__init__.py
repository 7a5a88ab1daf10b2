"""Test and benchmark helpers that ship with tollway (mock upstream servers)."""
