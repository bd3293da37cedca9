"""Stress-test perturbations (specs/protocol.md §4); registered in PERTURBATIONS."""
