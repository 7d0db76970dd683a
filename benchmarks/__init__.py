"""Benchmarks of ParaTAA against sequential sampling, FP / FP+ and ParaDiGMS (see RESULTS.md)."""
