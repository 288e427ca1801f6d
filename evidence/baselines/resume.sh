#!/usr/bin/env bash
# Resume the mitigation-baselines study (examples/baselines_study.yaml) on a fresh machine
# (evidence/resume.sh). Trainings resume from their last checkpoint on the same machine and retrain on
# a fresh one unless their adapter is kept here.
#   bash evidence/baselines/resume.sh --models smollm2    # SmolLM2-135M only (2.9 CPU-core hours, done)
#   bash evidence/baselines/resume.sh --models qwen15     # Qwen2.5-Coder-1.5B (~20-25 CPU-core hours on AMX)
#   bash evidence/baselines/resume.sh                     # both
exec bash "$(dirname "$0")/../resume.sh" evidence/baselines examples/baselines_study.yaml "$@"
