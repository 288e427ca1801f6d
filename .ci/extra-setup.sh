#!/usr/bin/env bash
# Test-only system and Python packages beyond the project's extras.
set -euo pipefail
# a real OpenAI-compatible server for the HTTP backend tests (`transformers serve`)
pip install -q -c .ci/constraints.txt "transformers[serving]"
# headless Chromium renders the HTML report in tests/test_report.py
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
