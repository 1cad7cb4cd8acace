package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"rekey/hsmio/faultpkcs11"
	"rekey/pipeline"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// cliArgs is the `rekey run` command line of a job.
func cliArgs(j *pipeline.Job, extra ...string) []string {
	a := []string{"run", "--mode", j.Mode, "--run-id", j.RunID, "--source-deks", j.Source.DEKs, "--source-kek", j.Source.KEK,
		"--target-deks", j.Target.DEKs, "--target-kek", j.Target.KEK, "--ledger", j.Ledger, "--workers", "1", "--progress", "-1s"}
	if j.Source.Data != "" {
		a = append(a, "--source-data", j.Source.Data)
	}
	if j.Target.Data != "" {
		a = append(a, "--target-data", j.Target.Data)
	}
	if j.Target.Wrap != "" {
		a = append(a, "--target-wrap", j.Target.Wrap)
	}
	return append(a, extra...)
}

// runCLI runs the rekey binary and returns its exit code and output.
func runCLI(t *testing.T, bin string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String()
	}
	t.Fatalf("rekey %v: %v", args[0], err)
	return -1, ""
}

// startCLI starts a rekey process and waits until it holds its run's
// lease (the first generation exists and names its pid). The process may
// be killed: it runs on a copy of the token store (killableHSM).
func startCLI(t *testing.T, bin string, j *pipeline.Job, args ...string) (*exec.Cmd, *bytes.Buffer, chan error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), killableHSM(t))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	lease := filepath.Join(ledger.RunDir(j.Ledger, j.RunID), "_rekey.lease.1.json")
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(lease); err == nil && bytes.Contains(b, []byte(fmt.Sprintf(`"pid": %d`, cmd.Process.Pid))) {
			return cmd, &out, done
		}
		select {
		case err := <-done:
			t.Fatalf("rekey finished (%v) before it was seen holding its lease:\n%s", err, out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("rekey never took its lease %s", lease)
	return nil, nil, nil
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// Issue 10 item 1: a second run on the same run id, or on the same target,
// is refused (exit 4, naming the holder) while the first lives; the first
// finishes correctly; after it ends the lease is free at once.
func TestSecondRunIsRefusedWhileFirstHoldsLease(t *testing.T) {
	bin := buildRekey(t)
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 4, 200, 60)
	j := d.job(schemas.ModeReencrypt, "owned", env.KEK("target", "kek-aes"), "aes-gcm")
	// A rate limit keeps the first run alive long enough to race it.
	cmd, out, done := startCLI(t, bin, j, cliArgs(j, "--hsm-rate", "40")...)

	code, second := runCLI(t, bin, cliArgs(j)...)
	if code != 4 || !strings.Contains(second, "held by another run") || !strings.Contains(second, fmt.Sprintf("pid %d", cmd.Process.Pid)) {
		t.Fatalf("second run on the same run id: exit %d, want 4 naming pid %d:\n%s", code, cmd.Process.Pid, second)
	}
	code, resumed := runCLI(t, bin, cliArgs(j, "--resume")...)
	if code != 4 || !strings.Contains(resumed, "held by another run") {
		t.Fatalf("--resume while the run lives: exit %d, want 4:\n%s", code, resumed)
	}
	other := *j
	other.RunID = "intruder"
	code, third := runCLI(t, bin, cliArgs(&other)...)
	if code != 4 || !strings.Contains(third, "target.deks") || !strings.Contains(third, "run owned") {
		t.Fatalf("another run id on the same target: exit %d, want 4 naming target.deks and run owned:\n%s", code, third)
	}
	if err := <-done; err != nil {
		t.Fatalf("first run: %v\n%s", err, out.String())
	}
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	dst := decryptAll(t, j.Target.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
	checkSameRecords(t, d, src, dst, true)
	checkLedger(t, j, map[string]int{"record/migrated": 4 * 200, "dek/migrated": 60})
	// Released: the next run of the same id does not wait for expiry.
	if code, out := runCLI(t, bin, cliArgs(j, "--resume")...); code != 0 {
		t.Fatalf("--resume after the run ended: exit %d\n%s", code, out)
	}
}

// Issue 10 item 1: two runs on one run id started together. Whatever the
// interleaving, at most one works at a time, and the result is right.
func TestConcurrentRunsOnOneRunID(t *testing.T) {
	bin := buildRekey(t)
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 4, 300, 12)
	j := d.job(schemas.ModeReencrypt, "twins", env.KEK("target", "kek-aes"), "aes-gcm")
	type result struct {
		code int
		out  string
	}
	res := make(chan result, 2)
	for i := 0; i < 2; i++ {
		go func() {
			cmd := exec.Command(bin, cliArgs(j)...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			res <- result{exitCode(err), out.String()}
		}()
	}
	a, b := <-res, <-res
	for _, r := range []result{a, b} {
		if r.code != 0 && r.code != 4 {
			t.Fatalf("exit %d, want 0 or 4 (refused):\n%s", r.code, r.out)
		}
		if r.code == 4 && !strings.Contains(r.out, "held by another run") {
			t.Fatalf("refusal does not name the holder:\n%s", r.out)
		}
	}
	if a.code != 0 && b.code != 0 {
		t.Fatalf("neither run finished:\n%s\n%s", a.out, b.out)
	}
	t.Logf("exit codes %d and %d", a.code, b.code)
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	dst := decryptAll(t, j.Target.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
	checkSameRecords(t, d, src, dst, true)
}

// Issue 10 item 1: a killed holder's lease is taken over at once on the
// same machine (its process is gone), so --resume after a crash works.
func TestKilledRunsLeaseIsTakenOver(t *testing.T) {
	bin := buildRekey(t)
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 4, 200, 60)
	j := d.job(schemas.ModeReencrypt, "killed", env.KEK("target", "kek-aes"), "aes-gcm")
	cmd, _, done := startCLI(t, bin, j, cliArgs(j, "--hsm-rate", "40")...)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
	code, out := runCLI(t, bin, cliArgs(j, "--resume")...)
	if code != 0 {
		t.Fatalf("--resume after the holder was killed: exit %d\n%s", code, out)
	}
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	dst := decryptAll(t, j.Target.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
	checkSameRecords(t, d, src, dst, true)
}

func leaseJob(t *testing.T) *pipeline.Job {
	root := t.TempDir()
	j := &pipeline.Job{Mode: schemas.ModeRewrap, RunID: "lease", Ledger: filepath.Join(root, "ledger"),
		Source: pipeline.Side{DEKs: filepath.Join(root, "src")}, Target: pipeline.Side{DEKs: filepath.Join(root, "dst")}}
	return j
}

func writeLease(t *testing.T, path, host string, pid int, expires time.Time) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"format": "rekey-lease/1", "expires": expires,
		"holder": map[string]any{"run_id": "other", "host": host, "pid": pid, "started": time.Now().Add(-time.Hour), "token": "x"}})
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, body, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Issue 10 item 1: a live holder on another host blocks until its lease
// expires; then it is taken over with the next generation.
func TestLeaseExpiryAndTakeover(t *testing.T) {
	ctx := context.Background()
	j := leaseJob(t)
	path := filepath.Join(j.Target.DEKs, "_rekey.lease.1.json")
	writeLease(t, path, "elsewhere.example", 4242, time.Now().Add(time.Hour))
	_, err := pipeline.AcquireLease(ctx, j, time.Second, nil)
	if !errors.Is(err, pipeline.ErrLeaseHeld) || !strings.Contains(err.Error(), "elsewhere.example") || !strings.Contains(err.Error(), "pid 4242") ||
		!strings.Contains(err.Error(), "target.deks") {
		t.Fatalf("live lease on another host: %v", err)
	}
	// Nothing of ours stays behind after a refusal.
	if b, _ := os.ReadFile(filepath.Join(ledger.RunDir(j.Ledger, j.RunID), "_rekey.lease.1.json")); !bytes.Contains(b, []byte(`"released": true`)) {
		t.Fatalf("the ledger lease taken before the refusal was not released: %s", b)
	}
	writeLease(t, path, "elsewhere.example", 4242, time.Now().Add(-time.Second))
	l, err := pipeline.AcquireLease(ctx, j, time.Second, nil)
	if err != nil {
		t.Fatalf("expired lease: %v", err)
	}
	if ok, _ := storage.Exists(ctx, filepath.Join(j.Target.DEKs, "_rekey.lease.2.json")); !ok {
		t.Fatal("takeover did not create generation 2")
	}
	l.Release(ctx)
	// Released: the next run takes generation 3 at once.
	l, err = pipeline.AcquireLease(ctx, j, time.Second, nil)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	l.Release(ctx)
	if ok, _ := storage.Exists(ctx, filepath.Join(j.Target.DEKs, "_rekey.lease.3.json")); !ok {
		t.Fatal("the run after a release did not take generation 3")
	}
}

// Issue 10 item 1: a holder that finds its lease taken over (it missed its
// renewals) learns it lost the lease and is told to stop.
func TestLeaseLostIsReported(t *testing.T) {
	ctx := context.Background()
	j := leaseJob(t)
	var lost atomic.Value
	l, err := pipeline.AcquireLease(ctx, j, 300*time.Millisecond, func(err error) { lost.Store(err) })
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	writeLease(t, filepath.Join(j.Target.DEKs, "_rekey.lease.2.json"), "elsewhere.example", 7, time.Now().Add(time.Hour))
	deadline := time.Now().Add(5 * time.Second)
	for lost.Load() == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	err, _ = lost.Load().(error)
	if err == nil || !errors.Is(err, pipeline.ErrLeaseHeld) || !strings.Contains(err.Error(), "elsewhere.example") || l.Lost() == nil {
		t.Fatalf("lost lease: %v", err)
	}
}

// Issue 10 item 4: a resume (or a re-run) with a changed job is refused,
// naming the field; the original job resumes fine.
func TestResumeRefusesChangedJob(t *testing.T) {
	bin := buildRekey(t)
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 50, 4)
	j := d.job(schemas.ModeRewrap, "fixed", env.KEK("target", "kek-aes"), "aes-gcm")
	if code, out := runCLI(t, bin, cliArgs(j)...); code != 0 {
		t.Fatalf("run: exit %d\n%s", code, out)
	}
	for _, c := range []struct {
		field string
		edit  func(*pipeline.Job)
	}{
		{"target.wrap", func(j *pipeline.Job) { j.Target.Wrap = "aes-kwp" }},
		{"target.kek", func(j *pipeline.Job) { j.Target.KEK = env.KEK("target", "kek-rsa"); j.Target.Wrap = "rsa-oaep-sha1" }},
		{"target.deks", func(j *pipeline.Job) { j.Target.DEKs += "-elsewhere" }},
	} {
		changed := *j
		c.edit(&changed)
		code, out := runCLI(t, bin, cliArgs(&changed, "--resume")...)
		if code != 2 || !strings.Contains(out, c.field) || !strings.Contains(out, "differs from the one this run started with") {
			t.Fatalf("changed %s: exit %d, want 2 naming the field:\n%s", c.field, code, out)
		}
	}
	// The default wrap, named or not, is the same job (issue 10 item 7).
	same := *j
	same.Target.Wrap = ""
	if code, out := runCLI(t, bin, cliArgs(&same, "--resume")...); code != 0 {
		t.Fatalf("resume leaving the default wrap implicit: exit %d\n%s", code, out)
	}
}

