package pipeline_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	"rekey/pipeline"
	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms/ledger"
)

// appKeysText is a DEK table as an application keeps it: its own column
// names, the wrapped key as base64 text, and columns of its own that a
// rewrap must keep.
type appKeysText struct {
	KeyID        string `parquet:"key_id"`
	Tenant       string `parquet:"tenant"`
	EncryptedKey string `parquet:"encrypted_key"`
	CreatedAt    int64  `parquet:"created_at"`
}

// appKeysRaw is another application's: raw wrapped keys under other names.
type appKeysRaw struct {
	Name   string `parquet:"name"`
	Blob   []byte `parquet:"blob"`
	Active bool   `parquet:"active"`
}

// TestAESGCMKeysInAnApplicationTable (issue 11: a DEK table with
// configurable column names and blob encoding): Go application code seals
// cells under three DEKs it keeps in a DEK table of its own layout. Two
// layouts: base64 text under key_id/encrypted_key with the wrapped keys
// bound to nothing (binding: none, what an application calling a KMS's
// Encrypt without context writes), and raw bytes under name/blob bound to
// the dek_id. For each: the plan reads the table and opens sample cells; a
// rewrap writes the table back in the application's layout, with every
// other column as it was and only the wrapped keys replaced (the records
// stay byte for byte; the application reads its new table with its own
// struct, unwraps with the target and opens its cells); a reencrypt into
// rekey-v1, and one into aes-gcm with the same application table layout
// that the application reads back. All verify.
func TestAESGCMKeysInAnApplicationTable(t *testing.T) {
	for _, text := range []bool{true, false} {
		t.Run(map[bool]string{true: "base64-unbound", false: "raw-bound"}[text], func(t *testing.T) { testAppTable(t, text) })
	}
}

