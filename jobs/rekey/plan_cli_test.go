package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	"rekey/schemas"
)

// rekeyBoth runs the CLI in this process and returns its exit code and
// everything it printed.
func rekeyBoth(args ...string) (int, string) {
	resetFlags()
	var out bytes.Buffer
	code := mainExit(args, &out, &out)
	return code, out.String()
}

// TestCLIPlanAndPreflightFailOnPredictedFailures (issue 10 item 8): a DEK row
// naming another KEK predicts 21 failures (the DEK and its 20 records).
// rekey plan exits 4 and says so, and rekey run refuses to start, unless
// --max-failures accepts that many; then plan exits 0 with a warning and
// the run goes on and ends with exit 3.
func TestCLIPlanAndPreflightFailOnPredictedFailures(t *testing.T) {
	dir := t.TempDir()
	src := env.KEK("source", "kek-aes")
	rekey(t, exitOK, "gen", "--data", dir+"/src/data", "--deks", dir+"/src/deks", "--kek", src, "--files", "2", "--records", "50", "--num-deks", "5")
	dekFile := filepath.Join(dir, "src", "deks", "part-00000.parquet")
	deks, err := parquet.ReadFile[schemas.DEKRow](dekFile)
	if err != nil {
		t.Fatal(err)
	}
	deks[3].KEK = "pkcs11:token=source;object=kek-other"
	if err := parquet.WriteFile(dekFile, deks); err != nil {
		t.Fatal(err)
	}
	job := func(runID string, extra ...string) []string {
		return append([]string{"--run-id", runID, "--mode", "reencrypt",
			"--source-data", dir + "/src/data", "--source-deks", dir + "/src/deks", "--source-kek", src,
			"--target-data", dir + "/" + runID + "/data", "--target-deks", dir + "/" + runID + "/deks", "--target-kek", env.KEK("target", "kek-aes"),
			"--ledger", dir + "/ledger"}, extra...)
	}

	code, out := rekeyBoth(append([]string{"plan"}, job("p1")...)...)
	if code != exitPreflight || !strings.Contains(out, "[FAIL] predicted failures: 1 DEK names another KEK, 20 records under those DEKs: 21 failures in all") ||
		!strings.Contains(out, "predicted failures: 1 DEKs, 20 records, 0 files (max_failures not set)") {
		t.Fatalf("plan: exit %d\n%s", code, out)
	}
	code, out = rekeyBoth(append([]string{"plan"}, job("p1", "--max-failures", "21")...)...)
	if code != exitOK || !strings.Contains(out, "[warn] predicted failures:") || !strings.Contains(out, "within the failure budget (max_failures=21)") {
		t.Fatalf("plan --max-failures 21: exit %d\n%s", code, out)
	}

	// The run's preflight: refused, nothing written.
	code, out = rekeyBoth(append([]string{"run"}, job("r1")...)...)
	if code != exitPreflight || !strings.Contains(out, "[FAIL] predicted failures") || !strings.Contains(out, "[FAIL] DEK KEKs") {
		t.Fatalf("run: exit %d, want %d\n%s", code, exitPreflight, out)
	}
	// Only its (released) lease objects: no data, DEK or ledger file.
	_ = filepath.WalkDir(filepath.Join(dir, "r1"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), "_rekey.lease.") {
			t.Errorf("a refused run wrote %s", p)
		}
		return nil
	})
	code, out = rekeyBoth(append([]string{"run"}, job("r2", "--max-failures", "5%")...)...)
	if code != exitPreflight || !strings.Contains(out, "max_failures=5%; predicted: 20% of 105 units") {
		t.Fatalf("run --max-failures 5%%: exit %d, want %d\n%s", code, exitPreflight, out)
	}
	// Accepted: the run goes on and ends with the failures it predicted.
	code, out = rekeyBoth(append([]string{"run"}, job("r3", "--max-failures", "21")...)...)
	if code != exitFailures || !strings.Contains(out, "[warn] predicted failures") {
		t.Fatalf("run --max-failures 21: exit %d, want %d\n%s", code, exitFailures, out)
	}
}
