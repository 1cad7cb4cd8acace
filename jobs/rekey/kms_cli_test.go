package main

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"rekey/pipeline"
	"rekey/providers/awskms/localkms"
	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/transforms/ledger"
)

// kmsExamples are the example job files of issue 12's scenarios; the
// pipeline's end-to-end tests (pipeline/kms_e2e_test.go) run each of them
// with the test's keys and locations.
var kmsExamples = []string{
	"ibmkp-beta-to-production-rewrap.yaml",
	"alikms-gateway-to-instance-reencrypt.yaml",
	"pkcs11-to-awskms-rewrap.yaml",
	"awskms-to-pkcs11-reencrypt.yaml",
	"awskms-key-to-key-rewrap.yaml",
}

// TestExampleJobFiles: every job file in jobs/examples parses (unknown
// keys refused) and validates as rekey reads it, its key references parse
// with their scheme, and credentials appear only as references to where
// they are (*-source), never as values.
func TestExampleJobFiles(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "examples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range files {
		seen[filepath.Base(f)] = true
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			j, err := pipeline.ParseJob(b)
			if err != nil {
				t.Fatal(err)
			}
			j.Defaults()
			if err := j.Validate(); err != nil {
				t.Fatal(err)
			}
			for side, ref := range map[string]string{"source.kek": j.Source.KEK, "target.kek": j.Target.KEK} {
				if _, err := keys.ParseRef(ref); err != nil {
					t.Fatalf("%s %q: %v", side, ref, err)
				}
				if _, q, ok := strings.Cut(ref, "?"); ok {
					vals, err := url.ParseQuery(q)
					if err != nil {
						t.Fatalf("%s: query %q: %v", side, q, err)
					}
					for name := range vals {
						for _, secret := range []string{"apikey", "secret", "password", "pin", "token", "access", "client-key"} {
							if strings.Contains(name, secret) && !strings.HasSuffix(name, "-source") {
								t.Errorf("%s: parameter %q would carry a credential: name where it is (%s-source=env:VAR|file:/path)", side, name, name)
							}
						}
					}
				}
				if strings.Contains(keys.Redact(ref), "-source=") {
					t.Errorf("%s: the redacted reference %q still names a credential source", side, keys.Redact(ref))
				}
			}
		})
	}
	for _, name := range kmsExamples {
		if !seen[name] {
			t.Errorf("jobs/examples/%s is missing", name)
		}
	}
}

// TestCLIKMSKeyRevokedMidRun (issue 12, faults): a migration from a
// PKCS#11 HSM into AWS KMS (local-kms) whose target key is disabled once
// the run has made its first KMS requests, in both modes. `rekey run`
// exits 1 with a message naming the key and the custodian; every
// committed target file has its committed ledger part and no file is half
// there; after the key is enabled again, `rekey run --resume` finishes and
// `rekey verify` says OK.
func TestCLIKMSKeyRevokedMidRun(t *testing.T) {
	for i, mode := range []string{"rewrap", "reencrypt"} {
		t.Run(mode, func(t *testing.T) {
			// An account of its own, so the custodian's rate budget
			// (process-wide) is this run's.
			srv := localkms.Start(t, localkms.Account(fmt.Sprintf("33334444555%d", i)))
			revokedMidRun(t, srv, mode)
		})
	}
}

