package transforms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/schemas/format"
	"rekey/transforms/rowio"
)

// DEKLayout is how one side's DEK table files are read and written:
// rekey's own (Table is the zero value), or an application's (format
// aes-gcm with table_* options or binding: none): an id column and a
// wrapped-key column in the application's encoding, any other columns
// kept by a rewrap. An application's rows have no kek and wrap columns:
// they are KEK and Wrap, the job's key for that side.
type DEKLayout struct {
	Table     format.Table
	KEK, Wrap string
}

// TableBinding is what a DEK table row's wrapped key is bound to: its
// dek_id, or nothing (binding: none).
func TableBinding(t format.Table, dekID string) keys.Binding {
	if t.Unbound {
		return keys.Binding{}
	}
	return keys.ByID(dekID)
}

// sourceLayout and targetLayout are the spec's DEK table layouts; k, when
// open, names the rows' KEK canonically and gives the mechanism the job
// leaves to the custodian.
func (s *Spec) sourceLayout(k keys.KEK) DEKLayout {
	sf, _, _ := s.Formats()
	return sideLayout(sf, s.SourceKEK, s.SourceWrap, k)
}

func (s *Spec) targetLayout(k keys.KEK) DEKLayout {
	_, tf, _ := s.Formats()
	return sideLayout(tf, s.TargetKEK, s.TargetWrap, k)
}

// SourceLayout is the layout of spec's source DEK table (for the plan).
func SourceLayout(spec *Spec, k keys.KEK) DEKLayout { return spec.sourceLayout(k) }

func sideLayout(f format.Format, kek, wrap string, k keys.KEK) DEKLayout {
	l := DEKLayout{KEK: kek, Wrap: wrap}
	if f != nil {
		l.Table = format.TableOf(f)
	}
	if k != nil {
		l.KEK, l.Wrap = k.URI(), k.Mechanism()
	}
	return l
}

// readDEKRows streams a DEK table file of rekey's own layout in batches.
func readDEKRows(ctx context.Context, path string, batch int, fn func([]schemas.DEKRow) error) error {
	return readDEKTable(ctx, DEKLayout{}, path, batch, func(rows []schemas.DEKRow, _ []parquet.Row) error { return fn(rows) })
}

// readDEKRowsIn is readDEKRows for a DEK table of layout l.
func readDEKRowsIn(ctx context.Context, l DEKLayout, path string, batch int, fn func([]schemas.DEKRow) error) error {
	return readDEKTable(ctx, l, path, batch, func(rows []schemas.DEKRow, _ []parquet.Row) error { return fn(rows) })
}

// readDEKTable streams a DEK table file of layout l in batches. For an
// application's table raw holds each row as read (valid during the call),
// for a rewrap to write back with only the wrapped key replaced; it is nil
// for rekey's own.
func readDEKTable(ctx context.Context, l DEKLayout, path string, batch int, fn func(rows []schemas.DEKRow, raw []parquet.Row) error) error {
	pf, f, err := openParquet(ctx, path)
	if err != nil {
		return err
	}
	defer f.Close()
	if !l.Table.App() {
		for _, col := range []string{"dek_id", "kek", "wrap", "wrapped"} {
			if _, ok := pf.Schema().Lookup(col); !ok {
				return fmt.Errorf("%s is not a rekey DEK table: no column %q (see docs/FORMAT.md; a DEK table in an application's layout is described by the format's table_id_column, table_key_column and table_key_encoding)", path, col)
			}
		}
		r := parquet.NewGenericReader[schemas.DEKRow](f)
		defer r.Close()
		buf := make([]schemas.DEKRow, batch)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				if ferr := fn(buf[:n], nil); ferr != nil {
					return ferr
				}
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read %s: %w", path, err)
			}
		}
	}
	c, err := appColumns(pf.Schema(), l.Table, path)
	if err != nil {
		return err
	}
	raw := make([]parquet.Row, batch)
	out := make([]schemas.DEKRow, batch)
	return readBatches(path, pf, raw, func(n int) error {
		for i := 0; i < n; i++ {
			out[i] = appRow(raw[i], c, l)
		}
		return fn(out[:n], raw[:n])
	})
}

