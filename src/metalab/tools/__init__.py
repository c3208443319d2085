"""Tools around the library: speed benchmarks, the CPU allocator setting, provenance of results."""
