#!/usr/bin/env bash
# Test-only system and Python packages beyond the project's extras.
set -euo pipefail
# a real OpenAI-compatible server for the HTTP backend tests (`transformers serve`)
pip install -q -c .ci/constraints.txt "transformers[serving]"
# headless Chromium renders the HTML report in tests/test_report.py
if ! command -v chromium >/dev/null 2>&1; then
  # a mirror outage must not hide the other tests: without chromium that one test skips, and says so
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
    || echo "warning: could not install chromium; tests/test_report.py's screenshot test will be skipped" >&2
fi
