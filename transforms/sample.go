package transforms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/parquet-go/parquet-go"

	"rekey/providers/storage"
	"rekey/schemas"
)

func init() {
	register.DoFn3x1[context.Context, string, func(bool), error](&NeedCellProofFn{})
	register.DoFn4x1[context.Context, []byte, func(*bool) bool, func(string), error](&ListSampleFilesFn{})
	register.DoFn3x1[context.Context, string, func(string, SampleCell), error](&SampleCellsFn{})
	register.Function2x1[SampleCell, SampleCell, SampleCell](smallerSample)
	register.Emitter1[bool]()
	register.Emitter2[string, SampleCell]()
	register.Iter1[bool]()
	register.Iter1[SampleCell]()
}

// MaxSampleCellBytes caps the ciphertext a sample carries to RewrapFn: a DEK
// whose smallest cell is larger gets a reference (file, row, column) and
// RewrapFn reads that one cell back. It bounds the side input at about this
// much per DEK of a table without kcv.
const MaxSampleCellBytes = 1024

// SampleCell is the cell that proves one DEK: the smallest non-null cell of
// the dataset encrypted under DEKID (ties: first file, row, column). It is
// ciphertext, never plaintext. An element with an empty DEKID reports a
// record file that could not be sampled (Problem).
type SampleCell struct {
	DEKID    string
	File     string // relative to source.data
	Row      int64  // row index in the file
	Column   string
	RecordID string   // canonical text, as in the AAD
	Fields   []string // values of the source format's template columns (format.Needs)
	Size     int      // bytes of the cell
	Cell     []byte   // the cell, when Size <= MaxSampleCellBytes
	Problem  string
}

// less orders samples: smaller cells first, then by place, so the choice
// does not depend on how the runner split the work.
func (a *SampleCell) less(b *SampleCell) bool {
	if a.Size != b.Size {
		return a.Size < b.Size
	}
	if a.File != b.File {
		return a.File < b.File
	}
	if a.Row != b.Row {
		return a.Row < b.Row
	}
	return a.Column < b.Column
}

// smallerSample combines two samples of one DEK (or two problem reports).
func smallerSample(a, b SampleCell) SampleCell {
	if a.DEKID == "" {
		if b.Problem < a.Problem && b.Problem != "" || a.Problem == "" {
			return b
		}
		return a
	}
	if b.less(&a) {
		return b
	}
	return a
}

// NeedCellProofFn emits, for one DEK table file, whether any of its rows
// lacks a kcv (so only then is the dataset read). A file that cannot be read
// says true: the cheap answer is not worth a wrong one.
type NeedCellProofFn struct {
	Spec Spec
}

// ProcessElement reads DEK table file rel.
func (f *NeedCellProofFn) ProcessElement(ctx context.Context, rel string, emit func(bool)) error {
	need := false
	err := readDEKRowsIn(ctx, f.Spec.sourceLayout(nil), storage.Join(f.Spec.SourceDEKs, rel), f.Spec.rowBatch(), func(rows []schemas.DEKRow) error {
		for i := range rows {
			need = need || len(rows[i].KCV) == 0
		}
		return nil
	})
	emit(need || err != nil)
	return nil
}

// ListSampleFilesFn lists the record files of source.data, only when some
// DEK table row lacks a kcv.
type ListSampleFilesFn struct {
	Spec Spec
}

// ProcessElement lists source.data once per impulse.
func (f *ListSampleFilesFn) ProcessElement(ctx context.Context, _ []byte, need func(*bool) bool, emit func(string)) error {
	needed, v := false, false
	for need(&v) {
		needed = needed || v
	}
	if !needed {
		return nil
	}
	files, err := storage.List(ctx, f.Spec.SourceData)
	if err != nil {
		return fmt.Errorf("list source.data %s (the DEK table has DEKs without kcv, proven by opening one of their cells): %w", f.Spec.SourceData, err)
	}
	for _, rel := range files {
		if isParquet(rel) {
			emit(rel)
		}
	}
	return nil
}

// SampleCellsFn reads one record file's dek_id, record id and encrypted
// columns (no other column, no decryption) and emits the smallest cell of
// each DEK in it.
type SampleCellsFn struct {
	Spec Spec
}

// ProcessElement samples record file rel.
func (f *SampleCellsFn) ProcessElement(ctx context.Context, rel string, emit func(string, SampleCell)) error {
	markStarted()
	best, err := sampleFile(ctx, &f.Spec, rel)
	if err != nil {
		emit("", SampleCell{Problem: fmt.Sprintf("%s: %v", storage.Join(f.Spec.SourceData, rel), err)})
		return nil
	}
	ids := make([]string, 0, len(best))
	for id := range best {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		emit(id, *best[id])
	}
	return nil
}