// Issue 10 item 7: the default wrap is resolved and named everywhere (the
// manifest, the output metadata), so a run that names it explicitly is the
// same target: an incremental run skips every file.
func TestDefaultWrapIsNamed(t *testing.T) {
	bin := buildRekey(t)
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 50, 4)
	j := d.job(schemas.ModeRewrap, "implicit", env.KEK("target", "kek-aes"), "")
	if code, out := runCLI(t, bin, cliArgs(j, "--incremental")...); code != 0 {
		t.Fatalf("run: exit %d\n%s", code, out)
	}
	m := readManifest(t, j)
	if m.Target.Wrap != schemas.WrapAESGCM {
		t.Fatalf("manifest target wrap %q, want %q", m.Target.Wrap, schemas.WrapAESGCM)
	}
	files, err := storage.List(context.Background(), j.Target.DEKs)
	if err != nil || len(files) == 0 {
		t.Fatal(files, err)
	}
	meta := parquetMeta(t, filepath.Join(j.Target.DEKs, files[0]), transforms.MetaTarget)
	if strings.HasSuffix(meta, " ") || !strings.HasSuffix(meta, " "+schemas.WrapAESGCM) {
		t.Fatalf("target metadata %s = %q, want the KEK and the wrap", transforms.MetaTarget, meta)
	}
	again := *j
	again.RunID, again.Target.Wrap = "explicit", schemas.WrapAESGCM
	if code, out := runCLI(t, bin, cliArgs(&again, "--incremental")...); code != 0 {
		t.Fatalf("incremental run naming the default wrap: exit %d\n%s", code, out)
	}
	if m := readManifest(t, &again); m.Totals.FilesSkipped != int64(len(files)) || m.Totals.DEKsMigrated != 0 {
		t.Fatalf("incremental run naming the default wrap redid work: %+v", m.Totals)
	}
}

