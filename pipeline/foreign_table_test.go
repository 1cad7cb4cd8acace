package pipeline_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"rekey/pipeline"
	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
)

// tableAppRow is a record file whose cells an application sealed under
// DEKs it keeps in a DEK table, naming each record's DEK in a column.
type tableAppRow struct {
	ID    int64   `parquet:"id"`
	DEKID string  `parquet:"dek_id"`
	Email *string `parquet:"email,optional"`
	// EmailTag holds the cell's tag when the application keeps it apart
	// (base64; empty otherwise), null where the cell is.
	EmailTag *string `parquet:"email_tag,optional"`
}

// TestAESGCMKeysInATable (issue 11: the DEK in a DEK table): cells sealed
// by Go application code (gcm.Seal(nonce, nonce, pt, id), raw bytes) under
// three AES-256 DEKs kept in a DEK table in rekey's layout, each wrapped by
// the source KEK bound to its dek_id. The plan opens sample cells; a rewrap
// rewrites only the DEK table (the record files stay byte for byte, and
// the application opens them with the keys the target unwraps); a
// reencrypt converts them to rekey-v1. Both verify.
//
// The same with the tag in its own column (tag_column): the cell holds
// base64(nonce‖ciphertext), the column base64(tag).
func TestAESGCMKeysInATable(t *testing.T) {
	for _, tagCol := range []bool{false, true} {
		t.Run(map[bool]string{false: "tag-in-cell", true: "tag-column"}[tagCol], func(t *testing.T) { testAESGCMKeysInATable(t, tagCol) })
	}
}

