#!/usr/bin/env bash
# The Qwen study's caches (evidence/snapshot.sh on this folder):
#   bash evidence/qwen-study/snapshot.sh save | restore
exec bash "$(dirname "$0")/../snapshot.sh" "$1" "$(dirname "$0")"
