"""Real loopback servers for the HTTP backend tests (and speed/http_throughput.py)."""
