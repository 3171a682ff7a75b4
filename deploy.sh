#!/usr/bin/env bash
# Deploy Switchyard on Modal: `modal deploy modal_deploy.py` (the image takes this checkout's
# packages). Needs `pip install modal` and a Modal account (`modal setup`).
#
# Every setting is an optional environment variable, read by modal_deploy.py (defaults in brackets):
#   SWITCHYARD_APP_NAME           app name, and so the URL [andrewid-system-1]
#   SWITCHYARD_MODEL              large model, cuda:0 [Qwen/Qwen3-8B]
#   SWITCHYARD_SMALL_MODEL        small model, cuda:1 [Qwen/Qwen3-1.7B]
#   SWITCHYARD_SERVED_MODEL_NAME  the responses' `model` [the app name]
#   SWITCHYARD_POLICY             a local policy JSON file (tasks/policy.py) [the built-in table]
#   SWITCHYARD_ARGS               more `python -m api` flags, e.g. "--max-num-seqs 256"
#   SWITCHYARD_API_KEY            require 'Authorization: Bearer KEY' [none: the course's client sends none]
#
#   SWITCHYARD_APP_NAME=myid-system-2 ./deploy.sh
set -euo pipefail
exec modal deploy "$(dirname "$0")/modal_deploy.py" "$@"
