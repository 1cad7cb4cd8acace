package pipeline_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
	"gopkg.in/yaml.v3"

	"rekey/hsmio/faultpkcs11"
	"rekey/pipeline"
	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// edgeKeys is an application's DEK table with optional and list columns.
type edgeKeys struct {
	KeyID        string   `parquet:"key_id"`
	Tenant       *string  `parquet:"tenant,optional"`
	EncryptedKey *string  `parquet:"encrypted_key,optional"`
	Tags         []string `parquet:"tags,list"`
	Note         *string  `parquet:"note,optional"`
}

func strp(s string) *string { return &s }

// edgeDataset writes an application's DEK table (optional and list
// columns, row groups of 2 rows, Arrow and pandas metadata, and, with
// repeat, the first key again for another tenant) and records under it.
func edgeDataset(t *testing.T, repeat bool) (data, deks string, opts map[string]string, src []edgeKeys) {
	t.Helper()
	ctx := context.Background()
	kek, err := keys.Open(ctx, env.KEK("source", "kek-aes"), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	data, deks = filepath.Join(root, "app"), filepath.Join(root, "app-deks")
	for _, d := range []string{data, deks} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts = map[string]string{"aad": "{id}", "binding": "none", "table_id_column": "key_id", "table_key_column": "encrypted_key", "table_key_encoding": "base64"}
	raws := map[string][]byte{}
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("k%d", i)
		raw := make([]byte, 32)
		_, _ = rand.Read(raw)
		d, _ := keys.NewDEK(raw)
		w, err := kek.Wrap(ctx, keys.Binding{}, d)
		if err != nil {
			t.Fatal(err)
		}
		raws[id] = raw
		ek := base64.StdEncoding.EncodeToString(w)
		switch i {
		case 0:
			src = append(src, edgeKeys{KeyID: id, Tenant: strp("A"), EncryptedKey: strp(ek), Tags: []string{"a"}})
			if repeat {
				src = append(src, edgeKeys{KeyID: id, Tenant: strp("B"), EncryptedKey: strp(ek), Tags: []string{"b", "bb"}, Note: strp("shared")})
			}
		case 1:
			src = append(src, edgeKeys{KeyID: id, EncryptedKey: strp(ek)})
		case 2:
			src = append(src, edgeKeys{KeyID: id, Tenant: strp("C"), EncryptedKey: strp(ek), Tags: []string{"x", "y", "z"}, Note: strp("n")})
		}
	}
	if err := parquet.WriteFile(filepath.Join(deks, "keys.parquet"), src, parquet.MaxRowsPerRowGroup(2),
		parquet.KeyValueMetadata("ARROW:schema", "an-arrow-schema"), parquet.KeyValueMetadata("pandas", "{}")); err != nil {
		t.Fatal(err)
	}
	var rows []tableAppRow
	for id := int64(1); id <= 30; id++ {
		k, aad := fmt.Sprintf("k%d", id%3), fmt.Sprint(id)
		cell := goApp{}.encrypt(raws[k], &aad, []byte(fmt.Sprintf("user%d@example.com", id)))
		rows = append(rows, tableAppRow{ID: id, DEKID: k, Email: &cell})
	}
	if err := parquet.WriteFile(filepath.Join(data, "part-0.parquet"), rows); err != nil {
		t.Fatal(err)
	}
	return data, deks, opts, src
}

func edgeJob(t *testing.T, runID, data, deks string, opts map[string]string) *pipeline.Job {
	out := t.TempDir()
	j := &pipeline.Job{Mode: schemas.ModeRewrap, RunID: runID,
		Source: pipeline.Side{Data: data, DEKs: deks, KEK: env.KEK("source", "kek-aes"), Format: "aes-gcm", FormatOptions: opts},
		Target: pipeline.Side{DEKs: filepath.Join(out, "deks"), KEK: env.KEK("target", "kek-aes")},
		Ledger: filepath.Join(out, "ledger"), Columns: pipeline.Columns{Encrypted: []string{"email"}}, Workers: 2}
	j.Defaults()
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	return j
}

