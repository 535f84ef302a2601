"""The benchmarks, importable as a package so tests can reuse bench.postfix_instance."""
