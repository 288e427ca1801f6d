#!/usr/bin/env bash
# Resume the multilingual study (examples/multilingual_study.yaml) on a fresh machine (evidence/resume.sh):
#   bash evidence/multilingual/resume.sh                  # one process, one thread
#   bash evidence/multilingual/resume.sh --executor ray   # two runs at a time when both cores are free
exec bash "$(dirname "$0")/../resume.sh" evidence/multilingual examples/multilingual_study.yaml "$@"
