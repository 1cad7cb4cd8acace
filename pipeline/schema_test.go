package pipeline_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/format"

	"rekey/pipeline"
	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
)

// The DuckDB-shaped fixture (testdata/duckdb/gen.go): 40 records, dek_ids
// duck-0..duck-2, payload sealed under fixed DEKs.
const (
	duckFixture = "../testdata/duckdb/records.parquet"
	duckRecords = 40
)

func duckDEK(dekID string) []byte {
	h := sha256.Sum256([]byte("rekey testdata/duckdb DEK " + dekID))
	return h[:]
}

func duckPlaintext(id int64) string { return fmt.Sprintf("record %d of the DuckDB-shaped fixture", id) }

// duckDataset copies the fixture into a source folder and writes a DEK
// table of its fixed DEKs wrapped by the test's source KEK.
func duckDataset(t *testing.T) *dataset {
	t.Helper()
	ctx := context.Background()
	root := t.TempDir()
	g := transforms.GenSpec{Data: filepath.Join(root, "src", "data"), DEKs: filepath.Join(root, "src", "deks"),
		KEK: env.KEK("source", "kek-aes"), Encrypted: []string{"payload"}}
	b, err := os.ReadFile(duckFixture)
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{g.Data, g.DEKs} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(g.Data, "part-00000.parquet"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	kek, err := keys.Open(ctx, g.KEK, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var rows []schemas.DEKRow
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("duck-%d", i)
		dek, err := keys.NewDEK(duckDEK(id))
		if err != nil {
			t.Fatal(err)
		}
		w, err := kek.Wrap(ctx, keys.ByID(id), dek)
		dek.Zero()
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, schemas.DEKRow{DEKID: id, KEK: kek.URI(), Wrap: kek.Mechanism(), Wrapped: w, Created: time.Now().UTC().Truncate(time.Microsecond)})
	}
	if err := parquet.WriteFile(filepath.Join(g.DEKs, "part-00000.parquet"), rows); err != nil {
		t.Fatal(err)
	}
	return &dataset{gen: g, root: root}
}

func footerSchema(t *testing.T, path string) ([]format.SchemaElement, *parquet.File) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, _ := f.Stat()
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return pf.Metadata().Schema, pf
}

// TestReencryptKeepsSourceSchema (issue 10 item 9): re-encrypting a file
// with DuckDB's schema shape (converted types only, no type_length on
// variable-length or fixed-width columns, DECIMAL scale and precision
// without a logical type, field ids) gives a target whose footer has the
// same schema elements, field by field: type, type_length, repetition,
// converted_type, scale, precision, field_id, logicalType. Only the
// encrypted column's encoding and compression may differ, and they are not
// schema elements. Every record is migrated and decrypts to its plaintext
// under the target KEK, and every other value is unchanged.
func TestReencryptKeepsSourceSchema(t *testing.T) {
	d := duckDataset(t)
	j := d.job(schemas.ModeReencrypt, "duck", env.KEK("target", "kek-aes"), "")
	if r := pipeline.Plan(context.Background(), j, true); r.Failed() {
		t.Fatalf("plan fails on the DuckDB-shaped dataset: %+v", r.Checks)
	}
	m := runJob(t, j)
	if m.Status != "succeeded" || m.Totals.RecordsMigrated != duckRecords {
		t.Fatalf("%s %+v", m.Status, m.Totals)
	}

	srcSchema, src := footerSchema(t, filepath.Join(d.gen.Data, "part-00000.parquet"))
	dstSchema, dst := footerSchema(t, filepath.Join(j.Target.Data, "part-00000.parquet"))
	for _, e := range srcSchema[1:] {
		if e.LogicalType.Value != nil || (e.TypeLength.Valid && e.Type.V != format.FixedLenByteArray) {
			t.Fatalf("fixture column %q is not DuckDB-shaped; regenerate testdata/duckdb", e.Name)
		}
	}
	if len(srcSchema) != len(dstSchema) {
		t.Fatalf("%d schema elements in the source, %d in the target", len(srcSchema), len(dstSchema))
	}
	var diffs []string
	for i := range srcSchema {
		s, o := reflect.ValueOf(srcSchema[i]), reflect.ValueOf(dstSchema[i])
		for f := 0; f < s.NumField(); f++ {
			if !reflect.DeepEqual(s.Field(f).Interface(), o.Field(f).Interface()) {
				diffs = append(diffs, fmt.Sprintf("%s.%s: source %s, target %s", srcSchema[i].Name, s.Type().Field(f).Name, showElemField(s.Field(f)), showElemField(o.Field(f))))
			}
		}
	}
	if len(diffs) > 0 {
		t.Fatalf("the target's schema is not the source's:\n  %s", strings.Join(diffs, "\n  "))
	}

	// The data: same rows, payload re-encrypted under the target's DEKs.
	ctx := context.Background()
	table, err := transforms.ReadDEKTable(ctx, j.Target.DEKs)
	if err != nil {
		t.Fatal(err)
	}
	kek, err := keys.Open(ctx, j.Target.KEK, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	newDEKs := map[string]*keys.DEK{}
	for _, r := range table {
		dek, err := kek.Unwrap(ctx, keys.ByID(r.DEKID), r.Wrap, r.Wrapped)
		if err != nil {
			t.Fatal(err)
		}
		newDEKs[r.DEKID] = dek
	}
	col := func(pf *parquet.File, name string) int {
		leaf, ok := pf.Schema().Lookup(name)
		if !ok {
			t.Fatalf("no column %q", name)
		}
		return leaf.ColumnIndex
	}
	srcRows, dstRows := allRows(t, src), allRows(t, dst)
	if len(srcRows) != duckRecords || len(dstRows) != duckRecords {
		t.Fatalf("%d source rows, %d target rows", len(srcRows), len(dstRows))
	}
	payload, dekCol, idCol := col(dst, "payload"), col(dst, "dek_id"), col(dst, "id")
	for i := range srcRows {
		s, o := srcRows[i], dstRows[i]
		id := o[idCol].Int64()
		newID := string(o[dekCol].ByteArray())
		dek := newDEKs[newID]
		if dek == nil {
			t.Fatalf("record %d names %q, not in the target DEK table", id, newID)
		}
		aead, _ := dek.AEAD()
		aad, _ := schemas.CellAAD(nil, "payload", fmt.Sprint(id), newID)
		pt, err := schemas.OpenCell(nil, aead, o[payload].ByteArray(), aad)
		if err != nil || string(pt) != duckPlaintext(id) {
			t.Fatalf("record %d: payload %q, %v", id, pt, err)
		}
		for c := range s {
			if c == payload || c == dekCol {
				continue
			}
			if !parquet.Equal(s[c], o[c]) || s[c].DefinitionLevel() != o[c].DefinitionLevel() {
				t.Fatalf("record %d column %d: source %v, target %v", id, c, s[c], o[c])
			}
		}
	}
	for _, k := range newDEKs {
		k.Zero()
	}
}

func showElemField(v reflect.Value) string {
	if lt, ok := v.Interface().(format.LogicalType); ok {
		if lt.Value == nil {
			return "(none)"
		}
		return lt.String()
	}
	return fmt.Sprintf("%+v", v.Interface())
}

func allRows(t *testing.T, f *parquet.File) []parquet.Row {
	t.Helper()
	var all []parquet.Row
	buf := make([]parquet.Row, 16)
	for _, rg := range f.RowGroups() {
		rr := rg.Rows()
		for {
			n, err := rr.ReadRows(buf)
			for _, r := range buf[:n] {
				all = append(all, r.Clone())
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		rr.Close()
	}
	return all
}
