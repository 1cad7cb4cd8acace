package pipeline_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/parquet-go/parquet-go"
	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/tink"

	"rekey/pipeline"
	"rekey/schemas"
)

// TestCanaryTinkNeverLeaks is the canary scan for tink-envelope cells
// (issue 11: every format): a dataset Tink's KMS envelope AEAD wrote, every
// plaintext starting with a unique marker, goes through plan, a rewrap, a
// reencrypt into tink-envelope, a reencrypt into rekey-v1 and a reencrypt
// that fails records (one cell damaged). Every file written (targets, DEK
// tables, ledger parts, manifests) and everything printed meanwhile
// (stdout and stderr, logs at debug level) is scanned for the marker, every
// DEK (each source cell's, each target cell's, the rekey-v1 table's) and
// the PINs, in raw, hex and base64 form.
func TestCanaryTinkNeverLeaks(t *testing.T) {
	var m [12]byte
	_, _ = rand.Read(m[:])
	marker := "CANARY-" + hex.EncodeToString(m[:])
	oldKEK := newP11AEAD(t, "source", "src-pin-1234", "kek-aes")
	newKEK := newP11AEAD(t, "target", "dst-pin-5678", "kek-aes")
	env4 := aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), oldKEK)
	work := t.TempDir()
	src := filepath.Join(work, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	plain := map[int64]string{}
	id := int64(0)
	for f := 0; f < 2; f++ {
		var rows []tinkRow
		for i := 0; i < 20; i++ {
			id++
			r := tinkRow{ID: id, Tenant: fmt.Sprintf("tenant-%d", id%3)}
			plain[id] = fmt.Sprintf("%s user%d@example.com", marker, id)
			ct, err := env4.Encrypt([]byte(plain[id]), []byte(r.Tenant))
			if err != nil {
				t.Fatal(err)
			}
			r.Email = ct
			rows = append(rows, r)
		}
		if err := parquet.WriteFile(filepath.Join(src, fmt.Sprintf("part-%d.parquet", f)), rows); err != nil {
			t.Fatal(err)
		}
	}
	// The same data with one cell's payload damaged.
	badSrc := filepath.Join(work, "badsrc")
	if err := os.MkdirAll(badSrc, 0o755); err != nil {
		t.Fatal(err)
	}
	for f := 0; f < 2; f++ {
		name := fmt.Sprintf("part-%d.parquet", f)
		rows, err := parquet.ReadFile[tinkRow](filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		if f == 0 {
			rows[3].Email = bytes.Clone(rows[3].Email)
			rows[3].Email[len(rows[3].Email)-1] ^= 0x10
		}
		if err := parquet.WriteFile(filepath.Join(badSrc, name), rows); err != nil {
			t.Fatal(err)
		}
	}

	opts := map[string]string{"aad": "{tenant}"}
	job := func(mode, name, data string, into string) *pipeline.Job {
		j := &pipeline.Job{Mode: mode, RunID: "canary-tink-" + name,
			Source: pipeline.Side{Data: data, KEK: env.KEK("source", "kek-aes"), Format: "tink-envelope", FormatOptions: opts},
			Target: pipeline.Side{KEK: env.KEK("target", "kek-aes"), Data: filepath.Join(work, name, "data")},
			Ledger: filepath.Join(work, "ledger"), Columns: pipeline.Columns{Encrypted: []string{"email"}}, Workers: 2}
		switch into {
		case "tink-envelope":
			j.Target.Format, j.Target.FormatOptions = "tink-envelope", opts
		case "rekey-v1":
			j.Target.DEKs = filepath.Join(work, name, "deks")
		}
		j.Defaults()
		if err := j.Validate(); err != nil {
			t.Fatal(err)
		}
		return j
	}
	rw := job(schemas.ModeRewrap, "rw", src, "")
	re := job(schemas.ModeReencrypt, "re", src, "tink-envelope")
	v1 := job(schemas.ModeReencrypt, "v1", src, "rekey-v1")
	bad := job(schemas.ModeReencrypt, "bad", badSrc, "tink-envelope")
	bad.MaxFailures = "1"

	var planFailed []string
	printed := captureOutput(t, func() {
		for _, j := range []*pipeline.Job{rw, re, v1} {
			r := pipeline.Plan(context.Background(), j, true)
			for _, c := range r.Checks {
				fmt.Printf("plan %s: %s ok=%v %s\n", j.RunID, c.Name, c.OK, c.Info)
			}
			fmt.Printf("plan %s: %+v\n", j.RunID, *r)
			if r.Failed() {
				planFailed = append(planFailed, j.RunID)
			}
		}
		for _, j := range []*pipeline.Job{rw, re, v1, bad} {
			m := runJob(t, j)
			fmt.Printf("run %s: %+v\n", j.RunID, *m)
		}
	})
	if len(planFailed) > 0 {
		t.Errorf("plan failed for %v:\n%s", planFailed, printed)
	}
	for _, j := range []*pipeline.Job{rw, re, v1, bad} {
		m := readManifest(t, j)
		want := "succeeded"
		if j == bad {
			want = "completed_with_failures"
		}
		if m.Status != want || j != bad && m.Totals.RecordsMigrated != 40 || j == bad && m.Totals.RecordsFailed != 1 {
			t.Fatalf("run %s: manifest %s %+v, want status %s", j.RunID, m.Status, m.Totals, want)
		}
	}

	// Every DEK: each cell's (source and Tink targets), unwrapped by its
	// remote AEAD, and the rekey-v1 table's.
	var secrets [][]byte
	cellDEKs := func(dir string, kek tink.AEAD) {
		files, _ := filepath.Glob(filepath.Join(dir, "*.parquet"))
		n := 0
		for _, f := range files {
			rows, err := parquet.ReadFile[tinkRow](f)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				if r.Email == nil {
					continue
				}
				secrets = append(secrets, tinkCellKey(t, r.Email, kek))
				n++
			}
		}
		if n == 0 {
			t.Fatalf("%s: no cells", dir)
		}
	}
	cellDEKs(src, oldKEK)
	cellDEKs(rw.Target.Data, newKEK)
	cellDEKs(re.Target.Data, newKEK)
	cellDEKs(bad.Target.Data, newKEK)
	rows := canaryTableDEKs(t, v1.Target.DEKs, env.KEK("target", "kek-aes"))
	if len(rows) != 2 {
		t.Fatalf("%s: %d DEKs, want one per file", v1.Target.DEKs, len(rows))
	}
	secrets = append(secrets, rows...)

	needles := canaryNeedles(t, marker, secrets)
	if len(printed) == 0 || !bytes.Contains(printed, []byte("plan canary-tink-v1")) {
		t.Fatal("no output captured")
	}
	canaryScan(t, needles, "what the runs printed", printed)
	// The application's input (src, badsrc) holds its own ciphertexts.
	files, kinds := canaryScanTree(t, needles, work, "src", "badsrc")
	for _, k := range []string{"rw/.parquet", "re/.parquet", "v1/.parquet", "bad/.parquet", "ledger/.parquet", "ledger/.json"} {
		if kinds[k] == 0 {
			t.Fatalf("no %s file scanned: %v", k, kinds)
		}
	}
	t.Logf("scanned %d files %v and %d bytes of output for %d needles", files, kinds, len(printed), len(needles))
	// The controls: every DEK is 32 bytes; one per source cell, the
	// rewrap keeps them (the same DEK wrapped anew), each reencrypt makes
	// its own (40 and 39 cells), and rekey-v1 one per file; and the scan
	// sees a needle in a form it checks.
	seen := map[string]bool{}
	for _, s := range secrets {
		if len(s) != 32 {
			t.Fatalf("DEK of %d bytes", len(s))
		}
		seen[string(s)] = true
	}
	if len(seen) != 40+40+39+2 {
		t.Fatalf("%d distinct DEKs, want 121", len(seen))
	}
	if !bytes.Contains([]byte("x"+base64.RawURLEncoding.EncodeToString(secrets[0])+"y"), canaryForms(secrets[0])[6]) {
		t.Fatal("scan control")
	}
}

// tinkCellKey is the AES key of a raw tink-envelope cell: its wrapped DEK
// (after the 4-byte length) decrypted by kek, the serialized AesGcmKey's
// key_value (field 3).
func tinkCellKey(t *testing.T, cell []byte, kek tink.AEAD) []byte {
	t.Helper()
	n := int(binary.BigEndian.Uint32(cell))
	ser, err := kek.Decrypt(cell[4:4+n], nil)
	if err != nil {
		t.Fatalf("unwrap a cell's DEK: %v", err)
	}
	if len(ser) >= 2 && ser[0] == 0x08 {
		ser = ser[2:] // version 0
	}
	if len(ser) < 2 || ser[0] != 0x1a || int(ser[1]) != len(ser)-2 {
		t.Fatalf("not a serialized AesGcmKey: %x", ser[:min(len(ser), 4)])
	}
	return ser[2:]
}
