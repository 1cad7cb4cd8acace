// Command rekey-bench is the engine of `make bench`: it measures rekey
// against the limits of the machine it runs on, all in one run.
//
//	rekey-bench [flags]            the suite: one table on stdout, JSON beside it
//	rekey-bench profile [flags]    one in-process run under the CPU profiler
//	rekey-bench spawn RSSFILE CMD  (internal) run CMD, write its peak RSS
//	rekey-bench kms-raw [flags]    (internal) the KMS section's raw SDK loop
//	rekey-bench kms-serve DIR      (internal) a local-kms for `profile --kms`
//	rekey-bench tink-gen [flags]   (internal) the tink section's dataset, written by tink-go
//	rekey-bench tink-raw [flags]   (internal) the tink section's raw PKCS#11 loop
//	rekey-bench s3-copy [flags]    (internal) the objects section's storage copy loop
//
// The suite builds its own SoftHSM2 tokens and datasets (with `rekey gen`)
// under --dir, then measures, each as the median of --reps repetitions:
//
//   - limits, by code in this package: software AES-256-GCM open+seal on the
//     bench's cell sizes (1 and N goroutines, through schemas.OpenCell and
//     SealCell); HSM unwrap+wrap of 32-byte DEKs through providers/keys on
//     the same tokens, mechanisms and concurrency as the pipeline; the same
//     per-DEK token work (aes-gcm -> aes-gcm with verify) in a raw PKCS#11
//     loop, hsmio.RawGCMRewrapLoop, with a session copy of each key and
//     with the token objects (rewrap's peer: its 'vs limit' is against the
//     best session-copy row); a Parquet copy of the same datasets with
//     parquet-go and no crypto; and the composed re-encrypt bound
//     1/(1/crypto + 1/parquet);
//   - the baseline: the single-goroutine program a user would write instead
//     (no Beam: read Parquet, decrypt, encrypt, write);
//   - rekey itself, run as a subprocess (`rekey run`, direct and prism
//     runners, --workers 1 and the default), with the peak RSS of each run
//     from the child's rusage;
//   - in the same repetitions, on the same datasets, issue 14's peers of a
//     reencrypt (peers.go): the per-file user loop (the baseline's program
//     with one goroutine per file) and the floor (floor.go: the record
//     files' bytes read, every cell opened, sealed and verify-opened,
//     the bytes written and fsync'd; no Parquet decoding timed), with
//     rekey's ratio to each as goal rows;
//   - rekey on datasets in the aes-gcm cell format, written by this
//     command as an application would (appdata.go): a reencrypt to
//     rekey-v1 (keys in a DEK table) and rewraps of keys kept in a column;
//   - DEK rewrap through AWS KMS (local-kms, kms.go), on the ReEncrypt and
//     the unwrap+wrap path, against a raw aws-sdk-go-v2 loop making the same
//     requests at the same concurrency, and at several --workers values;
//   - a rewrap of cells written by tink-go's KMS envelope AEAD on the
//     source token (tink.go), against a raw PKCS#11 loop making the same
//     three token calls per cell;
//   - S3 Encryption Client objects in an in-process fake S3 (objects.go):
//     a rewrap in place (asserted not to read a body) and a reencrypt into
//     another prefix, against a plain GET+PUT copy on the same server;
//
// and prints the ratios rekey/limit, rekey/baseline, rekey/user loop,
// rekey/floor, workers=N/workers=1,
// aes-gcm/rekey-v1, and for KMS rekey/raw loop and default/best workers. With --compare BIN, every rekey-v1 run is also
// made by BIN (the previous code), in alternating pairs, and each row gets
// the ratio rekey/BIN: what a change costs, measured side by side.
//
// Every figure is a throughput of plaintext payload bytes (records x cell
// size) or of DEKs, so limits, baseline and rekey are comparable.
//
// Limits: the machine is shared with whatever else runs; figures are noisy,
// which is why each is set against limits measured in the same run, and why
// the spread of the repetitions is printed. Nothing here asserts a
// wall-clock threshold.
package main

import (
	"fmt"
	"os"
)

func main() {
	args := os.Args[1:]
	var err error
	if len(args) > 0 && args[0] == "spawn" {
		os.Exit(spawnMain(args[1:]))
	}
	switch {
	case len(args) > 0 && args[0] == "profile":
		err = profileMain(args[1:])
	case len(args) > 0 && args[0] == "peer":
		err = peerMain(args[1:])
	case len(args) > 0 && args[0] == "kms-raw":
		err = kmsRawMain(args[1:])
	case len(args) > 0 && args[0] == "kms-serve":
		err = kmsServeMain(args[1:])
	case len(args) > 0 && args[0] == "tink-gen":
		err = tinkGenMain(args[1:])
	case len(args) > 0 && args[0] == "tink-raw":
		err = tinkRawMain(args[1:])
	case len(args) > 0 && args[0] == "s3-copy":
		err = s3CopyMain(args[1:])
	default:
		err = suiteMain(args)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rekey-bench:", err)
		os.Exit(1)
	}
}
