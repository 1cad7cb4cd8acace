package transforms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/format"

	_ "rekey/providers/local"
	"rekey/providers/storage"
)

// duckdbFixture is a record file with DuckDB's schema shape: converted
// types only, no type_length but on FIXED_LEN_BYTE_ARRAY, DECIMALs with
// scale and precision and no logical type, field ids (testdata/duckdb/gen.go).
const duckdbFixture = "../testdata/duckdb/records.parquet"

func openLocal(t *testing.T, path string) *parquet.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return pf
}

// copyRecords writes every row of src to dst the way ReencryptFn writes a
// target (outputSchema, one row group per source row group), through a
// schemaKeeper when keep is set.
func copyRecords(t *testing.T, src *parquet.File, dst string, keep bool) error {
	t.Helper()
	out, err := storage.Create(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	var w storage.Writer = out
	var k *schemaKeeper
	if keep {
		k = keepSchema(out, dst, src)
		w = k
	}
	pw := parquet.NewWriter(w, outputSchema(src.Schema(), []string{"payload"}))
	rows := make([]parquet.Row, 7)
	for _, rg := range src.RowGroups() {
		rr := rg.Rows()
		for {
			n, err := rr.ReadRows(rows)
			if n > 0 {
				if _, err := pw.WriteRows(rows[:n]); err != nil {
					t.Fatal(err)
				}
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		rr.Close()
		if err := pw.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if k != nil {
		k.closing()
	}
	if err := pw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		_ = out.Abort()
		return err
	}
	return nil
}

// schemaDiff lists, field by field, how two footers' schema elements differ.
func schemaDiff(src, dst []format.SchemaElement) []string {
	if len(src) != len(dst) {
		return []string{fmt.Sprintf("%d schema elements in the source, %d in the target", len(src), len(dst))}
	}
	var diffs []string
	for i := range src {
		s, d := reflect.ValueOf(src[i]), reflect.ValueOf(dst[i])
		for f := 0; f < s.NumField(); f++ {
			if !reflect.DeepEqual(s.Field(f).Interface(), d.Field(f).Interface()) {
				diffs = append(diffs, fmt.Sprintf("%s.%s: source %s, target %s", src[i].Name, s.Type().Field(f).Name, showField(s.Field(f)), showField(d.Field(f))))
			}
		}
	}
	return diffs
}

func showField(v reflect.Value) string {
	if lt, ok := v.Interface().(format.LogicalType); ok {
		if lt.Value == nil {
			return "(none)"
		}
		return lt.String()
	}
	return fmt.Sprintf("%+v", v.Interface())
}

// TestTargetKeepsDuckDBSchema (issue 10 item 9): a target written from a
// DuckDB-shaped source has the source's schema elements, field by field.
func TestTargetKeepsDuckDBSchema(t *testing.T) {
	src := openLocal(t, duckdbFixture)
	// The fixture must have the shape that parquet-go does not write, or
	// this test proves nothing.
	for _, e := range src.Metadata().Schema[1:] {
		if e.LogicalType.Value != nil {
			t.Fatalf("fixture column %q has a logical type; regenerate testdata/duckdb", e.Name)
		}
		if e.TypeLength.Valid && e.Type.V != format.FixedLenByteArray {
			t.Fatalf("fixture column %q has a type_length; regenerate testdata/duckdb", e.Name)
		}
	}
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.parquet")
	if err := copyRecords(t, src, plain, false); err != nil {
		t.Fatal(err)
	}
	if d := schemaDiff(src.Metadata().Schema, openLocal(t, plain).Metadata().Schema); len(d) == 0 {
		t.Fatal("parquet-go wrote the DuckDB shape by itself: the fixture no longer shows the drift")
	}

	kept := filepath.Join(dir, "kept.parquet")
	if err := copyRecords(t, src, kept, true); err != nil {
		t.Fatal(err)
	}
	dst := openLocal(t, kept)
	if d := schemaDiff(src.Metadata().Schema, dst.Metadata().Schema); len(d) > 0 {
		t.Fatalf("the target's schema is not the source's:\n  %s", strings.Join(d, "\n  "))
	}
	// The encrypted column is still PLAIN and uncompressed, the others as
	// parquet-go wrote them from the source's codec and encoding.
	for _, c := range dst.Metadata().RowGroups[0].Columns {
		if c.MetaData.PathInSchema[0] == "payload" && c.MetaData.Codec != format.Uncompressed {
			t.Fatalf("payload column compressed with %v", c.MetaData.Codec)
		}
	}
	// Every row reads back the same.
	want, got := readAllRows(t, src), readAllRows(t, dst)
	if len(want) != len(got) || len(want) != 40 {
		t.Fatalf("%d rows in the target, %d in the source", len(got), len(want))
	}
	for i := range want {
		if !want[i].Equal(got[i]) {
			t.Fatalf("row %d differs:\n source %v\n target %v", i, want[i], got[i])
		}
	}
}

// TestKeepSchemaOfParquetGoFile: a source parquet-go wrote (rekey gen) keeps
// its schema too (there the elements were already the same).
func TestKeepSchemaOfParquetGoFile(t *testing.T) {
	dir := t.TempDir()
	srcPath := filepath.Join(dir, "gen.parquet")
	rows := []GenRow{{ID: 1, DEKID: "d", Tenant: "t", Amount: 1.5, Payload: []byte{1, 2}, Note: []byte("n")}, {ID: 2, DEKID: "d"}}
	if err := parquet.WriteFile(srcPath, rows); err != nil {
		t.Fatal(err)
	}
	src := openLocal(t, srcPath)
	dst := filepath.Join(dir, "kept.parquet")
	if err := copyRecords(t, src, dst, true); err != nil {
		t.Fatal(err)
	}
	if d := schemaDiff(src.Metadata().Schema, openLocal(t, dst).Metadata().Schema); len(d) > 0 {
		t.Fatalf("schema changed:\n  %s", strings.Join(d, "\n  "))
	}
	back, err := parquet.ReadFile[GenRow](dst)
	if err != nil || len(back) != 2 || string(back[0].Payload) != "\x01\x02" {
		t.Fatalf("read back: %v %+v", err, back)
	}
}

// TestKeepSchemaRefusesWithoutClosing: a keeper whose footer went through
// (closing not called) must not commit a file with the wrong schema.
func TestKeepSchemaRefusesWithoutClosing(t *testing.T) {
	src := openLocal(t, duckdbFixture)
	dir := t.TempDir()
	dst := filepath.Join(dir, "x.parquet")
	out, err := storage.Create(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	k := keepSchema(out, dst, src)
	pw := parquet.NewWriter(k, outputSchema(src.Schema(), []string{"payload"}))
	if err := pw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := k.Commit(); err == nil || !strings.Contains(err.Error(), "closing") {
		t.Fatalf("Commit without closing: %v", err)
	}
	_ = k.Abort()
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Fatalf("a file was committed: %v", err)
	}
}

// TestWithSchemaRefusesAnotherShape: the source's annotations are only
// taken over a written schema of the same columns.
func TestWithSchemaRefusesAnotherShape(t *testing.T) {
	src := openLocal(t, duckdbFixture)
	var buf bytes.Buffer
	pw := parquet.NewWriter(&buf, parquet.SchemaOf(GenRow{}))
	if err := pw.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := withSchema(buf.Bytes(), src.Metadata().Schema, nil); err == nil {
		t.Fatal("a footer of other columns took the source's schema")
	}
	if _, err := withSchema([]byte("not a footer"), src.Metadata().Schema, nil); err == nil {
		t.Fatal("bytes without a footer were accepted")
	}
}

func readAllRows(t *testing.T, f *parquet.File) []parquet.Row {
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
