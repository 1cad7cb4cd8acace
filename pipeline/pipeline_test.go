package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	beamlog "github.com/apache/beam/sdks/v2/go/pkg/beam/log"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"
	"github.com/parquet-go/parquet-go"

	_ "rekey/hsmio"
	"rekey/hsmio/softhsm"
	"rekey/pipeline"
	"rekey/providers/keys"
	_ "rekey/providers/local"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

var env *softhsm.TestEnv

// genMarker, when set, starts every generated plaintext (canary tests).
var genMarker string

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	beamlog.SetLogger(quietLogger{})
	os.Exit(softhsm.Main(m, &env, func() int { return ptest.MainRetWithDefault(m, "direct") }))
}

// quietLogger keeps Beam's informational lines out of test output.
type quietLogger struct{}

func (quietLogger) Log(_ context.Context, sev beamlog.Severity, _ int, msg string) {
	if sev >= beamlog.SevWarn {
		fmt.Fprintln(os.Stderr, msg)
	}
}

// dataset is a generated source dataset.
type dataset struct {
	gen  transforms.GenSpec
	root string
}

func genDataset(t *testing.T, kek, wrap string, files, records, deks int, encrypted ...string) *dataset {
	t.Helper()
	if len(encrypted) == 0 {
		encrypted = []string{"payload"}
	}
	root := t.TempDir()
	g := transforms.GenSpec{Data: filepath.Join(root, "src", "data"), DEKs: filepath.Join(root, "src", "deks"), KEK: kek, Wrap: wrap,
		Files: files, Records: records, NumDEKs: deks, RecordSize: 300, Seed: 42, Encrypted: encrypted, RowGroup: 70, Workers: 2,
		Marker: genMarker}
	ptest.BuildAndRun(t, func(s beam.Scope) { pipeline.BuildGen(s, g) })
	return &dataset{gen: g, root: root}
}

func (d *dataset) job(mode, runID, targetKEK, targetWrap string) *pipeline.Job {
	j := &pipeline.Job{Mode: mode, RunID: runID,
		Source: pipeline.Side{Data: d.gen.Data, DEKs: d.gen.DEKs, KEK: d.gen.KEK},
		Target: pipeline.Side{DEKs: filepath.Join(d.root, runID, "deks"), KEK: targetKEK, Wrap: targetWrap},
		Ledger: filepath.Join(d.root, "ledger"), Columns: pipeline.Columns{Encrypted: d.gen.Encrypted}, Workers: 3}
	if mode == schemas.ModeReencrypt {
		j.Target.Data = filepath.Join(d.root, runID, "data")
	}
	j.Defaults()
	return j
}

func runJob(t *testing.T, j *pipeline.Job) *schemas.Manifest {
	t.Helper()
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	ptest.BuildAndRun(t, func(s beam.Scope) { pipeline.Build(s, j.Spec()) })
	return readManifest(t, j)
}

func readManifest(t *testing.T, j *pipeline.Job) *schemas.Manifest {
	t.Helper()
	b, err := os.ReadFile(ledger.ManifestPath(j.Ledger, j.RunID))
	if err != nil {
		t.Fatal(err)
	}
	var m schemas.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return &m
}

