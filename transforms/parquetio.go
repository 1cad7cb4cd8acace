package transforms

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/encoding/thrift"
	"github.com/parquet-go/parquet-go/format"

	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/transforms/rowio"
)

// rowWriter is rowio's writer with the lower-case names the DoFns use.
type rowWriter[T any] struct{ *rowio.Writer[T] }

func createRows[T any](ctx context.Context, path string, opts ...parquet.WriterOption) (*rowWriter[T], error) {
	w, err := rowio.Create[T](ctx, path, opts...)
	if err != nil {
		return nil, err
	}
	return &rowWriter[T]{w}, nil
}

func (w *rowWriter[T]) write(rows []T) error { return w.Write(rows) }
func (w *rowWriter[T]) commit() error        { return w.Commit() }
func (w *rowWriter[T]) abort() {
	if w != nil {
		w.Abort()
	}
}

// schemaKeeper is the output of a re-encrypted record file: it gives the
// file its source's schema. parquet-go writes schema elements from its own
// types, not from the file it read: a logical type where the source has
// only a converted type (older writers, DuckDB), a type_length on every
// INT32/INT64/DOUBLE/BOOLEAN column, and no scale and precision on a
// DECIMAL without a logical type. A target keeps its source's schema, all
// but the encrypted columns' encoding and compression, which are not in the
// schema elements (docs/FORMAT.md).
//
// The bytes pass through until closing is called, just before the Parquet
// writer's Close; what Close writes (page indexes, the footer) is held back
// until Commit, which puts the source's schema elements into the footer. The
// footer is the last thing in a Parquet file, so no offset changes:
//
//	keep := keepSchema(out, dstPath, pf)
//	pw := parquet.NewWriter(keep, outputSchema(pf.Schema(), encrypted), ...)
//	... write the rows ...
//	keep.closing()
//	pw.Close()
//	keep.Commit()
type schemaKeeper struct {
	storage.Writer
	path string
	src  []format.SchemaElement
	// changed names source columns the target format writes differently
	// on purpose (a text cell column becoming binary, a wrapped-key column
	// becoming the dek_id column): their written elements are kept.
	changed map[string]bool
	// own: the target adds columns (a dek_id column for cells that carried
	// their DEKs): its schema is written as the Parquet writer made it.
	own  bool
	hold bool
	tail bytes.Buffer
}

// keepSchema wraps out, the pending object at path written from src.
func keepSchema(out storage.Writer, path string, src *parquet.File) *schemaKeeper {
	return &schemaKeeper{Writer: out, path: path, src: src.Metadata().Schema}
}

func (k *schemaKeeper) Write(p []byte) (int, error) {
	if k.hold {
		return k.tail.Write(p)
	}
	return k.Writer.Write(p)
}

// closing marks the end of the rows: the Parquet writer's Close follows.
func (k *schemaKeeper) closing() { k.hold = true }

// Commit writes the held-back tail with the source's schema in its footer
// and commits the object.
func (k *schemaKeeper) Commit() error {
	if !k.hold {
		return fmt.Errorf("write %s: the footer was not held back (closing was not called before the Parquet writer's Close); nothing committed", k.path)
	}
	tail, err := k.tail.Bytes(), error(nil)
	if !k.own {
		tail, err = withSchema(tail, k.src, k.changed)
	}
	if err != nil {
		return fmt.Errorf("write %s: keep the source's schema: %w", k.path, err)
	}
	if _, err := k.Writer.Write(tail); err != nil {
		return fmt.Errorf("write %s: %w", k.path, err)
	}
	k.tail.Reset()
	return k.Writer.Commit()
}

// withSchema returns the end of a Parquet file, tail (the footer and what
// precedes it), with the footer's schema elements replaced by src. The
// written schema must have src's shape: the same elements in the same order
// with the same names, physical types, repetitions and children; only their
// annotations are taken from src.
func withSchema(tail []byte, src []format.SchemaElement, changed map[string]bool) ([]byte, error) {
	if len(tail) < 8 || string(tail[len(tail)-4:]) != "PAR1" {
		return nil, errors.New("the written file does not end with a Parquet footer")
	}
	n := int(binary.LittleEndian.Uint32(tail[len(tail)-8:]))
	if n > len(tail)-8 {
		return nil, fmt.Errorf("footer of %d bytes, but only %d bytes were held back", n, len(tail)-8)
	}
	start := len(tail) - 8 - n
	var proto thrift.CompactProtocol
	var md format.FileMetaData
	if err := thrift.Unmarshal(&proto, tail[start:len(tail)-8], &md); err != nil {
		return nil, fmt.Errorf("read the written footer: %w", err)
	}
	if err := sameShape(md.Schema, src, changed); err != nil {
		return nil, err
	}
	keep := slices.Clone(src)
	for i := range keep {
		if changed[keep[i].Name] && keep[i].NumChildren.V == 0 {
			keep[i] = md.Schema[i]
		}
	}
	md.Schema = keep
	footer, err := thrift.Marshal(&proto, &md)
	if err != nil {
		return nil, fmt.Errorf("encode the footer: %w", err)
	}
	out := make([]byte, 0, start+len(footer)+8)
	out = append(out, tail[:start]...)
	out = append(out, footer...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(footer)))
	return append(out, "PAR1"...), nil
}

