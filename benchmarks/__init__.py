"""Benchmarks for Fabric, run beside the tools people use (`python -m benchmarks SCENARIO`)."""