// parquetMeta reads one key-value metadata entry of a Parquet file.
func parquetMeta(t *testing.T, path, key string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	v, _ := pf.Lookup(key)
	return v
}

// Issue 10 item 5: a unit that failed for a cause that is gone is tried
// again by --resume; the ledger keeps both attempts, the later one wins,
// and the run then reports success.
func TestResumeRetriesFailedUnits(t *testing.T) {
	bin := buildRekey(t)
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 3, 80, 6)
	j := d.job(schemas.ModeReencrypt, "retry", env.KEK("target", "kek-aes"), "aes-gcm")
	files, err := storage.List(context.Background(), d.gen.Data)
	if err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(d.gen.Data, files[1])
	orig, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	// The file is unreadable for a while (a half-synced copy).
	if err := os.WriteFile(victim, orig[:len(orig)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	code, out := runCLI(t, bin, cliArgs(j)...)
	if code != 3 || !strings.Contains(out, "--resume") {
		t.Fatalf("run with an unreadable file: exit %d, want 3 and how to finish:\n%s", code, out)
	}
	// Resuming while the cause is still there fails the same way.
	if code, out := runCLI(t, bin, cliArgs(j, "--resume")...); code != 3 {
		t.Fatalf("resume with the cause still there: exit %d, want 3\n%s", code, out)
	}
	if err := os.WriteFile(victim, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out = runCLI(t, bin, cliArgs(j, "--resume")...)
	if code != 0 {
		t.Fatalf("resume after the cause is gone: exit %d, want 0\n%s", code, out)
	}
	if m := readManifest(t, j); m.Status != "succeeded" || m.Totals.RecordsMigrated != 3*80 || m.Totals.Failed != 0 {
		t.Fatalf("manifest after the resume: %s %+v", m.Status, m.Totals)
	}
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	dst := decryptAll(t, j.Target.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
	checkSameRecords(t, d, src, dst, true)
	// The ledger as it stands: the last attempt of each unit.
	checkLedger(t, j, map[string]int{"record/migrated": 3 * 80, "dek/migrated": 6})
	// Its history keeps the failed attempts too.
	rows, err := ledger.ReadHistory(context.Background(), j.Ledger, j.RunID)
	if err != nil {
		t.Fatal(err)
	}
	failedRows, migrated := 0, 0
	for _, r := range rows {
		if r.Source == victim && r.Unit == schemas.UnitFile && r.Status == schemas.StatusFailed {
			failedRows++
		}
		if r.Source == victim && r.Unit == schemas.UnitRecord && r.Status == schemas.StatusMigrated {
			migrated++
		}
	}
	if failedRows != 2 || migrated != 80 {
		t.Fatalf("ledger of the retried file: %d failed file rows (want 2, one per failed attempt), %d migrated records (want 80)", failedRows, migrated)
	}
}

// Issue 10 item 6: a full disk at the target stops the run as an I/O error
// (exit 1), not as failed records (exit 3); once there is room, --resume
// finishes it.
func TestTargetDiskFullIsFatal(t *testing.T) {
	bin := buildRekey(t)
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 6, 200, 6)
	j := d.job(schemas.ModeReencrypt, "full", env.KEK("target", "kek-aes"), "aes-gcm")
	mnt := filepath.Join(d.root, "small-disk")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", mnt).CombinedOutput(); err != nil {
		msg := fmt.Sprintf("cannot mount a small tmpfs to fill (%v: %s); run the tests as root", err, out)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", mnt).Run() })
	j.Target.Data = filepath.Join(mnt, "data")
	code, out := runCLI(t, bin, cliArgs(j)...)
	if code != 1 || !strings.Contains(out, "no space left on device") || !strings.Contains(out, "--resume") {
		t.Fatalf("run onto a full disk: exit %d, want 1 naming the cause and --resume:\n%s", code, out)
	}
	if out, err := exec.Command("mount", "-o", "remount,size=64m", mnt).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v %s", err, out)
	}
	if code, out := runCLI(t, bin, cliArgs(j, "--resume")...); code != 0 {
		t.Fatalf("resume with room: exit %d\n%s", code, out)
	}
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	dst := decryptAll(t, j.Target.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
	checkSameRecords(t, d, src, dst, true)
}

// readTargetDEKs maps each dek_id of a DEK table folder to its wrapped key.
func readTargetDEKs(t *testing.T, dir string) map[string]string {
	t.Helper()
	files, err := storage.List(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, f := range files {
		rows, err := parquet.ReadFile[schemas.DEKRow](filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			out[r.DEKID] = string(r.Wrapped)
		}
	}
	return out
}

// Issue 10 items 2 and 5 together: the source HSM returns wrong keys for a
// share of unwraps during a re-encrypt; those DEKs fail their proof, their
// records fail, the run exits 3; a --resume against a healthy HSM mints
// only the DEKs that failed (the ones already used by committed records
// stay), redoes the files with failed records, and exits 0 with every
// record readable.
func TestResumeAfterWrongUnwrapsKeepsMintedDEKs(t *testing.T) {
	bin := buildRekey(t)
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 3, 60, 30)
	j := d.job(schemas.ModeReencrypt, "heal", env.KEK("target", "kek-aes"), "aes-gcm")
	// Both keys go through copies of the fault module (the target's
	// disturbs nothing): SoftHSM cannot be initialized by two module
	// handles in one process in the order the CLI opens them otherwise.
	j.Target.KEK = fmt.Sprintf("pkcs11:token=target;object=kek-aes?module-path=%s&pin-source=env:REKEY_TARGET_PIN", faultpkcs11.ForTest(t, faultpkcs11.Config{}))
	healthy := j.Source.KEK
	j.Source.KEK = faultKEK(t, "kek-aes", faultpkcs11.Config{Calls: []string{"C_Decrypt"}, Mode: faultpkcs11.Corrupt, Rate: 0.2, Seed: 3})
	// The plan's cell samples see some of the wrong keys: predicted
	// failures, accepted here so the run meets the rest.
	code, out := runCLI(t, bin, cliArgs(j, "--max-failures", "100%")...)
	if code != 3 || !strings.Contains(out, "returned a wrong key") {
		t.Fatalf("run with a corrupting source HSM: exit %d, want 3 naming the wrong key:\n%s", code, out)
	}
	first := readTargetDEKs(t, j.Target.DEKs)
	if len(first) == 0 || len(first) == d.gen.NumDEKs {
		t.Fatalf("%d of %d DEKs minted in the faulty run; the test needs some to fail", len(first), d.gen.NumDEKs)
	}
	j.Source.KEK = healthy
	if code, out := runCLI(t, bin, cliArgs(j, "--resume")...); code != 0 {
		t.Fatalf("resume against a healthy HSM: exit %d\n%s", code, out)
	}
	after := readTargetDEKs(t, j.Target.DEKs)
	if len(after) != d.gen.NumDEKs {
		t.Fatalf("%d DEKs in the target after the resume, want %d", len(after), d.gen.NumDEKs)
	}
	for id, w := range first {
		if after[id] != w {
			t.Fatalf("DEK %q minted by the first attempt was replaced by the resume: records committed under it would be lost", id)
		}
	}
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	dst := decryptAll(t, j.Target.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
	checkSameRecords(t, d, src, dst, true)
	t.Logf("%d of %d DEKs failed their proof in the faulty run and were minted by the resume", d.gen.NumDEKs-len(first), d.gen.NumDEKs)
}

// Review finding on issue 10 item 2: a resume re-resolves the new DEKs by
// unwrapping them with the target custodian; a target that returns a
// wrong key without an error must not get cells sealed under it (the
// verify-before-commit would use the same wrong key). The new DEK's kcv
// from the target table catches it.
func TestResumeChecksNewDEKsAgainstTheirKCV(t *testing.T) {
	bin := buildRekey(t)
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 40, 4)
	j := d.job(schemas.ModeReencrypt, "newkcv", env.KEK("target", "kek-aes"), "aes-gcm")
	files, err := storage.List(context.Background(), d.gen.Data)
	if err != nil {
		t.Fatal(err)
	}
	// Not the first file: the preflight reads that one's footer.
	victim := filepath.Join(d.gen.Data, files[1])
	orig, _ := os.ReadFile(victim)
	if err := os.WriteFile(victim, orig[:len(orig)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out := runCLI(t, bin, cliArgs(j)...); code != 3 {
		t.Fatalf("first run: exit %d, want 3\n%s", code, out)
	}
	if err := os.WriteFile(victim, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	healthySource, healthyTarget := j.Source.KEK, j.Target.KEK
	// Every target unwrap after the preflight's round trip is corrupted.
	j.Source.KEK = faultKEK(t, "kek-aes", faultpkcs11.Config{})
	j.Target.KEK = fmt.Sprintf("pkcs11:token=target;object=kek-aes?module-path=%s&pin-source=env:REKEY_TARGET_PIN",
		faultpkcs11.ForTest(t, faultpkcs11.Config{Calls: []string{"C_Decrypt"}, Mode: faultpkcs11.Corrupt, Rate: 1, After: 1}))
	code, out := runCLI(t, bin, cliArgs(j, "--resume")...)
	if code != 3 || !strings.Contains(out, "key check value") {
		t.Fatalf("resume with a target returning wrong keys: exit %d, want 3 naming the key check value:\n%s", code, out)
	}
	j.Source.KEK, j.Target.KEK = healthySource, healthyTarget
	if code, out := runCLI(t, bin, cliArgs(j, "--resume")...); code != 0 {
		t.Fatalf("resume with a healthy target: exit %d\n%s", code, out)
	}
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	dst := decryptAll(t, j.Target.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
	checkSameRecords(t, d, src, dst, true)
}

// Issue 10 "Done when": the fault tests also run two concurrent runs on
// one run id: a source HSM failing a share of its calls (retried) under two
// `rekey run` processes started together. One works, the other is refused
// or finds the work done; the target is complete and right.
func TestConcurrentRunsUnderHSMFaults(t *testing.T) {
	bin := buildRekey(t)
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 3, 100, 20)
	j := d.job(schemas.ModeReencrypt, "faulty-twins", env.KEK("target", "kek-aes"), "aes-gcm")
	j.Source.KEK = faultKEK(t, "kek-aes", faultpkcs11.Config{Calls: []string{"C_Decrypt"}, Mode: faultpkcs11.Fail, Rate: 0.05, Seed: 7, After: 2})
	j.Target.KEK = fmt.Sprintf("pkcs11:token=target;object=kek-aes?module-path=%s&pin-source=env:REKEY_TARGET_PIN", faultpkcs11.ForTest(t, faultpkcs11.Config{}))
	codes := make(chan [2]string, 2)
	for i := 0; i < 2; i++ {
		go func() {
			cmd := exec.Command(bin, cliArgs(j)...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			codes <- [2]string{fmt.Sprint(exitCode(cmd.Run())), out.String()}
		}()
	}
	a, b := <-codes, <-codes
	ok := 0
	for _, r := range [][2]string{a, b} {
		switch {
		case r[0] == "0":
			ok++
		case r[0] == "4" && strings.Contains(r[1], "held by another run"):
		default:
			t.Fatalf("exit %s, want 0, or 4 naming the holder:\n%s", r[0], r[1])
		}
	}
	if ok == 0 {
		t.Fatalf("neither run finished:\n%s\n%s", a[1], b[1])
	}
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	dst := decryptAll(t, j.Target.Data, j.Target.DEKs, env.KEK("target", "kek-aes"), d.gen.Encrypted)
	checkSameRecords(t, d, src, dst, true)
}
