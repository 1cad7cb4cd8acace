package pipeline_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	beamlog "github.com/apache/beam/sdks/v2/go/pkg/beam/log"
	"github.com/parquet-go/parquet-go"

	"rekey/pipeline"
	"rekey/schemas"
)

// TestCanaryAESGCMNeverLeaks is the canary scan for the aes-gcm format with
// keys in a column: an application dataset whose every plaintext starts
// with a unique marker, under DEKs the test made, goes through plan, a
// rewrap of the key column, a reencrypt to rekey-v1 and a reencrypt that
// fails records. Every file written (targets, DEK tables, ledger parts,
// manifests) and everything printed meanwhile (stdout and stderr of the
// process, logs at debug level) is scanned for the marker, every raw DEK
// (source and target) and the PINs, in raw, hex and base64 form.
func TestCanaryAESGCMNeverLeaks(t *testing.T) {
	var m [12]byte
	_, _ = rand.Read(m[:])
	marker := "CANARY-" + hex.EncodeToString(m[:])
	opts := fgCases[0].opts
	app := fgWriteApp(t, opts, 32, 2, 25, 3, marker)
	ds := &appDataset{dir: app.dir, keyOpts: app.opts}
	work := t.TempDir()
	at := func(j *pipeline.Job, name string) *pipeline.Job {
		j.Ledger = filepath.Join(work, "ledger")
		j.Target.Data = filepath.Join(work, name, "data")
		if j.Target.DEKs != "" {
			j.Target.DEKs = filepath.Join(work, name, "deks")
		}
		return j
	}
	rw := at(foreignJob(t, schemas.ModeRewrap, "crw", ds, env.KEK("target", "kek-aes")), "rw")
	re := at(foreignJob(t, schemas.ModeReencrypt, "cre", ds, env.KEK("target", "kek-aes")), "re")
	bad := at(foreignJob(t, schemas.ModeReencrypt, "cbad", &appDataset{dir: fgCorrupt(t, app), keyOpts: app.opts}, env.KEK("target", "kek-aes")), "bad")

	var planFailed []string
	printed := captureOutput(t, func() {
		for _, j := range []*pipeline.Job{rw, re} {
			r := pipeline.Plan(context.Background(), j, true)
			for _, c := range r.Checks {
				fmt.Printf("plan %s: %s ok=%v %s\n", j.RunID, c.Name, c.OK, c.Info)
			}
			fmt.Printf("plan %s: %+v\n", j.RunID, *r)
			if r.Failed() {
				planFailed = append(planFailed, j.RunID)
			}
		}
		for _, j := range []*pipeline.Job{rw, re, bad} {
			m := runJob(t, j)
			fmt.Printf("run %s: %+v\n", j.RunID, *m)
		}
	})
	if len(planFailed) > 0 {
		t.Errorf("plan failed for %v:\n%s", planFailed, printed)
	}
	for _, j := range []*pipeline.Job{rw, re, bad} {
		m := readManifest(t, j)
		want := "succeeded"
		if j == bad {
			want = "completed_with_failures"
		}
		if m.Status != want {
			t.Fatalf("run %s: manifest %+v, want status %s", j.RunID, m, want)
		}
	}

	// Every raw DEK: the source's (the test made them) and the targets'.
	secrets := append([][]byte(nil), app.keys...)
	for _, dir := range []string{re.Target.DEKs, bad.Target.DEKs} {
		secrets = append(secrets, canaryTableDEKs(t, dir, env.KEK("target", "kek-aes"))...)
	}
	needles := canaryNeedles(t, marker, secrets)
	if len(printed) == 0 || !bytes.Contains(printed, []byte("plan cre")) {
		t.Fatal("no output captured")
	}
	canaryScan(t, needles, "what the runs printed", printed)
	files, kinds := canaryScanTree(t, needles, work)
	for _, k := range []string{"rw/.parquet", "re/.parquet", "bad/.parquet", "ledger/.parquet", "ledger/.json"} {
		if kinds[k] == 0 {
			t.Fatalf("no %s file scanned: %v", k, kinds)
		}
	}
	t.Logf("scanned %d files %v and %d bytes of output for %d needles", files, kinds, len(printed), len(needles))
	// The controls: the marker is in every plaintext, and the scan sees a
	// needle in a form it checks.
	for id, pt := range app.plain {
		if !strings.HasPrefix(pt, marker) {
			t.Fatalf("record %d: marker not in the plaintext", id)
		}
	}
	if !bytes.Contains([]byte("x"+base64.RawURLEncoding.EncodeToString(secrets[0])+"y"), canaryForms(secrets[0])[6]) {
		t.Fatal("scan control")
	}
}

// fgCorrupt copies the app's dataset with one cell's tag and one row's
// wrapped key damaged, so the run fails records and writes their errors.
func fgCorrupt(t *testing.T, app *fgApp) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bad")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for f := 0; f < app.files; f++ {
		name := fmt.Sprintf("part-%d.parquet", f)
		rows, err := parquet.ReadFile[appRow](filepath.Join(app.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if f == 0 {
			cell, _ := fgDecode(app.o.Encoding, []byte(rows[1].Email))
			cell[len(cell)-1] ^= 0x10
			rows[1].Email = string(fgEncode(app.o.Encoding, cell))
			blob, _ := fgDecode(app.o.KeyEncoding, []byte(rows[2].WrappedKey))
			blob[len(blob)-1] ^= 0x10
			rows[2].WrappedKey = string(fgEncode(app.o.KeyEncoding, blob))
		}
		if err := parquet.WriteFile(filepath.Join(dir, name), rows); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// captureOutput runs f with the process's stdout and stderr (file
// descriptors 1 and 2, so C libraries are caught too) sent to a file, and
// with slog and Beam logging everything, and returns what was written.
func captureOutput(t *testing.T, f func()) []byte {
	t.Helper()
	out, err := os.CreateTemp(t.TempDir(), "printed")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	var saved [3]int
	for _, fd := range []int{1, 2} {
		if saved[fd], err = syscall.Dup(fd); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Dup2(int(out.Fd()), fd); err != nil {
			t.Fatal(err)
		}
	}
	oldSlog := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})))
	beamlog.SetLogger(loudLogger{})
	func() {
		defer func() {
			beamlog.SetLogger(quietLogger{})
			slog.SetDefault(oldSlog)
			for _, fd := range []int{1, 2} {
				_ = syscall.Dup2(saved[fd], fd)
				_ = syscall.Close(saved[fd])
			}
		}()
		f()
	}()
	b, err := os.ReadFile(out.Name())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// loudLogger prints every Beam log line, whatever its severity.
type loudLogger struct{}

func (loudLogger) Log(_ context.Context, sev beamlog.Severity, _ int, msg string) {
	fmt.Fprintln(os.Stderr, sev, msg)
}
