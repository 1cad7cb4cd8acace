package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// rekeyChild runs the CLI in a fresh process (this test binary, see the
// REKEY_KEYS_CHILD hook in keys_test.go): PKCS#11 login state is per
// process, so a wrong PIN can only be seen by a process that never logged
// in with the right one.
func rekeyChild(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	a, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "REKEY_KEYS_CHILD=cli", "REKEY_KEYS_ARGS="+string(a)), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String()
}

func TestCLIUsageAndExitCodes(t *testing.T) {
	if out := rekey(t, exitOK, "--help"); !strings.Contains(out, "rekey run") || !strings.Contains(out, "Exit codes") {
		t.Fatalf("--help:\n%s", out)
	}
	if out := rekey(t, exitOK, "run", "--help"); !strings.Contains(out, "--target-wrap") || !strings.Contains(out, "--resume") || strings.Contains(out, "--logging_endpoint") {
		t.Fatalf("run --help should list rekey's flags and not Beam's internals:\n%s", out)
	}
	// Issue 15 item 13: defaults are shown; each command lists its own
	// flags only (verify no run-only ones, ledger no --runner).
	if out := rekey(t, exitOK, "gen", "--help"); !strings.Contains(out, "(default 4)") || !strings.Contains(out, "(default 1000)") || !strings.Contains(out, "--runner") {
		t.Fatalf("gen --help should show defaults:\n%s", out)
	}
	if out := rekey(t, exitOK, "verify", "--help"); strings.Contains(out, "  --resume") || strings.Contains(out, "  --max-failures") ||
		strings.Contains(out, "  --success-marker") || strings.Contains(out, "  --lease-ttl") || strings.Contains(out, "  --target-wrap") ||
		!strings.Contains(out, "--target-only") || !strings.Contains(out, "accepted and ignored") {
		t.Fatalf("verify --help should list verify's flags, not run's:\n%s", out)
	}
	if out := rekey(t, exitOK, "ledger", "--help"); strings.Contains(out, "--runner") || strings.Contains(out, "Beam's runner flags") {
		t.Fatalf("ledger --help runs no pipeline and should not offer --runner:\n%s", out)
	}
	if got := plural(1, "file") + ", " + plural(9, "file"); got != "1 file, 9 files" {
		t.Fatalf("plural: %s", got)
	}
	rekey(t, exitUsage)
	rekey(t, exitUsage, "frobnicate")
	rekey(t, exitUsage, "run", "--no-such-flag")
	rekey(t, exitUsage, "run", "--mode", "rewrap") // fields missing
	dir := t.TempDir()
	job := filepath.Join(dir, "job.yaml")
	if err := os.WriteFile(job, []byte("version: 1\nmode: reencrypt\nsorce: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	resetFlags()
	var stdout, stderr bytes.Buffer
	if code := mainExit([]string{"plan", "--job", job}, &stdout, &stderr); code != exitUsage || !strings.Contains(stderr.String(), "sorce") {
		t.Fatalf("typo in job file: exit %d, %s", code, stderr.String())
	}
}

func TestCLIRunVerifyAndFailures(t *testing.T) {
	dir := t.TempDir()
	src := env.KEK("source", "kek-aes")
	dst := env.KEK("target", "kek-rsa")
	rekey(t, exitOK, "gen", "--data", dir+"/src/data", "--deks", dir+"/src/deks", "--kek", src, "--files", "3", "--records", "40", "--num-deks", "5")
	common := []string{"--source-data", dir + "/src/data", "--source-deks", dir + "/src/deks", "--source-kek", src,
		"--target-data", dir + "/dst/data", "--target-deks", dir + "/dst/deks", "--target-kek", dst, "--target-wrap", "rsa-oaep-sha1",
		"--ledger", dir + "/ledger", "--mode", "reencrypt"}
	out := rekey(t, exitOK, append([]string{"plan", "--run-id", "r1"}, common...)...)
	if !strings.Contains(out, "120 records") || strings.Contains(out, "FAIL") {
		t.Fatalf("plan:\n%s", out)
	}
	out = rekey(t, exitOK, append([]string{"run", "--run-id", "r1"}, common...)...)
	if !strings.Contains(out, "succeeded") || !strings.Contains(out, "120") {
		t.Fatalf("run:\n%s", out)
	}
	// The summary's files are the 3 record files the plan counted; the
	// DEK table file gets its own line (issue 15 item 13).
	if !regexp.MustCompile(`files\s+3\s+3\s+0\s+0\n`).MatchString(out) || !strings.Contains(out, "DEK table: 1 file\n") {
		t.Fatalf("run summary should count 3 record files and 1 DEK table file:\n%s", out)
	}
	rekey(t, exitPreflight, append([]string{"run", "--run-id", "r1"}, common...)...) // ledger exists
	out = rekey(t, exitOK, append([]string{"verify", "--run-id", "r1"}, common[:len(common)-2]...)...)
	if !strings.Contains(out, "counts match") || !strings.Contains(out, "120 decrypt") {
		t.Fatalf("verify:\n%s", out)
	}
	out = rekey(t, exitOK, "ledger", "--ledger", dir+"/ledger", "--run-id", "r1", "--unit", "record", "--limit", "2")
	if !strings.Contains(out, "2 of 120 matching rows") {
		t.Fatalf("ledger:\n%s", out)
	}
	// Verifying the target against the source DEK table is a mismatch.
	rekey(t, exitFailures, "verify", "--data", dir+"/dst/data", "--deks", dir+"/src/deks", "--kek", src, "--report", dir+"/v.json")
	// A corrupt file: the run finishes and says so with exit 3.
	if err := os.WriteFile(dir+"/src/data/part-00001.parquet", []byte("not parquet"), 0o644); err != nil {
		t.Fatal(err)
	}
	other := func(id string) []string {
		c := append([]string{}, common...)
		for i := range c {
			c[i] = strings.Replace(c[i], dir+"/dst/", dir+"/"+id+"/", 1)
		}
		return c
	}
	// Issue 15 item 15: r1 completed with nothing failed and has its
	// _SUCCESS markers; a run that ends with failures has none, not even
	// one an earlier run left in its target.
	for _, d := range []string{"dst/data", "dst/deks"} {
		if _, err := os.Stat(filepath.Join(dir, d, "_SUCCESS")); err != nil {
			t.Errorf("the succeeded run r1 has no _SUCCESS in %s: %v", d, err)
		}
	}
	if err := os.MkdirAll(dir+"/r2/data", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/r2/data/_SUCCESS", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rekey(t, exitFailures, append([]string{"run", "--run-id", "r2"}, other("r2")...)...)
	for _, d := range []string{"r2/data", "r2/deks"} {
		if _, err := os.Stat(filepath.Join(dir, d, "_SUCCESS")); err == nil {
			t.Errorf("run r2 ended with failures (exit 3), but %s has a _SUCCESS marker", d)
		}
	}
	// The failure budget stops it, with exit 3 too.
	rekey(t, exitFailures, append([]string{"run", "--run-id", "r3", "--max-failures", "0"}, other("r3")...)...)
	// A second re-encrypt into a target DEK table that earlier output uses is refused.
	rekey(t, exitPreflight, append([]string{"run", "--run-id", "r4"}, common...)...)
}

func TestCLIWrongPINInAFreshProcess(t *testing.T) {
	dir := t.TempDir()
	args := []string{"plan", "--mode", "rewrap", "--source-deks", dir + "/deks", "--target-deks", dir + "/out",
		"--ledger", dir + "/ledger", "--source-kek", env.KEK("source", "kek-aes"),
		"--target-kek", strings.Replace(env.KEK("target", "kek-aes"), "REKEY_TARGET_PIN", "REKEY_WRONG_PIN", 1)}
	code, out := rekeyChild(t, []string{"SOFTHSM2_CONF=" + env.Conf, "REKEY_WRONG_PIN=not-the-pin-9"}, args...)
	if code != exitPreflight || !strings.Contains(out, "CKR_PIN_INCORRECT") || !strings.Contains(out, "pin-source") {
		t.Fatalf("wrong PIN: exit %d\n%s", code, out)
	}
	for _, pin := range []string{"not-the-pin-9", os.Getenv("REKEY_SOURCE_PIN"), os.Getenv("REKEY_TARGET_PIN")} {
		if strings.Contains(out, pin) {
			t.Fatalf("a PIN was printed:\n%s", out)
		}
	}
}
