"""Simulated terminals and lines for the demo, the tests and the benchmarks. Never used in production."""
