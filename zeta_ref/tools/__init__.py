"""The user's tools, built on the package: the command line (``zeta-ref``), the demo, and the
benchmarks (CPU and GPU)."""
