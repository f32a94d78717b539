"""Other inference servers that the benchmarks run beside Ember, for comparison."""