// AppKCVColumn is the column of key check values (schemas.KCV) in the
// DEK tables rekey writes in an application's layout: a resumed run and
// verify tell a wrong key by it, as in rekey's own tables. Applications
// that read their columns by name do not see it; a table without it is
// read as one whose rows have no kcv.
const AppKCVColumn = "rekey_kcv"

// appCols are the leaf column indexes of an application's DEK table.
type appCols struct{ id, key, kcv int } // kcv: -1 when absent

// appColumns finds an application table's id, wrapped-key and (optional)
// rekey_kcv columns.
func appColumns(schema *parquet.Schema, t format.Table, path string) (appCols, error) {
	find := func(name, opt string) (int, error) {
		c, ok := schema.Lookup(name)
		if !ok {
			return 0, fmt.Errorf("DEK table file %s has no column %q (the format's %s; its columns: %v): set %s in the format options", path, name, opt, leafNames(schema), opt)
		}
		if c.MaxRepetitionLevel > 0 || c.Node.Type().Kind() != parquet.ByteArray {
			return 0, fmt.Errorf("DEK table file %s: column %q (%s) is %s; rekey reads flat BYTE_ARRAY (string or binary) columns", path, name, opt, c.Node.Type())
		}
		return c.ColumnIndex, nil
	}
	c := appCols{kcv: -1}
	var err error
	if c.id, err = find(t.IDColumn, "table_id_column"); err != nil {
		return c, err
	}
	if c.key, err = find(t.KeyColumn, "table_key_column"); err != nil {
		return c, err
	}
	if _, ok := schema.Lookup(AppKCVColumn); ok && t.IDColumn != AppKCVColumn && t.KeyColumn != AppKCVColumn {
		if c.kcv, err = find(AppKCVColumn, "key check values rekey writes"); err != nil {
			return c, err
		}
	}
	return c, nil
}

// appRow is an application table row as a DEKRow. A value that cannot be
// one leaves the row invalid (Validate says why), to become its failed
// ledger row like any malformed row: an empty dek_id or wrapped key, a
// wrapped key not in the table's encoding (Invalid), a kcv of the wrong
// size.
func appRow(row parquet.Row, c appCols, l DEKLayout) schemas.DEKRow {
	r := schemas.DEKRow{KEK: l.KEK, Wrap: l.Wrap}
	if i := findValue(row, c.id); i >= 0 && !row[i].IsNull() {
		r.DEKID = string(row[i].ByteArray())
	}
	if i := findValue(row, c.kcv); i >= 0 && !row[i].IsNull() {
		r.KCV = bytes.Clone(row[i].ByteArray())
	}
	i := findValue(row, c.key)
	if i < 0 || row[i].IsNull() {
		return r // no wrapped key: Validate names it
	}
	blob, err := l.Table.DecodeKey(row[i].ByteArray())
	if err != nil {
		r.Invalid = err.Error()
		return r
	}
	r.Wrapped = bytes.Clone(blob)
	return r
}

// dekOut is the target DEK table file of a unit: rekey's own rows, or an
// application's table (a rewrap's source rows with the wrapped key
// replaced, or fresh id and key rows).
type dekOut interface {
	// write writes the target rows out, each with its source row raw[i]
	// (nil for rekey's own layout, or a new table).
	write(out []schemas.DEKRow, raw []parquet.Row) error
	commit() error
	abort()
	// partial marks the file as not finished for --incremental.
	partial()
}

// noDEKOut stands for an output that could not be made because the source
// is unreadable: the unit fails as a file before anything is written.
type noDEKOut struct{}

func (noDEKOut) write([]schemas.DEKRow, []parquet.Row) error {
	return errors.New("the source DEK table file could not be read when its unit began (a passing storage error?): nothing was written for it; re-run with --resume")
}
func (noDEKOut) commit() error {
	return errors.New("the source DEK table file could not be read when its unit began: nothing was written for it; re-run with --resume")
}
func (noDEKOut) abort()   {}
func (noDEKOut) partial() {}

type ownDEKOut struct{ w *rowWriter[schemas.DEKRow] }

func (o ownDEKOut) write(out []schemas.DEKRow, _ []parquet.Row) error { return o.w.write(out) }
func (o ownDEKOut) commit() error                                     { return o.w.commit() }
func (o ownDEKOut) abort()                                            { o.w.abort() }
func (o ownDEKOut) partial() {
	o.w.PW.SetKeyValueMetadata(MetaSourceFingerprint, "partial")
}

