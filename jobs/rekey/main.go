// Command rekey moves envelope-encrypted datasets from one key custodian
// (HSM) to another: rewrap (DEKs unwrapped by the old KEK and wrapped by the
// new one; data untouched) or reencrypt (every record decrypted and
// encrypted again under fresh DEKs), on Apache Beam, with a Parquet ledger.
//
//	rekey plan|run|verify|gen|ledger|audit|keys [flags]
//
// Exit codes: 0 done, everything migrated or verified; 1 fatal error (the
// run stopped); 2 usage or job file error; 3 finished, but some records,
// DEKs or files failed (see the ledger), or verify found a mismatch; 4 a
// preflight check failed (nothing was touched); 130 (SIGINT) or 143
// (SIGTERM): rekey run stopped by a signal (the manifest says interrupted;
// finish with --resume; during the preflight, nothing was touched).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	beamlog "github.com/apache/beam/sdks/v2/go/pkg/beam/log"
)

// Exit codes, documented in README.md.
const (
	exitOK        = 0
	exitFatal     = 1
	exitUsage     = 2
	exitFailures  = 3
	exitPreflight = 4
)

const usageText = `rekey moves envelope-encrypted datasets from one HSM (key custodian) to another.

Usage:
  rekey plan   --job JOB.yaml [flags]   dry run: count, check keys and paths, estimate HSM work
  rekey run    --job JOB.yaml [flags]   migrate (mode rewrap or reencrypt), write the ledger
  rekey verify --job JOB.yaml [flags]   is every source record at the target and readable under the new key?
  rekey gen    [flags]                  make a synthetic encrypted dataset (demos, tests, benchmarks)
  rekey ledger --ledger DIR --run-id ID print a run's ledger rows (--status failed to see what failed)
  rekey audit  --kek URI --deks DIR[,DIR] [--data DIR[,DIR]]
                                        every DEK and record still using a KEK (exit 0 none, 3 some or unproven)
  rekey keys plan|copy|export-public     inventory a token's keys, move extractable ones HSM to HSM under
                                        wrap, export public keys of signing keys (docs/KEYS.md)

Run "rekey COMMAND --help" for the flags of a command.

Exit codes: 0 ok; 1 fatal error; 2 usage or job file error; 3 finished with failed
records/DEKs/files, or verify mismatch; 4 preflight check failed (nothing touched);
130 (SIGINT), 143 (SIGTERM): rekey run stopped by a signal, finish with --resume
(a second signal stops at once, with its own code).

PINs are never given on the command line: key URIs name a pin-source, e.g.
  pkcs11:token=source;object=kek-aes?pin-source=env:REKEY_SOURCE_PIN
`

func main() {
	protectProcess(os.Stderr)
	os.Exit(mainExit(os.Args[1:], os.Stdout, os.Stderr))
}

// commands maps a subcommand to its implementation. Each command's file
// registers itself in an init function.
var commands = map[string]func(args []string, stdout, stderr io.Writer) error{
	"plan":   cmdPlan,
	"run":    cmdRun,
	"verify": cmdVerify,
	"gen":    cmdGen,
	"ledger": cmdLedger,
}

// exitError carries an exit code with a message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code, err}
}

func mainExit(args []string, stdout, stderr io.Writer) int {
	// A remote runner starts this binary as a worker with Beam's own flags
	// and no subcommand.
	if len(args) > 0 && strings.HasPrefix(args[0], "-") && hasWorkerFlag(args) {
		if err := flag.CommandLine.Parse(args); err != nil {
			return exitUsage
		}
		beam.Init()
		return exitOK
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usageText)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	cmd, rest := args[0], args[1:]
	if cmd == "version" {
		fmt.Fprintln(stdout, "rekey (format version 1)")
		return exitOK
	}
	run, ok := commands[cmd]
	if !ok {
		fmt.Fprintf(stderr, "rekey: unknown command %q\n\n%s", cmd, usageText)
		return exitUsage
	}
	err := run(rest, stdout, stderr)
	if err == nil {
		return exitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	var ee *exitError
	code := exitFatal
	if errors.As(err, &ee) {
		code = ee.code
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintf(stderr, "rekey %s: %s\n", cmd, msg)
	}
	return code
}

func hasWorkerFlag(args []string) bool {
	for _, a := range args {
		if a == "--worker" || a == "-worker" || strings.HasPrefix(a, "--worker=") || strings.HasPrefix(a, "-worker=") {
			return true
		}
	}
	return false
}

// quietBeam keeps Beam's and prism's informational logging off the
// terminal unless --verbose: users watch rekey's progress lines instead.
func quietBeam(verbose bool) {
	if verbose {
		return
	}
	beamlog.SetLogger(beamLogger{})
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
}

type beamLogger struct{}

func (beamLogger) Log(_ context.Context, sev beamlog.Severity, _ int, msg string) {
	if sev >= beamlog.SevWarn {
		fmt.Fprintln(os.Stderr, "beam:", strings.TrimSpace(msg))
	}
}