// TestAppTableRewrapKeepsTheFile: a rewrap of an application's DEK table
// writes back every row with its optional and list columns as read (nulls
// included), across row groups, with the source's key-value metadata
// (Arrow's schema, pandas'). A repeated dek_id (the same key for a second
// tenant) cannot be written back one row per dek_id: the plan predicts
// it, the run fails that row naming the repeat and what to do, and the
// other rows are kept.
func TestAppTableRewrapKeepsTheFile(t *testing.T) {
	for _, repeat := range []bool{false, true} {
		t.Run(map[bool]string{false: "distinct", true: "repeated-row"}[repeat], func(t *testing.T) {
			data, deks, opts, src := edgeDataset(t, repeat)
			j := edgeJob(t, fmt.Sprint("edge-", repeat), data, deks, opts)
			r := pipeline.Plan(context.Background(), j, true)
			if r.Predicted.RepeatedDEKs != map[bool]int{false: 0, true: 1}[repeat] || r.Failed() != repeat {
				t.Fatalf("plan: predicted %+v, failed %v: %+v", r.Predicted, r.Failed(), r.Checks)
			}
			m := runJob(t, j)
			got, err := parquet.ReadFile[edgeKeys](filepath.Join(j.Target.DEKs, "keys.parquet"))
			if err != nil {
				t.Fatal(err)
			}
			want := src
			if repeat {
				want = append([]edgeKeys{src[0]}, src[2:]...)
				if m.Status != "completed_with_failures" || m.Totals.DEKsFailed != 1 {
					t.Fatalf("manifest %s %+v", m.Status, m.Totals)
				}
				led, _ := ledger.Read(context.Background(), j.Ledger, j.RunID)
				failed := 0
				for _, l := range led {
					if l.Status == schemas.StatusFailed {
						failed++
						if l.DEKID != "k0" || !strings.Contains(l.Error, "deduplicate") {
							t.Fatalf("failed row %+v", l)
						}
					}
				}
				if failed != 1 {
					t.Fatalf("%d failed ledger rows", failed)
				}
			} else if m.Status != "succeeded" {
				t.Fatalf("manifest %s %+v", m.Status, m.Totals)
			}
			if len(got) != len(want) {
				t.Fatalf("target rows %d, want %d", len(got), len(want))
			}
			for i := range got {
				g, w := got[i], want[i]
				if g.KeyID != w.KeyID || fmt.Sprint(g.Tenant == nil, g.Note == nil, g.Tags) != fmt.Sprint(w.Tenant == nil, w.Note == nil, w.Tags) ||
					g.Tenant != nil && *g.Tenant != *w.Tenant || g.Note != nil && *g.Note != *w.Note {
					t.Fatalf("row %d: %+v, source %+v", i, g, w)
				}
				if *g.EncryptedKey == *w.EncryptedKey {
					t.Fatalf("row %d: the wrapped key was not replaced", i)
				}
			}
			pf, f := openParquetFile(t, filepath.Join(j.Target.DEKs, "keys.parquet"))
			defer f.Close()
			kv := map[string]string{}
			for _, e := range pf.Metadata().KeyValueMetadata {
				kv[e.Key] = e.Value
			}
			if kv["ARROW:schema"] != "an-arrow-schema" || kv["pandas"] != "{}" {
				t.Fatalf("the source's key-value metadata is not kept: %v", kv)
			}
		})
	}
}

func openParquetFile(t *testing.T, path string) (*parquet.File, *os.File) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	return pf, f
}

// TestAppTableBadFile: a file of an application's DEK table without the
// configured key column fails as a file, naming the source file and the
// option; the other files are rewrapped.
func TestAppTableBadFile(t *testing.T) {
	data, deks, opts, _ := edgeDataset(t, false)
	type noKey struct {
		KeyID string `parquet:"key_id"`
		Other string `parquet:"other"`
	}
	bad := filepath.Join(deks, "zz-bad.parquet")
	if err := parquet.WriteFile(bad, []noKey{{"k9", "x"}}); err != nil {
		t.Fatal(err)
	}
	j := edgeJob(t, "edge-badfile", data, deks, opts)
	j.MaxFailures = "5"
	m := runJob(t, j)
	if m.Status != "completed_with_failures" || m.Totals.FilesFailed != 1 || m.Totals.DEKsMigrated != 3 {
		t.Fatalf("manifest %s %+v", m.Status, m.Totals)
	}
	led, _ := ledger.Read(context.Background(), j.Ledger, j.RunID)
	for _, l := range led {
		if l.Status == schemas.StatusFailed && (l.Source != bad || !strings.Contains(l.Error, bad) || !strings.Contains(l.Error, "table_key_column")) {
			t.Fatalf("failed row does not name the source file and option: %+v", l)
		}
	}
}