func revokedMidRun(t *testing.T, srv *localkms.Server, mode string) {
	dir := t.TempDir()
	src := env.KEK("source", "kek-aes")
	rekey(t, exitOK, "gen", "--data", dir+"/src/data", "--deks", dir+"/src/deks", "--kek", src,
		"--files", "2", "--records", "30", "--num-deks", "240", "--deks-per-file", "40")
	targetData := ""
	if mode == "reencrypt" {
		targetData = "\n  data: " + dir + "/dst/data"
	}
	job := filepath.Join(dir, "job.yaml")
	body := fmt.Sprintf(`version: 1
mode: %[4]s
run_id: revoked
source:
  data: %[1]s/src/data
  deks: %[1]s/src/deks
  kek: %[2]q
target:%[5]s
  deks: %[1]s/dst/deks
  kek: %[3]q
  wrap: aws-kms
ledger: %[1]s/ledger
workers: 2
hsm_rate: 300          # 2 to 3 s in all: slow enough to revoke mid-run
max_failures: "0"
`, dir, src, srv.KeyURI(localkms.Key1), mode, targetData)
	if err := os.WriteFile(job, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	// The plan's estimate, in API calls and minutes at the job's rate.
	calls := "480 API calls (1 wrap per DEK and 1 unwrap to verify it), 0.03 minutes at 300/s (hsm_rate)"
	if mode == "reencrypt" {
		calls = "720 API calls (per new DEK: 1 random, 1 wrap, 1 unwrap to verify), 0.04 minutes at 300/s (hsm_rate)"
	}
	if out := rekey(t, exitOK, "plan", "--job", job); !strings.Contains(out, "target awskms|eu-west-1|"+srv.Account()+": "+calls) {
		t.Fatalf("plan does not estimate %q:\n%s", calls, out)
	}
	ctx := context.Background()
	keyARN := srv.KeyARN(localkms.Key1)
	base, _ := srv.Counts()
	revoked := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		defer close(revoked)
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if n, _ := srv.Counts(); n-base >= 180 {
				_, err := srv.Client().DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(keyARN)})
				revoked <- err
				return
			}
		}
	}()
	resetFlags()
	var stdout, stderr bytes.Buffer
	code := mainExit([]string{"run", "--job", job, "--progress", "-1s"}, &stdout, &stderr)
	close(stop)
	err, ok := <-revoked
	if !ok {
		t.Fatalf("the run ended (exit %d) before the key was disabled:\n%s\n%s", code, stdout.String(), stderr.String())
	}
	if err != nil {
		t.Fatalf("DisableKey: %v", err)
	}
	msg := stderr.String()
	t.Logf("rekey run, exit %d; stderr:\n%s", code, msg)
	if code != exitFatal {
		t.Fatalf("exit %d, want %d (fatal)\nstdout:\n%s", code, exitFatal, stdout.String())
	}
	if !strings.Contains(msg, "--resume") {
		t.Errorf("stderr does not say how to finish (--resume)")
	}
	t.Run("message names key and custodian", func(t *testing.T) {
		var missing []string
		for _, want := range []string{keyARN, "AWS KMS", "DisabledException"} {
			if !strings.Contains(msg, want) {
				missing = append(missing, want)
			}
		}
		if len(missing) == 0 {
			return
		}
		t.Errorf("stderr lacks %q", missing)
	})
	if _, err := os.Stat(ledger.ManifestPath(dir+"/ledger", "revoked")); err == nil {
		t.Error("a stopped run wrote a manifest")
	}
	units := func() int {
		n := committed(t, "deks", dir+"/src/deks", dir+"/dst/deks", dir+"/ledger", "revoked")
		if mode == "reencrypt" {
			committed(t, "data", dir+"/src/data", dir+"/dst/data", dir+"/ledger", "revoked")
		}
		return n
	}
	if n := units(); n == 0 || n == 6 {
		t.Fatalf("%d of 6 DEK units committed: the key was not disabled mid-run", n)
	}

	if _, err := srv.Client().EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(keyARN)}); err != nil {
		t.Fatal(err)
	}
	out := rekey(t, exitOK, "run", "--job", job, "--resume", "--progress", "-1s")
	if !strings.Contains(out, "succeeded") {
		t.Fatalf("resume:\n%s", out)
	}
	if n := units(); n != 6 {
		t.Fatalf("after the resume, %d of 6 DEK units committed", n)
	}
	out = rekey(t, exitOK, "verify", "--job", job)
	if !strings.Contains(out, "OK: 60 of 60 source records and 240 of 240 source DEKs") {
		t.Fatalf("verify:\n%s", out)
	}
	rows, err := ledger.Read(ctx, dir+"/ledger", "revoked")
	if err != nil {
		t.Fatal(err)
	}
	want := 240
	if mode == "reencrypt" {
		want += 60
	}
	if len(rows) != want {
		t.Fatalf("%d ledger rows, want %d", len(rows), want)
	}
	for _, r := range rows {
		if r.Status != "migrated" || mode == "rewrap" && r.Path != "rekey" {
			t.Fatalf("ledger row %s/%s: %s, path %q: %s", r.DEKID, r.RecordID, r.Status, r.Path, r.Error)
		}
	}
}

// knownBug skips t for a bug in code this test does not own, naming it;
// with CI set it fails instead (CI runs every test).
func knownBug(t *testing.T, format string, a ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("known bug (CI is set, so this does not skip): "+format, a...)
	}
	t.Skipf("known bug: "+format, a...)
}

// committed checks that a run left nothing half-committed — each source
// file of kind ("deks": a DEK table file, "data": a record file) has both
// its target file and its ledger part, with only migrated rows, or
// neither — and returns how many have both.
func committed(t *testing.T, kind, srcDir, dstDir, ledgerRoot, runID string) int {
	t.Helper()
	ctx := context.Background()
	files, err := storage.List(ctx, srcDir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, rel := range files {
		last, _, err := ledger.LastAttempt(ctx, ledger.PartPath(ledgerRoot, runID, kind, rel))
		if err != nil {
			t.Fatal(err)
		}
		target, _ := storage.Exists(ctx, storage.Join(dstDir, rel))
		switch {
		case target && last == "":
			t.Errorf("target %s file %s is committed without its ledger part", kind, rel)
		case !target && last != "":
			t.Errorf("ledger part %s is committed without its target file", last)
		case target:
			rows, err := ledger.ReadPart(ctx, last)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				if r.Status != "migrated" {
					t.Errorf("committed unit %s: ledger row %s%s %s: %s", rel, r.DEKID, r.RecordID, r.Status, r.Error)
				}
			}
			n++
		}
	}
	entries, _ := os.ReadDir(dstDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), ".rekey-") {
			t.Errorf("temporary %s left in the target", e.Name())
		}
	}
	return n
}