// decryptAll reads every record file under data and decrypts every
// encrypted cell with the DEK table and KEK given, using only the public
// format (schemas) and the key interface.
func decryptAll(t *testing.T, data, deks, kekURI string, encrypted []string) map[int64]transforms.GenRow {
	t.Helper()
	ctx := context.Background()
	kek, err := keys.Open(ctx, kekURI, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	table, err := transforms.ReadDEKTable(ctx, deks)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]schemas.DEKRow{}
	for _, r := range table {
		if _, dup := byID[r.DEKID]; dup {
			t.Fatalf("dek_id %q twice in %s", r.DEKID, deks)
		}
		byID[r.DEKID] = r
	}
	out := map[int64]transforms.GenRow{}
	files, _ := filepath.Glob(filepath.Join(data, "*.parquet"))
	for _, f := range files {
		rows, err := parquet.ReadFile[transforms.GenRow](f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, r := range rows {
			d, ok := byID[r.DEKID]
			if !ok {
				t.Fatalf("record %d names unknown DEK %q", r.ID, r.DEKID)
			}
			dek, err := kek.Unwrap(ctx, keys.ByID(d.DEKID), d.Wrap, d.Wrapped)
			if err != nil {
				t.Fatalf("unwrap %q: %v", d.DEKID, err)
			}
			aead, _ := dek.AEAD()
			for _, col := range encrypted {
				cell := &r.Payload
				if col == "note" {
					cell = &r.Note
				}
				if *cell == nil {
					continue
				}
				aad, _ := schemas.CellAAD(nil, col, fmt.Sprint(r.ID), r.DEKID)
				pt, err := schemas.OpenCell(nil, aead, *cell, aad)
				if err != nil {
					t.Fatalf("%s record %d column %s: %v", f, r.ID, col, err)
				}
				*cell = pt
			}
			dek.Zero()
			if _, dup := out[r.ID]; dup {
				t.Fatalf("record %d appears twice in %s", r.ID, data)
			}
			out[r.ID] = r
		}
	}
	return out
}

// checkSameRecords is the round-trip property: same ids, same plaintext,
// every other column unchanged.
func checkSameRecords(t *testing.T, d *dataset, src, dst map[int64]transforms.GenRow, dekRenamed bool) {
	t.Helper()
	if len(src) != len(dst) {
		t.Fatalf("source has %d records, target %d", len(src), len(dst))
	}
	for id, s := range src {
		o, ok := dst[id]
		if !ok {
			t.Fatalf("record %d missing from target", id)
		}
		if !bytes.Equal(s.Payload, o.Payload) || !bytes.Equal(s.Note, o.Note) || (s.Note == nil) != (o.Note == nil) {
			t.Fatalf("record %d: plaintext differs after migration", id)
		}
		if want := transforms.GenPlaintext(&d.gen, "payload", id); !bytes.Equal(want, o.Payload) {
			t.Fatalf("record %d: payload is not the generated plaintext", id)
		}
		if s.Tenant != o.Tenant || s.Amount != o.Amount || !s.Created.Equal(o.Created) {
			t.Fatalf("record %d: a non-encrypted column changed: %+v vs %+v", id, s, o)
		}
		if dekRenamed && o.DEKID != transforms.NewDEKID(s.DEKID, "") && len(o.DEKID) <= len(s.DEKID) {
			t.Fatalf("record %d: dek_id %q not replaced (was %q)", id, o.DEKID, s.DEKID)
		}
	}
}

func TestReencryptRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name, srcKEK, srcWrap, dstKEK, dstWrap string
		encrypted                              []string
	}{
		{"gcm-to-rsa", "kek-aes", "aes-gcm", "kek-rsa", "rsa-oaep-sha1", []string{"payload"}},
		{"kwp-to-gcm-two-columns", "kek-aes", "aes-kwp", "kek-aes", "aes-gcm", []string{"payload", "note"}},
		{"rsa-to-kwp", "kek-rsa", "rsa-oaep-sha1", "kek-aes", "aes-kwp", []string{"note"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := genDataset(t, env.KEK("source", tc.srcKEK), tc.srcWrap, 3, 150, 7, tc.encrypted...)
			j := d.job(schemas.ModeReencrypt, "r1", env.KEK("target", tc.dstKEK), tc.dstWrap)
			m := runJob(t, j)
			if m.Status != "succeeded" || m.Totals.RecordsMigrated != 450 || m.Totals.DEKsMigrated != 7 || m.Totals.Failed != 0 {
				t.Fatalf("manifest: %+v", m.Totals)
			}
			src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, tc.encrypted)
			dst := decryptAll(t, j.Target.Data, j.Target.DEKs, j.Target.KEK, tc.encrypted)
			checkSameRecords(t, d, src, dst, true)
			checkLedger(t, j, map[string]int{"record/migrated": 450, "dek/migrated": 7})
			checkSameLayout(t, d.gen.Data, j.Target.Data)
		})
	}
}

