#!/usr/bin/env bash
# The object-store demo behind `make demo-s3`: a real S3 server (versitygw,
# which checks SigV4 signatures) on 127.0.0.1 with its data in demo/s3, the
# SoftHSM tokens of `make demo`, then a dataset generated straight into S3,
# re-encrypted S3 -> S3, rewrapped on S3, verified, ledgers in S3 too.
set -euo pipefail
cd "$(dirname "$0")/../.."
VGW="${VERSITYGW:?set VERSITYGW to the versitygw binary (make demo-s3 does)}"
export REKEY_SOURCE_PIN="${REKEY_SOURCE_PIN:-demo-source-1234}"
export REKEY_TARGET_PIN="${REKEY_TARGET_PIN:-demo-target-5678}"
export SOFTHSM2_CONF="$PWD/demo/softhsm/softhsm2.conf"
REKEY=bin/rekey
# Bold headings on a terminal only: piped to a file, the output stays plain text.
if [ -t 1 ]; then step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }; else step() { printf '\n== %s\n' "$*"; }; fi

step "versitygw on 127.0.0.1 (posix store in demo/s3, bucket rekey-demo)"
rm -rf demo/s3 && mkdir -p demo/s3/store/rekey-demo
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=rekeydemoaccess AWS_SECRET_ACCESS_KEY=rekey-demo-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL_S3="http://127.0.0.1:$PORT" REKEY_S3_PATH_STYLE=1
"$VGW" --access "$AWS_ACCESS_KEY_ID" --secret "$AWS_SECRET_ACCESS_KEY" --port "127.0.0.1:$PORT" --quiet posix "$PWD/demo/s3/store" &
VGW_PID=$!
trap 'kill $VGW_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
echo "listening on $AWS_ENDPOINT_URL_S3"

step "SoftHSM2 tokens (demo/softhsm)"
bin/softhsm-setup -dir demo/softhsm >/dev/null

B=s3://rekey-demo
step "rekey gen into $B/source (40 files x 250 records)"
$REKEY gen --data "$B/source/data" --deks "$B/source/deks" \
  --kek 'pkcs11:token=source;object=kek-aes?pin-source=env:REKEY_SOURCE_PIN' --files 40 --records 250 --num-deks 16

common=(--source-data "$B/source/data" --source-deks "$B/source/deks"
  --source-kek 'pkcs11:token=source;object=kek-aes?pin-source=env:REKEY_SOURCE_PIN' --ledger "$B/ledger")
re=(--mode reencrypt --run-id s3-reencrypt --target-data "$B/target/data" --target-deks "$B/target/deks"
  --target-kek 'pkcs11:token=target;object=kek-rsa?pin-source=env:REKEY_TARGET_PIN' --target-wrap rsa-oaep-sha1)
step "rekey plan / run / verify: reencrypt $B/source -> $B/target"
$REKEY plan "${common[@]}" "${re[@]}"
$REKEY run "${common[@]}" "${re[@]}"
$REKEY verify --run-id s3-reencrypt --ledger "$B/ledger" --data "$B/target/data" --deks "$B/target/deks" \
  --kek 'pkcs11:token=target;object=kek-rsa?pin-source=env:REKEY_TARGET_PIN'

step "rekey run / verify: rewrap on S3"
$REKEY run "${common[@]}" --mode rewrap --run-id s3-rewrap --target-deks "$B/rewrap/deks" \
  --target-kek 'pkcs11:token=target;object=kek-aes?pin-source=env:REKEY_TARGET_PIN' --target-wrap aes-kwp
$REKEY verify --run-id s3-rewrap --ledger "$B/ledger" --data "$B/source/data" --deks "$B/rewrap/deks" \
  --kek 'pkcs11:token=target;object=kek-aes?pin-source=env:REKEY_TARGET_PIN'

step "A wrong secret key fails before any data moves"
AWS_SECRET_ACCESS_KEY=wrong $REKEY plan "${common[@]}" "${re[@]}" --run-id s3-wrong 2>&1 | grep -E 'FAIL|access' | head -3 || true
step "Done; the objects are in demo/s3/store/rekey-demo"