// appDEKOut writes an application's DEK table: with a source schema (a
// rewrap) every source row is written back with its wrapped-key value
// replaced; without one, rows of the id and wrapped-key columns.
type appDEKOut struct {
	t    format.Table
	path string
	out  storage.Writer
	keep *schemaKeeper // nil for a new table
	pw   *parquet.GenericWriter[any]
	cols appCols
	rows []parquet.Row
}

// createDEKOut creates the target DEK table file at path in layout t;
// src is the source file's schema to keep (a rewrap), nil for a new table.
func createDEKOut(ctx context.Context, t format.Table, path string, src *parquet.File, opts ...parquet.WriterOption) (dekOut, error) {
	if !t.App() {
		w, err := createRows[schemas.DEKRow](ctx, path, opts...)
		if err != nil {
			return nil, err
		}
		return ownDEKOut{w}, nil
	}
	out, err := storage.Create(ctx, path)
	if err != nil {
		return nil, rowio.OutputErr(path, err)
	}
	o := &appDEKOut{t: t, path: path, out: out}
	var schema *parquet.Schema
	var w io.Writer = out
	if src != nil {
		o.keep = keepSchema(out, path, src)
		w, schema = o.keep, outputSchema(src.Schema(), nil)
	} else {
		node := func() parquet.Node {
			if t.KeyText() {
				return parquet.String()
			}
			return parquet.Leaf(parquet.ByteArrayType)
		}
		// A new table: the id, the wrapped key and its kcv (for a
		// resume's and verify's key check).
		schema = parquet.NewSchema("dek_table", parquet.Group{t.IDColumn: parquet.String(), t.KeyColumn: node(),
			AppKCVColumn: parquet.Optional(parquet.Leaf(parquet.ByteArrayType))})
	}
	if o.cols, err = appColumns(schema, t, path); err != nil {
		_ = out.Abort()
		return nil, err
	}
	o.pw = parquet.NewGenericWriter[any](w, append([]parquet.WriterOption{schema}, opts...)...)
	return o, nil
}

func (o *appDEKOut) write(out []schemas.DEKRow, raw []parquet.Row) error {
	o.rows = o.rows[:0]
	for i := range out {
		key := parquet.ByteArrayValue(o.t.EncodeKey(out[i].Wrapped))
		var row parquet.Row
		if o.keep != nil {
			row = raw[i].Clone()
			k := findValue(row, o.cols.key)
			if k < 0 {
				return fmt.Errorf("%s: a source row has no value in column %q", o.path, o.t.KeyColumn)
			}
			row[k] = key.Level(row[k].RepetitionLevel(), row[k].DefinitionLevel(), o.cols.key)
		} else {
			kcv := parquet.NullValue().Level(0, 0, o.cols.kcv)
			if len(out[i].KCV) > 0 {
				kcv = parquet.ByteArrayValue(out[i].KCV).Level(0, 1, o.cols.kcv)
			}
			row = parquet.Row{parquet.ByteArrayValue([]byte(out[i].DEKID)).Level(0, 0, o.cols.id), key.Level(0, 0, o.cols.key), kcv}
			slices.SortFunc(row, func(a, b parquet.Value) int { return a.Column() - b.Column() })
		}
		o.rows = append(o.rows, row)
	}
	_, err := o.pw.WriteRows(o.rows)
	return rowio.OutputErr(o.path, err)
}

func (o *appDEKOut) commit() error {
	if o.keep != nil {
		o.keep.closing()
	}
	if err := o.pw.Close(); err != nil {
		_ = o.out.Abort()
		return rowio.OutputErr(o.path, err)
	}
	if o.keep != nil {
		if err := o.keep.Commit(); err != nil {
			_ = o.out.Abort()
			return rowio.OutputErr(o.path, err)
		}
		return nil
	}
	return rowio.OutputErr(o.path, o.out.Commit())
}

func (o *appDEKOut) abort()   { _ = o.out.Abort() }
func (o *appDEKOut) partial() { o.pw.SetKeyValueMetadata(MetaSourceFingerprint, "partial") }
