package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"rekey/hsmio/faultpkcs11"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// TestSignalStopsARunCleanly (issue 15 item 1): a real SIGTERM to a real
// `rekey run` process (this test binary as the CLI, a fresh process) in the
// middle of a rewrap of 40 DEK table files. The run stops well before the
// end, exits 143 (128 + SIGTERM), says how to resume, writes the manifest as
// interrupted with the totals of what its ledger holds; every target DEK
// table file that exists has its committed ledger part (nothing half
// committed) and no unit is missing its part while its target exists. A
// --resume finishes the run and verify passes. A second signal exits at
// once.
func TestSignalStopsARunCleanly(t *testing.T) {
	dir := t.TempDir()
	src, dst := env.KEK("source", "kek-aes"), env.KEK("target", "kek-aes")
	// 40 DEK table files of 400 DEKs: several seconds of work with the
	// verify unwrap, one file at a time on the direct runner.
	rekey(t, exitOK, "gen", "--deks", dir+"/src/deks", "--kek", src, "--num-deks", "16000", "--files", "0", "--deks-per-file", "400")
	args := []string{"run", "--mode", "rewrap", "--run-id", "s1", "--workers", "1", "--source-deks", dir + "/src/deks", "--source-kek", src,
		"--target-deks", dir + "/dst/deks", "--target-kek", dst, "--ledger", dir + "/ledger", "--progress", "-1s"}
	a, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "REKEY_KEYS_CHILD=cli", "REKEY_KEYS_ARGS="+string(a), "SOFTHSM2_CONF="+env.Conf)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Signal once the first unit is committed.
	runDir := ledger.RunDir(dir+"/ledger", "s1")
	deadline := time.Now().Add(60 * time.Second)
	for {
		parts, _ := filepath.Glob(filepath.Join(runDir, "part-deks-*.parquet"))
		if len(parts) > 0 {
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("no ledger part after 60 s:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	if code != 143 || !strings.Contains(out.String(), "--resume") || !strings.Contains(out.String(), "interrupted") {
		t.Fatalf("after SIGTERM: exit %d (want 143, a resume hint):\n%s", code, out.String())
	}
	m, err := ledger.ReadManifest(context.Background(), dir+"/ledger", "s1")
	if err != nil || m.Status != transforms.ManifestInterrupted {
		t.Fatalf("manifest after SIGTERM: %+v, %v", m, err)
	}
	parts, _ := filepath.Glob(filepath.Join(runDir, "part-deks-*.parquet"))
	tables, _ := filepath.Glob(filepath.Join(dir, "dst", "deks", "*.parquet"))
	if len(parts) == 0 || len(parts) >= 40 || len(tables) != len(parts) || m.Totals.DEKsMigrated != int64(400*len(parts)) {
		t.Fatalf("after SIGTERM: %d ledger parts, %d target tables, manifest %d DEKs migrated; want 0 < parts < 40, as many tables, 400 DEKs each",
			len(parts), len(tables), m.Totals.DEKsMigrated)
	}
	// Issue 15 item 15: no _SUCCESS for an interrupted run; one after the
	// resume that completes it.
	success := filepath.Join(dir, "dst", "deks", "_SUCCESS")
	if _, err := os.Stat(success); err == nil {
		t.Fatalf("an interrupted run wrote %s", success)
	}
	// Finish with --resume; verify.
	resetFlags()
	rekey(t, exitOK, append(args, "--resume")...)
	if _, err := os.Stat(success); err != nil {
		t.Fatalf("the run completed with nothing failed, but: %v", err)
	}
	resetFlags()
	out2 := rekey(t, exitOK, "verify", "--deks", dir+"/dst/deks", "--kek", dst, "--report", dir+"/v.json")
	if !strings.Contains(out2, "16000") {
		t.Fatalf("verify after resume:\n%s", out2)
	}

	// Two signals: the second exits at once, still with no partial file
	// under a final name. The target HSM answers slowly (the fault module
	// delays every C_Encrypt 10 ms), so the clean stop the first signal
	// starts takes long enough for the second to cut it short. (The source
	// is opened first, directly: SoftHSM2 initialised through the fault
	// module first would refuse a direct second handle.)
	args2 := append([]string{}, args...)
	for i := range args2 {
		args2[i] = strings.Replace(args2[i], "/dst/", "/dst2/", 1)
		switch args2[i] {
		case "s1":
			args2[i] = "s2"
		case dst:
			args2[i] = fmt.Sprintf("pkcs11:token=target;object=kek-aes?module-path=%s&pin-source=env:REKEY_TARGET_PIN",
				faultpkcs11.ForTest(t, faultpkcs11.Config{Calls: []string{"C_Encrypt"}, Mode: faultpkcs11.Delay, Rate: 1, Delay: 10 * time.Millisecond}))
		}
	}
	a, _ = json.Marshal(args2)
	cmd = exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "REKEY_KEYS_CHILD=cli", "REKEY_KEYS_ARGS="+string(a), "SOFTHSM2_CONF="+env.Conf)
	outFile := filepath.Join(t.TempDir(), "out")
	of, err := os.Create(outFile)
	if err != nil {
		t.Fatal(err)
	}
	defer of.Close()
	cmd.Stdout, cmd.Stderr = of, of
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	output := func() string { b, _ := os.ReadFile(outFile); return string(b) }
	runDir2 := ledger.RunDir(dir+"/ledger", "s2")
	for deadline = time.Now().Add(120 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if p, _ := filepath.Glob(filepath.Join(runDir2, "part-deks-*.parquet")); len(p) > 0 || time.Now().After(deadline) {
			break
		}
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	for deadline = time.Now().Add(30 * time.Second); !strings.Contains(output(), "received: stopping") && time.Now().Before(deadline); {
		time.Sleep(2 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	err = cmd.Wait()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	if code != 130 || !strings.Contains(output(), "received again: stopping now") || strings.Contains(output(), "interrupted in") {
		t.Fatalf("after two SIGINTs: exit %d, want 130, the second one acted on at once (no run summary) (args %q):\n%s", code, args2, output())
	}
	for _, root := range []string{filepath.Join(dir, "dst2", "deks"), runDir2} {
		files, _ := os.ReadDir(root)
		for _, f := range files {
			if !strings.HasPrefix(f.Name(), ".") && !strings.HasPrefix(f.Name(), "_") {
				if _, err := readParquetRows(filepath.Join(root, f.Name())); err != nil {
					t.Errorf("a file under a final name does not read after two signals: %s: %v", f.Name(), err)
				}
			}
		}
	}

	// Issue 15 item 8: the temporaries a killed run leaves (here one as
	// kill -9 would leave it, beside whatever the second signal left) are
	// gone after the resume that finishes the run.
	leftover := filepath.Join(dir, "dst2", "deks", ".part-00007.parquet.rekey-0123456789ab.tmp")
	if err := os.WriteFile(leftover, []byte("half a file"), 0o644); err != nil {
		t.Fatal(err)
	}
	resetFlags()
	// (The resume reaches the same key without the delay.)
	for i := range args2 {
		if strings.Contains(args2[i], "token=target") {
			args2[i] = dst
		}
	}
	rekey(t, exitOK, append(args2, "--resume", "--success-marker=false")...)
	if _, err := os.Stat(filepath.Join(dir, "dst2", "deks", "_SUCCESS")); err == nil {
		t.Errorf("--success-marker=false still wrote _SUCCESS")
	}
	for _, root := range []string{filepath.Join(dir, "dst2"), runDir2} {
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && strings.HasSuffix(d.Name(), ".tmp") {
				t.Errorf("a temporary of the killed run survived the resume: %s", p)
			}
			return nil
		})
	}
}

// readParquetRows opens a Parquet file whole (footer and row count).
func readParquetRows(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		return 0, err
	}
	return pf.NumRows(), nil
}

