package pipeline_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"rekey/providers/keys"
	"rekey/transforms"
)

// TestCanaryNeverLeaks runs every mode (and a failing run) as real rekey
// processes on a dataset whose every plaintext starts with a unique marker,
// then scans everything rekey wrote (targets, DEK tables, ledgers,
// manifests, reports, temporaries) and everything it printed for the
// marker, for every raw DEK (source and target) and for the PINs, in raw,
// hex and base64 form.
func TestCanaryNeverLeaks(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI")
	}
	bin := buildRekey(t)
	var m [12]byte
	_, _ = rand.Read(m[:])
	marker := "CANARY-" + hex.EncodeToString(m[:])
	d := genDatasetMarked(t, marker)
	work := filepath.Join(d.root, "out")
	var printed bytes.Buffer
	run := func(wantCode int, args ...string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = &printed, &printed
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != wantCode {
			t.Fatalf("rekey %s: exit %d, want %d\n%s", strings.Join(args, " "), code, wantCode, printed.String())
		}
	}
	src := []string{"--source-data", d.gen.Data, "--source-deks", d.gen.DEKs, "--source-kek", d.gen.KEK, "--ledger", filepath.Join(work, "ledger"), "--progress", "1ms"}
	re := append([]string{"--mode", "reencrypt", "--run-id", "re", "--target-data", filepath.Join(work, "re", "data"),
		"--target-deks", filepath.Join(work, "re", "deks"), "--target-kek", env.KEK("target", "kek-aes"), "--target-wrap", "aes-kwp"}, src...)
	run(0, append([]string{"plan"}, re...)...)
	run(0, append([]string{"run", "--verbose"}, re...)...)
	run(0, "verify", "--run-id", "re", "--ledger", filepath.Join(work, "ledger"), "--data", filepath.Join(work, "re", "data"),
		"--deks", filepath.Join(work, "re", "deks"), "--kek", env.KEK("target", "kek-aes"), "--verbose")
	rw := append([]string{"--mode", "rewrap", "--run-id", "rw", "--target-deks", filepath.Join(work, "rw", "deks"),
		"--target-kek", env.KEK("target", "kek-rsa"), "--target-wrap", "rsa-oaep-sha1"}, src...)
	run(0, append([]string{"run"}, rw...)...)
	// A failing run: corrupt cells, so errors are printed and written.
	rewriteRecords(t, filepath.Join(d.gen.Data, "part-00001.parquet"), func(r []transforms.GenRow) []transforms.GenRow {
		for i := range r {
			r[i].Payload[len(r[i].Payload)-1] ^= 0xff
		}
		return r
	})
	bad := append([]string{"--mode", "reencrypt", "--run-id", "bad", "--target-data", filepath.Join(work, "bad", "data"),
		"--target-deks", filepath.Join(work, "bad", "deks"), "--target-kek", env.KEK("target", "kek-aes"), "--max-failures", "100%"}, src...)
	run(3, append([]string{"run"}, bad...)...)
	run(3, "verify", "--data", d.gen.Data, "--deks", d.gen.DEKs, "--kek", env.KEK("target", "kek-aes"), "--report", filepath.Join(work, "v.json"))

	// Every raw DEK of every table.
	ctx := context.Background()
	var secrets [][]byte
	for _, tbl := range []struct{ deks, kek string }{
		{d.gen.DEKs, d.gen.KEK}, {filepath.Join(work, "re", "deks"), env.KEK("target", "kek-aes")},
		{filepath.Join(work, "rw", "deks"), env.KEK("target", "kek-rsa")}, {filepath.Join(work, "bad", "deks"), env.KEK("target", "kek-aes")},
	} {
		k, err := keys.Open(ctx, tbl.kek, keys.Options{})
		if err != nil {
			t.Fatal(err)
		}
		rows, err := transforms.ReadDEKTable(ctx, tbl.deks)
		if err != nil || len(rows) == 0 {
			t.Fatalf("%s: %v", tbl.deks, err)
		}
		for _, r := range rows {
			dek, err := k.Unwrap(ctx, keys.ByID(r.DEKID), r.Wrap, r.Wrapped)
			if err != nil {
				t.Fatal(err)
			}
			secrets = append(secrets, bytes.Clone(dek.Bytes()))
			dek.Zero()
		}
	}
	needles := map[string][]byte{"marker": []byte(marker), "source PIN": []byte(os.Getenv("REKEY_SOURCE_PIN")), "target PIN": []byte(os.Getenv("REKEY_TARGET_PIN"))}
	for i, s := range secrets {
		needles["DEK "+string(rune('A'+i%26))+hex.EncodeToString(s[:2])] = s
	}
	forms := func(b []byte) [][]byte {
		return [][]byte{b, []byte(hex.EncodeToString(b)), []byte(strings.ToUpper(hex.EncodeToString(b))), []byte(base64.StdEncoding.EncodeToString(b)), []byte(base64.RawURLEncoding.EncodeToString(b))}
	}
	scan := func(what string, b []byte) {
		for name, n := range needles {
			for _, f := range forms(n) {
				if len(f) > 0 && bytes.Contains(b, f) {
					t.Errorf("%s found in %s", name, what)
				}
			}
		}
	}
	if !strings.Contains(printed.String(), "rekey run") {
		t.Fatal("no output captured")
	}
	scan("rekey's output", printed.Bytes())
	files := 0
	_ = filepath.WalkDir(work, func(p string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files++
		scan(p, b)
		return nil
	})
	if files < 10 {
		t.Fatalf("only %d files scanned", files)
	}
	// The control: the marker really is in the source plaintext, so the
	// scan would have seen it had it leaked.
	if !bytes.HasPrefix(transforms.GenPlaintext(&d.gen, "payload", 7), []byte(marker)) {
		t.Fatal("marker not in the plaintext")
	}
}

func genDatasetMarked(t *testing.T, marker string) *dataset {
	t.Helper()
	old := genMarker
	genMarker = marker
	defer func() { genMarker = old }()
	return genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 3, 50, 4, "payload", "note")
}
