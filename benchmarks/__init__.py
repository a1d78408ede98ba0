"""The benchmark suite: callnet and its peers on loopback (see benchmarks/README.md)."""
