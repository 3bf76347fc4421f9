#!/usr/bin/env bash
# The SmolLM2 edit figures of docs/results.md ("Editing"): one fact into block 12, certified, composed.
# Writes runs/smollm2/edits/<time>/{edit_report.md,edit_report.json,edit_tradeoff.png,certify/}.
set -euo pipefail
cd "$(dirname "$0")/.."
python edit.py block=12 data.n_train_prompts=128 \
  'edit.prompt=The Eiffel Tower is located in the city of' 'edit.target= Rome' \
  'edit.subject=Eiffel Tower' \
  'edit.paraphrases=[Where is the Eiffel Tower? It is in,The Eiffel Tower stands in the city of]' \
  'edit.neighbors=[The Louvre is located in the city of,The Colosseum is located in the city of,Big Ben is located in the city of]' \
  edit.certify=true \
  'edit.certify_args=["lean.build=false","lipschitz.random_trials=4","lipschitz.ascent_steps=5"]' \
  "$@"
