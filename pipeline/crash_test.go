package pipeline_test

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"rekey/schemas"
)

// buildRekey compiles the CLI once per test binary.
func buildRekey(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(env.Dir, "rekey")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	out, err := exec.Command("go", "build", "-o", bin, "rekey/jobs/rekey").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// killableHSM is the SOFTHSM2_CONF setting of a rekey process the test
// may kill: a copy of the test's token store. SoftHSM2 rewrites a token
// file in place on a process's first login, and a process killed then
// leaves that token empty (README, limits); a real HSM outlives its
// clients, and so does the store the rest of the test uses.
func killableHSM(t *testing.T) string {
	t.Helper()
	conf, err := env.Copy(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return conf
}

// TestCrashAndResume starts real `rekey run` processes, SIGKILLs them at
// random moments, re-runs with --resume until one finishes, and then proves
// that every record is in the target exactly once and decrypts to its
// original plaintext, and that the ledger has exactly one row per record.
func TestCrashAndResume(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI and runs it several times")
	}
	bin := buildRekey(t)
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 24, 400, 9)
	j := d.job(schemas.ModeReencrypt, "crash", env.KEK("target", "kek-rsa"), "rsa-oaep-sha1")
	args := []string{"run", "--mode", j.Mode, "--run-id", j.RunID, "--source-data", j.Source.Data, "--source-deks", j.Source.DEKs,
		"--source-kek", j.Source.KEK, "--target-data", j.Target.Data, "--target-deks", j.Target.DEKs, "--target-kek", j.Target.KEK,
		"--target-wrap", j.Target.Wrap, "--ledger", j.Ledger, "--workers", "1", "--progress", "-1s"}

	// How long an uninterrupted run takes here, to spread the kills over it.
	probe := d.job(schemas.ModeReencrypt, "probe", env.KEK("target", "kek-rsa"), "rsa-oaep-sha1")
	start := time.Now()
	if out, err := exec.Command(bin, "run", "--mode", probe.Mode, "--run-id", probe.RunID, "--source-data", probe.Source.Data,
		"--source-deks", probe.Source.DEKs, "--source-kek", probe.Source.KEK, "--target-data", probe.Target.Data,
		"--target-deks", probe.Target.DEKs, "--target-kek", probe.Target.KEK, "--target-wrap", "rsa-oaep-sha1",
		"--ledger", probe.Ledger, "--workers", "1").CombinedOutput(); err != nil {
		t.Fatalf("probe run: %v\n%s", err, out)
	}
	full := time.Since(start)

	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("uninterrupted run: %v; kill seed %d", full, seed)
	kills := 0
	for attempt := 0; attempt < 20; attempt++ {
		a := args
		if attempt > 0 {
			a = append(append([]string{}, args...), "--resume")
		}
		cmd := exec.Command(bin, a...)
		cmd.Env = append(os.Environ(), killableHSM(t))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var err error
		if kills < 3 {
			// Resumed attempts have less left to do: aim the kills early.
			delay := 20*time.Millisecond + time.Duration(rng.Int64N(int64(full)/2))
			select {
			case err = <-done:
			case <-time.After(delay):
				_ = cmd.Process.Signal(syscall.SIGKILL)
				<-done
				kills++
				t.Logf("attempt %d: killed after %v", attempt, delay)
				continue
			}
		} else {
			// A twin started on the same run id at the same moment (issue
			// 10 item 1): it is refused while the other holds the run, or
			// finds everything done; either way the result below is right.
			twin := exec.Command(bin, a...)
			var tout bytes.Buffer
			twin.Stdout, twin.Stderr = &tout, &tout
			tc := exitCode(twin.Run())
			if tc != 0 && tc != 4 || tc == 4 && !strings.Contains(tout.String(), "held by another run") {
				t.Fatalf("twin run: exit %d, want 0 or 4 (refused, naming the holder):\n%s", tc, tout.String())
			}
			err = <-done
			mc := exitCode(err)
			t.Logf("twin run exit %d, its sibling exit %d", tc, mc)
			if mc == 4 && tc == 0 && strings.Contains(out.String(), "held by another run") {
				err = nil // the twin took the run and finished it
			}
		}
		if err != nil {
			t.Fatalf("attempt %d: %v\n%s", attempt, err, out.String())
		}
		break
	}
	m := readManifest(t, j)
	if m.Status != "succeeded" || m.Totals.RecordsMigrated != 24*400 || m.Totals.DEKsMigrated != 9 {
		t.Fatalf("final manifest %s %+v", m.Status, m.Totals)
	}
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	dst := decryptAll(t, j.Target.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
	checkSameRecords(t, d, src, dst, true)
	checkLedger(t, j, map[string]int{"record/migrated": 24 * 400, "dek/migrated": 9})
	// Only hidden temporaries of killed attempts may remain beside the output.
	_ = filepath.WalkDir(filepath.Join(d.root, "crash"), func(p string, de os.DirEntry, err error) error {
		if err == nil && !de.IsDir() && !strings.HasSuffix(p, ".parquet") {
			// Hidden temporaries, and rekey's own leases and manifests.
			if !strings.HasPrefix(de.Name(), ".") && !strings.HasPrefix(de.Name(), "_") {
				t.Errorf("unexpected file %s", p)
			}
		}
		return nil
	})
	// And rekey verify agrees, from a fresh process.
	out, err := exec.Command(bin, "verify", "--run-id", j.RunID, "--ledger", j.Ledger, "--data", j.Target.Data,
		"--deks", j.Target.DEKs, "--kek", j.Target.KEK).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "counts match") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
}