// TestAppTablePlanFindings: a rekey-v1 DEK table rewrap (the records are
// not touched) with a damaged cell only warns; a reencrypt into a
// tag_column the files do not have is refused by the plan, naming it.
func TestAppTablePlanFindings(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 20, 3)
	rewriteRecords(t, filepath.Join(d.gen.Data, "part-00000.parquet"), func(r []transforms.GenRow) []transforms.GenRow {
		r[0].Payload[20] ^= 0x01
		return r
	})
	j := d.job(schemas.ModeRewrap, "edge-badcell", env.KEK("target", "kek-aes"), "aes-gcm")
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	r := pipeline.Plan(context.Background(), j, true)
	ok, info := cellCheck(t, r)
	if r.Failed() || !ok || r.Predicted.BadCells != 0 || !strings.Contains(info, "leaves them as they are") {
		t.Fatalf("a DEK table rewrap's plan with a damaged cell: %+v %+v", r.Predicted, r.Checks)
	}
	d2 := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 20, 3)
	j = d2.job(schemas.ModeReencrypt, "edge-tagmiss", env.KEK("target", "kek-aes"), "aes-gcm")
	j.Target.Format, j.Target.FormatOptions = "aes-gcm", map[string]string{"tag_column": "payload_tag", "encoding": "base64"}
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	r = pipeline.Plan(context.Background(), j, true)
	found := false
	for _, c := range r.Checks {
		found = found || !c.OK && strings.Contains(c.Info, `"payload_tag"`) && strings.Contains(c.Info, "tag_column")
	}
	if !found || r.Predicted.NoColumn != 2 {
		t.Fatalf("plan of a reencrypt into a missing tag column: %+v %+v", r.Predicted, r.Checks)
	}
}

// TestResumeChecksAppTableKCV: a reencrypt into aes-gcm with an
// application's DEK table layout stops half way; its resume against a
// target HSM that returns wrong keys exits 3 naming the key check value
// (kept in the table's rekey_kcv column), and a healthy resume finishes
// and verifies.
func TestResumeChecksAppTableKCV(t *testing.T) {
	bin := buildRekey(t)
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 40, 4)
	j := d.job(schemas.ModeReencrypt, "appkcv", env.KEK("target", "kek-aes"), "aes-gcm")
	j.Target.Format, j.Target.FormatOptions = "aes-gcm", map[string]string{"table_key_encoding": "base64"}
	files, _ := os.ReadDir(d.gen.Data)
	victim := filepath.Join(d.gen.Data, files[1].Name())
	orig, _ := os.ReadFile(victim)
	if err := os.WriteFile(victim, orig[:len(orig)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	jobFile := func() string {
		p := filepath.Join(t.TempDir(), "job.yaml")
		b, err := yaml.Marshal(j)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if code, out := runCLI(t, bin, "run", "--job", jobFile(), "--workers", "1", "--progress", "-1s"); code != 3 {
		t.Fatalf("first run: exit %d, want 3\n%s", code, out)
	}
	if err := os.WriteFile(victim, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	healthy := j.Target.KEK
	j.Target.KEK = fmt.Sprintf("pkcs11:token=target;object=kek-aes?module-path=%s&pin-source=env:REKEY_TARGET_PIN",
		faultpkcs11.ForTest(t, faultpkcs11.Config{Calls: []string{"C_Decrypt"}, Mode: faultpkcs11.Corrupt, Rate: 1, After: 1}))
	if code, out := runCLI(t, bin, "run", "--job", jobFile(), "--resume", "--workers", "1", "--progress", "-1s"); code != 3 || !strings.Contains(out, "key check value") {
		t.Fatalf("resume with a target returning wrong keys: exit %d, want 3 naming the key check value:\n%s", code, out)
	}
	j.Target.KEK = healthy
	if code, out := runCLI(t, bin, "run", "--job", jobFile(), "--resume", "--workers", "1", "--progress", "-1s"); code != 0 {
		t.Fatalf("resume with a healthy target: exit %d\n%s", code, out)
	}
	if rep := runVerify(t, j.VerifySpec("")); !rep.OK || rep.Totals.Records != 80 {
		t.Fatalf("verify: %+v", rep.Totals)
	}
}