// TestSignalStopsAReencrypt (issue 15 item 1, the issue's own case): a real
// SIGTERM to a real `rekey run` reencrypting 12 record files, its target
// HSM slowed by the project's fault module (every C_Encrypt delayed 40 ms,
// as a remote HSM answers). The run stops before the end with exit 143 and
// a resume hint, its manifest interrupted; every target record file that
// exists has its committed ledger part, and none is missing; --resume
// finishes the run and verify passes.
func TestSignalStopsAReencrypt(t *testing.T) {
	dir := t.TempDir()
	src := env.KEK("source", "kek-aes")
	slow := fmt.Sprintf("pkcs11:token=target;object=kek-aes?module-path=%s&pin-source=env:REKEY_TARGET_PIN",
		faultpkcs11.ForTest(t, faultpkcs11.Config{Calls: []string{"C_Encrypt"}, Mode: faultpkcs11.Delay, Rate: 1, Delay: 40 * time.Millisecond}))
	rekey(t, exitOK, "gen", "--data", dir+"/src/data", "--deks", dir+"/src/deks", "--kek", src, "--files", "12", "--records", "200", "--num-deks", "240")
	args := []string{"run", "--mode", "reencrypt", "--run-id", "e1", "--workers", "1", "--source-data", dir + "/src/data", "--source-deks", dir + "/src/deks",
		"--source-kek", src, "--target-data", dir + "/dst/data", "--target-deks", dir + "/dst/deks", "--target-kek", slow,
		"--ledger", dir + "/ledger", "--progress", "-1s"}
	a, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "REKEY_KEYS_CHILD=cli", "REKEY_KEYS_ARGS="+string(a), "SOFTHSM2_CONF="+env.Conf)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	runDir := ledger.RunDir(dir+"/ledger", "e1")
	for deadline := time.Now().Add(120 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if p, _ := filepath.Glob(filepath.Join(runDir, "part-data-*.parquet")); len(p) > 0 {
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("no record file committed after 120 s:\n%s", out.String())
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	if code != 143 || !strings.Contains(out.String(), "--resume") || !strings.Contains(out.String(), "SIGTERM") && !strings.Contains(out.String(), "terminated") {
		t.Fatalf("after SIGTERM: exit %d (want 143, the signal named, a resume hint):\n%s", code, out.String())
	}
	m, err := ledger.ReadManifest(context.Background(), dir+"/ledger", "e1")
	if err != nil || m.Status != transforms.ManifestInterrupted {
		t.Fatalf("manifest after SIGTERM: %+v, %v", m, err)
	}
	parts, _ := filepath.Glob(filepath.Join(runDir, "part-data-*.parquet"))
	files, _ := filepath.Glob(filepath.Join(dir, "dst", "data", "*.parquet"))
	if len(parts) == 0 || len(parts) >= 12 || len(files) != len(parts) || m.Totals.RecordsMigrated != int64(200*len(parts)) {
		t.Fatalf("after SIGTERM: %d ledger parts, %d target files, manifest %d records migrated; want 0 < parts < 12, as many files, 200 records each:\n%s",
			len(parts), len(files), m.Totals.RecordsMigrated, out.String())
	}
	for _, f := range files {
		if n, err := readParquetRows(f); err != nil || n != 200 {
			t.Fatalf("committed target file %s: %d rows, %v", f, n, err)
		}
	}
	resetFlags()
	rekey(t, exitOK, append(args, "--resume")...)
	resetFlags()
	v := rekey(t, exitOK, "verify", "--run-id", "e1", "--source-data", dir+"/src/data", "--source-deks", dir+"/src/deks", "--source-kek", src,
		"--target-data", dir+"/dst/data", "--target-deks", dir+"/dst/deks", "--target-kek", slow, "--ledger", dir+"/ledger")
	if !strings.Contains(v, "2400 decrypt") {
		t.Fatalf("verify after resume:\n%s", v)
	}
}
