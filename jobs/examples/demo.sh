#!/usr/bin/env bash
# The demo behind `make demo`: SoftHSM tokens in demo/softhsm, a synthetic
# encrypted dataset, then both seed scenarios (plan, run, verify) and the
# first ledger rows. Safe to run again: demo/work is rebuilt each time.
set -euo pipefail
cd "$(dirname "$0")/../.."
export REKEY_SOURCE_PIN="${REKEY_SOURCE_PIN:-demo-source-1234}"
export REKEY_TARGET_PIN="${REKEY_TARGET_PIN:-demo-target-5678}"
export SOFTHSM2_CONF="$PWD/demo/softhsm/softhsm2.conf"
REKEY=bin/rekey
# Bold headings on a terminal only: piped to a file, the output stays plain text.
if [ -t 1 ]; then step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }; else step() { printf '\n== %s\n' "$*"; }; fi

step "SoftHSM2 tokens 'source' and 'target' with non-extractable KEKs (demo/softhsm)"
bin/softhsm-setup -dir demo/softhsm
softhsm2-util --show-slots | grep -E '^\s+Label:\s+\S' || true

step "A synthetic encrypted dataset: 8 files x 2,000 records under 32 DEKs wrapped by source/kek-aes"
rm -rf demo/work
$REKEY gen --data demo/work/source/data --deks demo/work/source/deks \
  --kek 'pkcs11:token=source;object=kek-aes?pin-source=env:REKEY_SOURCE_PIN' \
  --files 8 --records 2000 --num-deks 32 --record-size 512

for job in jobs/examples/hpcs-beta-to-production-rewrap.yaml jobs/examples/alibaba-cross-region-reencrypt.yaml; do
  step "rekey plan --job $job"
  $REKEY plan --job "$job"
  step "rekey run --job $job"
  $REKEY run --job "$job"
  step "rekey verify --job $job"
  $REKEY verify --job "$job"
done

step "First ledger rows of the re-encrypt run"
$REKEY ledger --ledger demo/work/ledger --run-id alibaba-reencrypt-demo --limit 5
step "Done. Try: bin/rekey --help, bin/rekey ledger --ledger demo/work/ledger --run-id hpcs-rewrap-demo"
