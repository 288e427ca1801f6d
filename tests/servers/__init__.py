"""Real loopback servers for the HTTP backend tests (and benchmarks/http_throughput.py)."""
