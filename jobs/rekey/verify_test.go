package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	"rekey/schemas"
	"rekey/transforms"
)

// rekeyAll runs the CLI and returns its exit code, stdout and stderr.
func rekeyAll(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	resetFlags()
	var stdout, stderr bytes.Buffer
	code := mainExit(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func wantVerify(t *testing.T, wantCode int, want []string, args ...string) string {
	t.Helper()
	code, out, errOut := rekeyAll(t, append([]string{"verify", "--progress=-1s"}, args...)...)
	if code != wantCode {
		t.Fatalf("rekey verify: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, wantCode, out, errOut)
	}
	for _, w := range want {
		if !strings.Contains(out+errOut, w) {
			t.Fatalf("rekey verify does not say %q:\nstdout:\n%s\nstderr:\n%s", w, out, errOut)
		}
	}
	for _, l := range strings.Split(out+errOut, "\n") {
		if strings.HasSuffix(strings.TrimSpace(l), ":") {
			t.Fatalf("a line ends before saying anything: %q\n%s%s", l, out, errOut)
		}
	}
	return out
}

func readReport(t *testing.T, path string) *transforms.VerifyReport {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r transforms.VerifyReport
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

// TestCLIVerifyComparesWithSource (issue 10 item 3): verify answers "is
// every source record now readable under the new key?", with exit 3 for
// records left out by a run that allowed failures, a target file deleted
// afterwards, and a DEK missing from a rewrapped table; exit 0 and the
// source's counts for a complete run; and, without a source, says that it
// compared with nothing.
func TestCLIVerifyComparesWithSource(t *testing.T) {
	dir := t.TempDir()
	src := env.KEK("source", "kek-aes")
	dst := env.KEK("target", "kek-aes")
	rekey(t, exitOK, "gen", "--data", dir+"/src/data", "--deks", dir+"/src/deks", "--kek", src, "--files", "3", "--records", "40", "--num-deks", "5")
	source := []string{"--source-data", dir + "/src/data", "--source-deks", dir + "/src/deks", "--source-kek", src, "--ledger", dir + "/ledger", "--progress=-1s"}
	target := func(id string) []string {
		return append([]string{"--run-id", id, "--target-data", dir + "/" + id + "/data", "--target-deks", dir + "/" + id + "/deks", "--target-kek", dst}, source...)
	}

	// (e) A complete run: exit 0, the source's counts, what was compared.
	rekey(t, exitOK, append([]string{"run", "--mode", "reencrypt"}, target("full")...)...)
	out := wantVerify(t, exitOK, []string{"compared source " + dir + "/src/data / " + dir + "/src/deks (120 records, 5 DEKs) with target " + dir + "/full/data / " + dir + "/full/deks under pkcs11:",
		"OK: 120 of 120 source records and 5 of 5 source DEKs", "migrated", "missing", "extra", "counts match run full"}, target("full")...)
	if strings.Contains(out, "pin-source") {
		t.Fatalf("the KEK is not redacted:\n%s", out)
	}
	rep := readReport(t, filepath.Join(dir, "ledger", "run_id=full", "_verify.json"))
	if !rep.OK || !rep.Compared || rep.Counts.Records.Source != 120 || rep.Counts.Records.Migrated != 120 || rep.Counts.DEKs.Migrated != 5 || rep.Ledger == nil || rep.Ledger.Decides {
		t.Fatalf("report: %+v", rep)
	}

	// (b) A target file deleted after the run: 40 records missing, exit 3.
	if err := os.Remove(dir + "/full/data/part-00002.parquet"); err != nil {
		t.Fatal(err)
	}
	wantVerify(t, exitFailures, []string{"MISMATCH", "40 of 120 source records not readable at the target (40 missing, 0 failed)", "verification failed"}, target("full")...)

	// Alone, the same target looks fine, and verify says what that means.
	wantVerify(t, exitOK, []string{"NOT COMPARED WITH A SOURCE", "OK (target only"}, "--data", dir+"/full/data", "--deks", dir+"/full/deks", "--kek", dst, "--report", dir+"/alone.json")
	// With --ledger and --run-id, the ledger is what it compares with then.
	wantVerify(t, exitFailures, []string{"NOT COMPARED WITH A SOURCE", "ledger:  MISMATCH", "with the ledger of run full"}, append([]string{"--target-only"}, target("full")...)...)

	// (a) A run whose failure budget let 2 records fail: they are missing.
	f0 := dir + "/src/data/part-00000.parquet"
	orig, err := os.ReadFile(f0)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := parquet.ReadFile[transforms.GenRow](f0)
	if err != nil {
		t.Fatal(err)
	}
	rows[5].Payload[30] ^= 1
	rows[6].Payload[30] ^= 1
	if err := parquet.WriteFile(f0, rows); err != nil {
		t.Fatal(err)
	}
	// The failure budget counts this process's failures (one command per
	// process outside tests): the verify above counted its 40 missing.
	transforms.Progress.Failed.Store(0)
	rekey(t, exitFailures, append([]string{"run", "--mode", "reencrypt", "--max-failures", "5"}, target("partial")...)...)
	if err := os.WriteFile(f0, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	wantVerify(t, exitFailures, []string{"2 of 120 source records not readable at the target (2 missing, 0 failed)", `record "5"`, `record "6"`}, target("partial")...)

	// (d) Rewrap, and a DEK deleted from the target table.
	rw := append([]string{"--run-id", "rw", "--target-deks", dir + "/rw/deks", "--target-kek", env.KEK("target", "kek-rsa"), "--target-wrap", "rsa-oaep-sha1"}, source...)
	rekey(t, exitOK, append([]string{"run", "--mode", "rewrap"}, rw...)...)
	wantVerify(t, exitOK, []string{"(120 records, 5 DEKs)", "OK: 120 of 120 source records and 5 of 5 source DEKs"}, append([]string{"--mode", "rewrap"}, rw...)...)
	dekFile := dir + "/rw/deks/part-00000.parquet"
	deks, err := parquet.ReadFile[schemas.DEKRow](dekFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := parquet.WriteFile(dekFile, deks[1:]); err != nil {
		t.Fatal(err)
	}
	wantVerify(t, exitFailures, []string{"1 of 5 source DEKs not readable at the target (1 missing, 0 failed)", "24 of 120 source records"}, append([]string{"--mode", "rewrap"}, rw...)...)

	// The help documents the exit codes.
	code, help, _ := rekeyAll(t, "verify", "--help")
	if code != exitOK || !strings.Contains(help, "Exit codes: 0 every source record and DEK") || !strings.Contains(help, "3 something") || !strings.Contains(help, "--target-only") {
		t.Fatalf("verify --help:\n%s", help)
	}
}

// TestCLIVerifyEmptySource (issue 10 item 10): verify of a run over an
// empty source folder is OK, 0 of 0, and no message stops after "failed:".
func TestCLIVerifyEmptySource(t *testing.T) {
	dir := t.TempDir()
	src := env.KEK("source", "kek-aes")
	rekey(t, exitOK, "gen", "--deks", dir+"/src/deks", "--kek", src, "--files", "0", "--num-deks", "3")
	if err := os.MkdirAll(dir+"/src/data", 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"--source-data", dir + "/src/data", "--source-deks", dir + "/src/deks", "--source-kek", src,
		"--target-data", dir + "/dst/data", "--target-deks", dir + "/dst/deks", "--target-kek", env.KEK("target", "kek-aes"),
		"--ledger", dir + "/ledger", "--run-id", "e1"}
	rekey(t, exitOK, append([]string{"run", "--mode", "reencrypt", "--progress=-1s"}, args...)...)
	wantVerify(t, exitOK, []string{"(0 records, 3 DEKs)", "OK: 0 of 0 source records and 3 of 3 source DEKs"}, args...)
	wantVerify(t, exitOK, []string{"NOT COMPARED WITH A SOURCE"}, "--data", dir+"/dst/data", "--deks", dir+"/dst/deks", "--kek", env.KEK("target", "kek-aes"), "--report", dir+"/alone.json")
	// A source folder that does not exist is an error that says so.
	code, out, errOut := rekeyAll(t, append(append([]string{"verify", "--progress=-1s"}, args...), "--source-data", dir+"/no/such/folder")...)
	if code != exitFatal || !strings.Contains(errOut, "no/such/folder") || strings.HasSuffix(strings.TrimSpace(errOut), ":") {
		t.Fatalf("verify of a missing source: exit %d\n%s%s", code, out, errOut)
	}
}
