"""Speed and quality benchmarks, each reported as a ratio against a baseline measured in the
same process (never as timed assertions in tests). Run all with ``python -m benchmarks``."""
