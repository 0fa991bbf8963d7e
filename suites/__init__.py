"""refbench suites: the catalog of specs, generic correctness tests and benchmarks."""