func testAESGCMKeysInATable(t *testing.T, tagCol bool) {
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
	raws := map[string][]byte{}
	var table []schemas.DEKRow
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("app-key-%d", i)
		raw := make([]byte, 32)
		_, _ = rand.Read(raw)
		d, _ := keys.NewDEK(raw)
		w, err := kek.Wrap(ctx, keys.ByID(id), d)
		if err != nil {
			t.Fatal(err)
		}
		raws[id] = raw
		table = append(table, schemas.DEKRow{DEKID: id, KEK: kek.URI(), Wrap: kek.Mechanism(), Wrapped: w, Created: time.Now().UTC()})
	}
	if err := parquet.WriteFile(filepath.Join(deks, "part-0.parquet"), table); err != nil {
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
			r := tableAppRow{ID: id, DEKID: k, Email: &cell}
			if tagCol {
				sealed := []byte(cell)
				ct, tag := base64.StdEncoding.EncodeToString(sealed[:len(sealed)-16]), base64.StdEncoding.EncodeToString(sealed[len(sealed)-16:])
				r.Email, r.EmailTag = &ct, &tag
			}
			if id == 7 {
				// No email for this record: a null cell (and a null tag).
				r.Email, r.EmailTag = nil, nil
				delete(plain, id)
			}
			rows = append(rows, r)
		}
		if err := parquet.WriteFile(filepath.Join(data, fmt.Sprintf("part-%d.parquet", f)), rows); err != nil {
			t.Fatal(err)
		}
	}
	before := hashFiles(t, data)
	srcOpts := map[string]string{"aad": "{id}"}
	if tagCol {
		srcOpts = map[string]string{"aad": "{id}", "encoding": "base64", "tag_column": "email_tag"}
	}

	cases := []struct {
		name, mode string
		into       map[string]string // reencrypt: target.format aes-gcm with these options (nil: rekey-v1)
	}{
		{"rewrap", schemas.ModeRewrap, nil},
		{"reencrypt-to-rekey-v1", schemas.ModeReencrypt, nil},
		// Into aes-gcm, base64 text this time: the application reads the
		// result with its own code.
		{"reencrypt-to-aes-gcm", schemas.ModeReencrypt, map[string]string{"aad": "{id}", "encoding": "base64"}},
	}
	if tagCol {
		// Fresh DEKs in the application's own layout: each new tag
		// written into email_tag, the cell without it.
		cases = append(cases, struct {
			name, mode string
			into       map[string]string
		}{"reencrypt-to-aes-gcm-tag-column", schemas.ModeReencrypt, srcOpts})
	}
	for _, tc := range cases {
		mode := tc.mode
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			j := &pipeline.Job{Mode: mode, RunID: "table-" + tc.name,
				Source: pipeline.Side{Data: data, DEKs: deks, KEK: env.KEK("source", "kek-aes"), Format: "aes-gcm", FormatOptions: srcOpts},
				Target: pipeline.Side{DEKs: filepath.Join(out, "deks"), KEK: env.KEK("target", "kek-aes")},
				Ledger: filepath.Join(out, "ledger"), Columns: pipeline.Columns{Encrypted: []string{"email"}}, Workers: 2}
			if mode == schemas.ModeReencrypt {
				j.Target.Data = filepath.Join(out, "data")
			}
			if tc.into != nil {
				j.Target.Format, j.Target.FormatOptions = "aes-gcm", tc.into
			}
			j.Defaults()
			if err := j.Validate(); err != nil {
				t.Fatal(err)
			}
			if r := pipeline.Plan(ctx, j, true); r.Failed() {
				t.Fatalf("plan: %+v", r.Checks)
			}
			m := runJob(t, j)
			if m.Status != "succeeded" || m.Totals.Failed != 0 {
				t.Fatalf("manifest %s %+v", m.Status, m.Totals)
			}
			checkSourceUnchanged(t, data, before)
			spec := j.VerifySpec("")
			if mode == schemas.ModeRewrap {
				spec.TargetData = data // the records stay where they are
			}
			if rep := runVerify(t, spec); !rep.OK || rep.Totals.Records != 60 {
				t.Fatalf("verify: %+v", rep)
			}
			if mode == schemas.ModeReencrypt && tc.into == nil {
				return
			}
			// The application reads its files (a rewrap's untouched ones,
			// or the reencrypt's new ones) with the DEKs the target wraps.
			dst, err := keys.Open(ctx, j.Target.KEK, keys.Options{})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string][]byte{}
			err = transforms.ScanDEKTable(ctx, j.Target.DEKs, func(_ string, rows []schemas.DEKRow) error {
				for _, r := range rows {
					d, err := dst.Unwrap(ctx, keys.ByID(r.DEKID), r.Wrap, r.Wrapped)
					if err != nil {
						return err
					}
					got[r.DEKID] = bytes.Clone(d.Bytes())
					d.Zero()
				}
				return nil
			}, new(int))
			if err != nil || len(got) != 3 {
				t.Fatalf("target DEK table: %d DEKs, %v", len(got), err)
			}
			dir := data
			if tc.into != nil {
				dir = j.Target.Data
			}
			n := 0
			for f := 0; f < 2; f++ {
				rows, err := parquet.ReadFile[tableAppRow](filepath.Join(dir, fmt.Sprintf("part-%d.parquet", f)))
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range rows {
					if r.Email == nil {
						if r.ID != 7 {
							t.Fatalf("record %d: its cell became null", r.ID)
						}
						continue
					}
					aad, cell := fmt.Sprint(r.ID), *r.Email
					if tc.into != nil || tagCol {
						b, err := base64.StdEncoding.DecodeString(cell)
						if err != nil {
							t.Fatalf("record %d: the cell is not base64: %v", r.ID, err)
						}
						cell = string(b)
					}
					if tc.into == nil && tagCol || tc.into["tag_column"] != "" {
						tag, err := base64.StdEncoding.DecodeString(*r.EmailTag)
						if err != nil || len(tag) != 16 {
							t.Fatalf("record %d: email_tag %q is not a base64 tag: %v", r.ID, *r.EmailTag, err)
						}
						cell += string(tag)
					}
					n++
					pt, err := goApp{}.decrypt(got[r.DEKID], &aad, cell)
					if err != nil || string(pt) != plain[r.ID] {
						t.Fatalf("record %d with the target-unwrapped DEK %s: %q, %v", r.ID, r.DEKID, pt, err)
					}
				}
			}
			if n != 59 {
				t.Fatalf("%d records read back, want 59 (and one null)", n)
			}
		})
	}
}