// sameShape checks that schema elements written describe the same columns as
// src, so that taking src's annotations cannot change how the data reads.
func sameShape(written, src []format.SchemaElement, changed map[string]bool) error {
	if len(written) != len(src) {
		return fmt.Errorf("%d schema elements written, the source has %d", len(written), len(src))
	}
	rep := func(e *format.SchemaElement) format.FieldRepetitionType {
		if e.RepetitionType.Valid {
			return e.RepetitionType.V
		}
		return format.Required
	}
	for i := range src {
		w, s := &written[i], &src[i]
		switch {
		case w.Name != s.Name && !changed[s.Name]:
			return fmt.Errorf("schema element %d is %q, the source's is %q", i, w.Name, s.Name)
		case w.Type != s.Type || w.NumChildren.V != s.NumChildren.V:
			return fmt.Errorf("column %q: written as %v with %d children, the source has %v with %d", s.Name, w.Type, w.NumChildren.V, s.Type, s.NumChildren.V)
		case i > 0 && rep(w) != rep(s):
			return fmt.Errorf("column %q: written %v, the source is %v", s.Name, rep(w), rep(s))
		case s.Type.Valid && s.Type.V == format.FixedLenByteArray && w.TypeLength != s.TypeLength:
			return fmt.Errorf("column %q: written FIXED_LEN_BYTE_ARRAY(%d), the source's is (%d)", s.Name, w.TypeLength.V, s.TypeLength.V)
		}
	}
	return nil
}

// openParquet opens a Parquet object, turning a truncated or foreign file
// into an error that says so.
func openParquet(ctx context.Context, path string) (*parquet.File, storage.File, error) {
	f, err := storage.Open(ctx, path)
	if err != nil {
		return nil, nil, err
	}
	pf, err := parquet.OpenFile(f, f.Size(), parquet.SkipPageIndex(true), parquet.SkipBloomFilters(true))
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s is not a readable Parquet file (%d bytes; truncated or not Parquet?): %v", path, f.Size(), err)
	}
	return pf, f, nil
}

// ReadDEKTable reads every row of every file of a DEK table folder.
func ReadDEKTable(ctx context.Context, root string) ([]schemas.DEKRow, error) {
	files, err := storage.List(ctx, root)
	if err != nil {
		return nil, err
	}
	var all []schemas.DEKRow
	for _, rel := range files {
		if !isParquet(rel) {
			continue
		}
		err := readDEKRows(ctx, storage.Join(root, rel), 4096, func(rows []schemas.DEKRow) error {
			for _, r := range rows {
				r.Wrapped = append([]byte(nil), r.Wrapped...)
				all = append(all, r)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return all, nil
}

// ScanDEKTable streams every row of every file of a DEK table folder to fn,
// in batches (rows are only valid during the call), and counts the files.
func ScanDEKTable(ctx context.Context, root string, fn func(file string, rows []schemas.DEKRow) error, files *int) error {
	return ScanDEKTableIn(ctx, DEKLayout{}, root, fn, files)
}

// ScanDEKTableIn is ScanDEKTable for a DEK table of layout l.
func ScanDEKTableIn(ctx context.Context, l DEKLayout, root string, fn func(file string, rows []schemas.DEKRow) error, files *int) error {
	list, err := storage.List(ctx, root)
	if err != nil {
		return err
	}
	for _, rel := range list {
		if !isParquet(rel) {
			continue
		}
		*files++
		path := storage.Join(root, rel)
		if err := readDEKTable(ctx, l, path, 4096, func(rows []schemas.DEKRow, _ []parquet.Row) error { return fn(path, rows) }); err != nil {
			return err
		}
	}
	return nil
}

func isParquet(rel string) bool {
	return len(rel) > 8 && rel[len(rel)-8:] == ".parquet"
}