func testAppTable(t *testing.T, text bool) {
	ctx := context.Background()
	kek, err := keys.Open(ctx, env.KEK("source", "kek-aes"), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	data, deks := filepath.Join(root, "app"), filepath.Join(root, "app-deks")
	for _, d := range []string{data, deks} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := map[string]string{"aad": "{id}", "binding": "none", "table_id_column": "key_id", "table_key_column": "encrypted_key", "table_key_encoding": "base64"}
	bind := func(string) keys.Binding { return keys.Binding{} }
	if !text {
		opts = map[string]string{"aad": "{id}", "table_id_column": "name", "table_key_column": "blob"}
		bind = keys.ByID
	}
	raws := map[string][]byte{}
	var textRows []appKeysText
	var rawRows []appKeysRaw
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("app-key-%d", i)
		raw := make([]byte, 32)
		_, _ = rand.Read(raw)
		d, _ := keys.NewDEK(raw)
		w, err := kek.Wrap(ctx, bind(id), d)
		if err != nil {
			t.Fatal(err)
		}
		raws[id] = raw
		textRows = append(textRows, appKeysText{KeyID: id, Tenant: fmt.Sprintf("tenant-%d", i), EncryptedKey: base64.StdEncoding.EncodeToString(w), CreatedAt: int64(1700000000 + i)})
		rawRows = append(rawRows, appKeysRaw{Name: id, Blob: w, Active: i != 1})
	}
	if text {
		err = parquet.WriteFile(filepath.Join(deks, "keys.parquet"), textRows)
	} else {
		err = parquet.WriteFile(filepath.Join(deks, "keys.parquet"), rawRows)
	}
	if err != nil {
		t.Fatal(err)
	}
	plain := map[int64]string{}
	id := int64(0)
	for f := 0; f < 2; f++ {
		var rows []tableAppRow
		for i := 0; i < 30; i++ {
			id++
			k, aad := fmt.Sprintf("app-key-%d", id%3), fmt.Sprint(id)
			plain[id] = fmt.Sprintf("user%d@example.com", id)
			cell := goApp{}.encrypt(raws[k], &aad, []byte(plain[id]))
			rows = append(rows, tableAppRow{ID: id, DEKID: k, Email: &cell})
		}
		if err := parquet.WriteFile(filepath.Join(data, fmt.Sprintf("part-%d.parquet", f)), rows); err != nil {
			t.Fatal(err)
		}
	}
	before := hashFiles(t, data)
	beforeDEKs := hashFiles(t, deks)

	// readTable reads a DEK table file the application's way, and the keys
	// its wrapped keys unwrap to under k.
	readTable := func(t *testing.T, path string, k keys.KEK) map[string][]byte {
		t.Helper()
		got := map[string][]byte{}
		unwrap := func(id string, w []byte) {
			d, err := k.Unwrap(ctx, bind(id), k.Mechanism(), w)
			if err != nil {
				t.Fatalf("%s: DEK %s does not unwrap with %s: %v", path, id, k.URI(), err)
			}
			got[id] = bytes.Clone(d.Bytes())
			d.Zero()
		}
		if text {
			rows, err := parquet.ReadFile[appKeysText](path)
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range rows {
				w, err := base64.StdEncoding.DecodeString(r.EncryptedKey)
				if err != nil {
					t.Fatalf("%s: key %s is not base64: %v", path, r.KeyID, err)
				}
				if i < len(textRows) && r.KeyID == textRows[i].KeyID && (r.Tenant != textRows[i].Tenant || r.CreatedAt != textRows[i].CreatedAt) {
					t.Fatalf("%s: the application's columns changed: %+v, was %+v", path, r, textRows[i])
				}
				unwrap(r.KeyID, w)
			}
		} else {
			rows, err := parquet.ReadFile[appKeysRaw](path)
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range rows {
				if i < len(rawRows) && r.Name == rawRows[i].Name && r.Active != rawRows[i].Active {
					t.Fatalf("%s: the application's columns changed: %+v", path, r)
				}
				unwrap(r.Name, r.Blob)
			}
		}
		return got
	}
	// readRecords opens every cell of dir's record files with the keys.
	readRecords := func(t *testing.T, dir string, got map[string][]byte, b64 bool) {
		t.Helper()
		n := 0
		for f := 0; f < 2; f++ {
			rows, err := parquet.ReadFile[tableAppRow](filepath.Join(dir, fmt.Sprintf("part-%d.parquet", f)))
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				aad, cell := fmt.Sprint(r.ID), *r.Email
				if b64 {
					c, err := base64.StdEncoding.DecodeString(cell)
					if err != nil {
						t.Fatalf("record %d: the cell is not base64: %v", r.ID, err)
					}
					cell = string(c)
				}
				pt, err := goApp{}.decrypt(got[r.DEKID], &aad, cell)
				if err != nil || string(pt) != plain[r.ID] {
					t.Fatalf("record %d with the target-unwrapped DEK %s: %q, %v", r.ID, r.DEKID, pt, err)
				}
				n++
			}
		}
		if n != 60 {
			t.Fatalf("%d records read back, want 60", n)
		}
	}

	for _, tc := range []struct {
		name, mode string
		into       map[string]string // reencrypt: target.format aes-gcm with these options (nil: rekey-v1)
	}{
		{"rewrap", schemas.ModeRewrap, nil},
		{"reencrypt-to-rekey-v1", schemas.ModeReencrypt, nil},
		{"reencrypt-to-aes-gcm", schemas.ModeReencrypt, opts},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			j := &pipeline.Job{Mode: tc.mode, RunID: "apptable-" + tc.name,
				Source: pipeline.Side{Data: data, DEKs: deks, KEK: env.KEK("source", "kek-aes"), Format: "aes-gcm", FormatOptions: opts},
				Target: pipeline.Side{DEKs: filepath.Join(out, "deks"), KEK: env.KEK("target", "kek-aes")},
				Ledger: filepath.Join(out, "ledger"), Columns: pipeline.Columns{Encrypted: []string{"email"}}, Workers: 2}
			if tc.mode == schemas.ModeReencrypt {
				j.Target.Data = filepath.Join(out, "data")
			}
			if tc.into != nil {
				j.Target.Format, j.Target.FormatOptions = "aes-gcm", tc.into
			}
			j.Defaults()
			if err := j.Validate(); err != nil {
				t.Fatal(err)
			}
			r := pipeline.Plan(ctx, j, true)
			if r.Failed() || r.DEKs != 3 {
				t.Fatalf("plan: %d DEKs, %+v", r.DEKs, r.Checks)
			}
			for _, c := range r.Checks {
				if c.Warn {
					t.Fatalf("plan warns: %+v", c)
				}
			}
			m := runJob(t, j)
			if m.Status != "succeeded" || m.Totals.Failed != 0 || m.Totals.DEKsMigrated != 3 {
				t.Fatalf("manifest %s %+v", m.Status, m.Totals)
			}
			checkSourceUnchanged(t, data, before)
			checkSourceUnchanged(t, deks, beforeDEKs)
			spec := j.VerifySpec("")
			spec.SourceDEKs, spec.Match = deks, tc.mode
			if tc.mode == schemas.ModeRewrap {
				spec.TargetData, spec.SourceData = data, data // the records stay where they are
			} else {
				spec.SourceData = data
			}
			if rep := runVerify(t, spec); !rep.OK || rep.Totals.Records != 60 || rep.Totals.DEKs != 3 {
				t.Fatalf("verify: %+v", rep)
			}
			dst, err := keys.Open(ctx, j.Target.KEK, keys.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if tc.mode == schemas.ModeRewrap {
				// No kcv in an application's table: each DEK is proven
				// by opening a cell of the records before it is wrapped.
				led, err := ledger.Read(ctx, j.Ledger, j.RunID)
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range led {
					if l.Unit == schemas.UnitDEK && l.Proof != schemas.ProofCell {
						t.Fatalf("DEK %s: proof %q, want a cell", l.DEKID, l.Proof)
					}
				}
			}
			switch {
			case tc.mode == schemas.ModeRewrap:
				// The application's table, in its layout, file for file.
				got := readTable(t, filepath.Join(j.Target.DEKs, "keys.parquet"), dst)
				if len(got) != 3 {
					t.Fatalf("target DEK table: %d DEKs", len(got))
				}
				for id, k := range got {
					if !bytes.Equal(k, raws[id]) {
						t.Fatalf("DEK %s: the target unwraps another key", id)
					}
				}
				readRecords(t, data, got, false)
			case tc.into != nil:
				files, _ := filepath.Glob(filepath.Join(j.Target.DEKs, "*.parquet"))
				got := map[string][]byte{}
				for _, f := range files {
					for id, k := range readTable(t, f, dst) {
						got[id] = k
					}
				}
				if len(got) != 3 {
					t.Fatalf("target DEK table: %d DEKs in %v", len(got), files)
				}
				readRecords(t, j.Target.Data, got, false)
			}
		})
	}

	// Bad input: a wrapped key that is not in the table's encoding, and
	// one that is not the source KEK's. Each is a failed ledger row naming
	// the dek_id and the cause; the others migrate; the source stays.
	// (The text table: it has an encoding to get wrong.)
	if !text {
		return
	}
	t.Run("bad-rows", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "deks")
		if err := os.MkdirAll(bad, 0o755); err != nil {
			t.Fatal(err)
		}
		rows := append([]appKeysText{}, textRows...)
		rows = append(rows, appKeysText{KeyID: "app-key-not-base64", EncryptedKey: "%%%not base64"},
			appKeysText{KeyID: "app-key-garbage", EncryptedKey: base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 60))})
		if err := parquet.WriteFile(filepath.Join(bad, "keys.parquet"), rows); err != nil {
			t.Fatal(err)
		}
		badBefore := hashFiles(t, bad)
		out := t.TempDir()
		j := &pipeline.Job{Mode: schemas.ModeRewrap, RunID: "apptable-bad",
			Source: pipeline.Side{DEKs: bad, KEK: env.KEK("source", "kek-aes"), Format: "aes-gcm", FormatOptions: opts},
			Target: pipeline.Side{DEKs: filepath.Join(out, "deks"), KEK: env.KEK("target", "kek-aes")},
			Ledger: filepath.Join(out, "ledger"), Columns: pipeline.Columns{Encrypted: []string{"email"}}, Workers: 2}
		j.Defaults()
		if err := j.Validate(); err != nil {
			t.Fatal(err)
		}
		j.MaxFailures = "2"
		r := pipeline.Plan(ctx, j, false)
		warned := false
		for _, c := range r.Checks {
			warned = warned || c.Name == "DEK rows" && strings.Contains(c.Info, `column "encrypted_key" is not in the configured table_key_encoding base64`)
		}
		if !warned || r.DEKs != 5 || r.Failed() {
			t.Fatalf("plan does not name the malformed row's cause: %d DEKs, %+v", r.DEKs, r.Checks)
		}
		m := runJob(t, j)
		if m.Totals.DEKsMigrated != 3 || m.Totals.DEKsFailed != 2 {
			t.Fatalf("manifest %s %+v", m.Status, m.Totals)
		}
		led, err := ledger.Read(ctx, j.Ledger, j.RunID)
		if err != nil {
			t.Fatal(err)
		}
		failed := map[string]string{}
		for _, l := range led {
			if l.Status == schemas.StatusFailed {
				failed[l.DEKID] = l.Error
			}
		}
		if e := failed["app-key-not-base64"]; !strings.Contains(e, `column "encrypted_key"`) || !strings.Contains(e, "table_key_encoding base64") {
			t.Fatalf("the undecodable key's ledger row: %q", e)
		}
		if e := failed["app-key-garbage"]; e == "" {
			t.Fatalf("the garbage key did not fail: %v", failed)
		}
		checkSourceUnchanged(t, bad, badBefore)
		got := readTable(t, filepath.Join(j.Target.DEKs, "keys.parquet"), mustOpen(t, j.Target.KEK))
		if len(got) != 3 {
			t.Fatalf("the target table holds %d DEKs, want the 3 good ones", len(got))
		}
	})
}