func sampleFile(ctx context.Context, spec *Spec, rel string) (map[string]*SampleCell, error) {
	pf, in, err := openParquet(ctx, storage.Join(spec.SourceData, rel))
	if err != nil {
		return nil, err
	}
	defer in.Close()
	sf, _, err := spec.Formats()
	if err != nil {
		return nil, err
	}
	layout, err := layoutFor(pf.Schema(), spec, sf, nil)
	if err != nil {
		return nil, err
	}
	names := leafNames(pf.Schema())
	best := map[string]*SampleCell{}
	var base int64
	for _, rg := range pf.RowGroups() {
		chunks := rg.ColumnChunks()
		n := rg.NumRows()
		deks, err := columnValues(chunks[layout.dek], n)
		if err != nil {
			return nil, fmt.Errorf("column %s: %w", spec.DEKColumn, err)
		}
		ids, err := columnValues(chunks[layout.id], n)
		if err != nil {
			return nil, fmt.Errorf("column %s: %w", spec.IDColumn, err)
		}
		needs := make([][]parquet.Value, len(layout.needs))
		for k, c := range layout.needs {
			if needs[k], err = columnValues(chunks[c], n); err != nil {
				return nil, fmt.Errorf("column %s: %w", names[c], err)
			}
		}
		for ci, col := range layout.enc {
			var i int64
			err := eachValue(chunks[col], func(v parquet.Value) error {
				row := i
				i++
				if row >= n {
					return fmt.Errorf("more values than the row group's %d rows", n)
				}
				if v.IsNull() || deks[row].IsNull() || ids[row].IsNull() {
					return nil
				}
				size := len(v.ByteArray())
				if size < sf.CellLen(0) || sf.MaxPlaintext(size) > spec.maxCell() {
					return nil // not a cell a DEK could open
				}
				cand := SampleCell{File: rel, Row: base + row, Column: layout.encName[ci], Size: size}
				cur := best[string(deks[row].ByteArray())]
				if cur != nil && !cand.less(cur) {
					return nil
				}
				rid, err := recordID(ids[row])
				if err != nil {
					return nil
				}
				cand.DEKID, cand.RecordID = string(deks[row].ByteArray()), rid
				for k := range needs {
					fv, err := recordID(needs[k][row])
					if err != nil {
						return nil // a row without its template values proves nothing
					}
					cand.Fields = append(cand.Fields, fv)
				}
				if size <= MaxSampleCellBytes {
					cand.Cell = bytes.Clone(v.ByteArray())
				}
				best[cand.DEKID] = &cand
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("column %s: %w", layout.encName[ci], err)
			}
		}
		base += n
	}
	return best, nil
}

// columnValues reads a flat column chunk whole (nulls included), one value
// per row.
func columnValues(c parquet.ColumnChunk, rows int64) ([]parquet.Value, error) {
	out := make([]parquet.Value, 0, rows)
	err := eachValue(c, func(v parquet.Value) error {
		out = append(out, v.Clone())
		return nil
	})
	if err == nil && int64(len(out)) != rows {
		err = fmt.Errorf("%d values for %d rows", len(out), rows)
	}
	return out, err
}

var errStopValues = errors.New("stop")

// eachValue calls fn with every value of a column chunk, in row order; the
// value's bytes are valid during the call only. fn returning errStopValues
// ends the walk without error.
func eachValue(c parquet.ColumnChunk, fn func(parquet.Value) error) error {
	pages := c.Pages()
	defer pages.Close()
	buf := make([]parquet.Value, 256)
	for {
		p, err := pages.ReadPage()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		r := p.Values()
		for {
			n, err := r.ReadValues(buf)
			for _, v := range buf[:n] {
				if ferr := fn(v); ferr != nil {
					parquet.Release(p)
					if ferr == errStopValues {
						return nil
					}
					return ferr
				}
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				parquet.Release(p)
				return err
			}
		}
		parquet.Release(p)
	}
}

// readSampleCell reads back a sample too large to travel with the side
// input.
func readSampleCell(ctx context.Context, spec *Spec, sc *SampleCell) ([]byte, error) {
	pf, in, err := openParquet(ctx, storage.Join(spec.SourceData, sc.File))
	if err != nil {
		return nil, err
	}
	defer in.Close()
	leaf, ok := pf.Schema().Lookup(sc.Column)
	if !ok {
		return nil, fmt.Errorf("no column %q", sc.Column)
	}
	row := sc.Row
	for _, rg := range pf.RowGroups() {
		if row >= rg.NumRows() {
			row -= rg.NumRows()
			continue
		}
		var cell []byte
		var i int64
		err := eachValue(rg.ColumnChunks()[leaf.ColumnIndex], func(v parquet.Value) error {
			if i == row {
				if !v.IsNull() {
					cell = bytes.Clone(v.ByteArray())
				}
				return errStopValues
			}
			i++
			return nil
		})
		if err != nil {
			return nil, err
		}
		if len(cell) != sc.Size {
			return nil, fmt.Errorf("the cell changed since it was sampled (%d bytes, was %d)", len(cell), sc.Size)
		}
		return cell, nil
	}
	return nil, fmt.Errorf("row %d is past the end of the file", sc.Row)
}

// SampleCells picks, for every DEK of a table without kcv, the cell of
// source.data that proves it (see proveDEK): the smallest one, at most one
// per DEK. It reads source.data only when some row of the DEK table files
// lacks a kcv, and only the dek_id, record id and encrypted columns. The
// result is RewrapDEKTables's side input; empty when the job names no
// dataset.
func SampleCells(s beam.Scope, spec Spec, dekFiles beam.PCollection) beam.PCollection {
	s = s.Scope("SampleCells")
	if spec.SourceData == "" {
		return beam.CreateList(s, []SampleCell{})
	}
	need := beam.ParDo(s, &NeedCellProofFn{Spec: spec}, dekFiles)
	files := beam.ParDo(s, &ListSampleFilesFn{Spec: spec}, beam.Impulse(s), beam.SideInput{Input: need})
	kvs := beam.ParDo(s, &SampleCellsFn{Spec: spec}, beam.Reshuffle(s, files))
	return beam.DropKey(s, beam.CombinePerKey(s, smallerSample, kvs))
}