func TestRewrapRoundTrip(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ name, srcKEK, srcWrap, dstKEK, dstWrap string }{
		{"gcm-to-kwp", "kek-aes", "aes-gcm", "kek-aes", "aes-kwp"},
		{"kwp-to-rsa", "kek-aes", "aes-kwp", "kek-rsa", "rsa-oaep-sha1"},
		{"rsa-to-gcm", "kek-rsa", "rsa-oaep-sha1", "kek-aes", "aes-gcm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := genDataset(t, env.KEK("source", tc.srcKEK), tc.srcWrap, 2, 50, 25)
			j := d.job(schemas.ModeRewrap, "w1", env.KEK("target", tc.dstKEK), tc.dstWrap)
			m := runJob(t, j)
			if m.Status != "succeeded" || m.Totals.DEKsMigrated != 25 {
				t.Fatalf("manifest: %+v", m.Totals)
			}
			// The same DEKs, under the new KEK: the untouched data decrypts.
			src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
			dst := decryptAll(t, d.gen.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
			checkSameRecords(t, d, src, dst, false)
			// And the key bytes are identical.
			srcKEK, _ := keys.Open(ctx, d.gen.KEK, keys.Options{})
			dstKEK, _ := keys.Open(ctx, j.Target.KEK, keys.Options{})
			a, _ := transforms.ReadDEKTable(ctx, d.gen.DEKs)
			b, _ := transforms.ReadDEKTable(ctx, j.Target.DEKs)
			if len(a) != len(b) {
				t.Fatalf("%d DEKs in, %d out", len(a), len(b))
			}
			for i := range a {
				x, err1 := srcKEK.Unwrap(ctx, keys.ByID(a[i].DEKID), a[i].Wrap, a[i].Wrapped)
				y, err2 := dstKEK.Unwrap(ctx, keys.ByID(b[i].DEKID), b[i].Wrap, b[i].Wrapped)
				if err1 != nil || err2 != nil || a[i].DEKID != b[i].DEKID || !bytes.Equal(x.Bytes(), y.Bytes()) || b[i].Wrap != tc.dstWrap {
					t.Fatalf("DEK %q did not survive the rewrap (%v, %v)", a[i].DEKID, err1, err2)
				}
			}
			checkLedger(t, j, map[string]int{"dek/migrated": 25})
		})
	}
}

func TestReencryptOnPrism(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 80, 3)
	j := d.job(schemas.ModeReencrypt, "p1", env.KEK("target", "kek-aes"), "aes-kwp")
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	p, s := beam.NewPipelineWithRoot()
	pipeline.Build(s, j.Spec())
	if _, err := prism.Execute(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	m := readManifest(t, j)
	if m.Totals.RecordsMigrated != 160 || m.Totals.Failed != 0 {
		t.Fatalf("manifest: %+v", m.Totals)
	}
	checkSameRecords(t, d, decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted),
		decryptAll(t, j.Target.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted), true)
}

func checkLedger(t *testing.T, j *pipeline.Job, want map[string]int) {
	t.Helper()
	rows, err := ledger.Read(context.Background(), j.Ledger, j.RunID)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	seen := map[string]bool{}
	for _, r := range rows {
		got[r.Unit+"/"+r.Status]++
		if r.RunID != j.RunID || r.Mode != j.Mode || r.At.IsZero() {
			t.Fatalf("ledger row %+v", r)
		}
		if r.Status == schemas.StatusMigrated && r.Checksum == "" {
			t.Fatalf("migrated row without checksum: %+v", r)
		}
		key := r.Unit + "/" + r.Source + "/" + r.RecordID + "/" + r.DEKID
		if seen[key] {
			t.Fatalf("duplicate ledger row %s", key)
		}
		seen[key] = true
	}
	for k, n := range want {
		if got[k] != n {
			t.Fatalf("ledger %s: %d rows, want %d (all: %v)", k, got[k], n, got)
		}
	}
	for k, n := range got {
		if _, ok := want[k]; !ok {
			t.Fatalf("unexpected ledger rows %s: %d", k, n)
		}
	}
}

func checkSameLayout(t *testing.T, a, b string) {
	t.Helper()
	list := func(root string) []string {
		var out []string
		_ = filepath.WalkDir(root, func(p string, de os.DirEntry, err error) error {
			if err == nil && !de.IsDir() {
				rel, _ := filepath.Rel(root, p)
				out = append(out, rel)
			}
			return nil
		})
		sort.Strings(out)
		return out
	}
	la, lb := list(a), list(b)
	if fmt.Sprint(la) != fmt.Sprint(lb) {
		t.Fatalf("layout differs:\n%v\n%v", la, lb)
	}
}
