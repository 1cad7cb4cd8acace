// Package rowio writes typed Parquet rows to rekey's storage (local paths,
// s3://, oss://) as one pending object that becomes visible only when
// committed, and marks every error writing an output as fatal for the run.
// It is Beam-free: the DoFns in transforms, the ledger package and the CLI
// all use it.
//
// Limits: one writer per object, not safe for concurrent use; rows are
// snappy-compressed with parquet-go's defaults otherwise.
package rowio

import (
	"context"
	"errors"
	"fmt"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/snappy"

	"rekey/providers/storage"
)

// Writer writes rows of type T to a pending object and commits it.
type Writer[T any] struct {
	// PW is the Parquet writer, for what Write does not cover (key-value
	// metadata, raw rows, flushing row groups).
	PW   *parquet.GenericWriter[T]
	out  storage.Writer
	path string
	n    int64
}

// Create starts the object at path. opts come after rekey's default
// (snappy), so they can override it.
func Create[T any](ctx context.Context, path string, opts ...parquet.WriterOption) (*Writer[T], error) {
	out, err := storage.Create(ctx, path)
	if err != nil {
		return nil, OutputErr(path, err)
	}
	opts = append([]parquet.WriterOption{parquet.Compression(&snappy.Codec{})}, opts...)
	return &Writer[T]{out: out, PW: parquet.NewGenericWriter[T](out, opts...), path: path}, nil
}

// Path is where the object goes.
func (w *Writer[T]) Path() string { return w.path }

// Rows is the number of rows written so far.
func (w *Writer[T]) Rows() int64 { return w.n }

// Write appends rows.
func (w *Writer[T]) Write(rows []T) error {
	n, err := w.PW.Write(rows)
	w.n += int64(n)
	return OutputErr(w.path, err)
}

// Commit finishes the file and makes it visible under its name.
func (w *Writer[T]) Commit() error {
	if err := w.PW.Close(); err != nil {
		_ = w.out.Abort()
		return OutputErr(w.path, err)
	}
	return OutputErr(w.path, w.out.Commit())
}

// Abort drops the pending object; nothing appears under its name. A nil
// writer is a no-op, so error paths can abort unconditionally.
func (w *Writer[T]) Abort() {
	if w != nil {
		_ = w.out.Abort()
	}
}

// Errors writing what rekey produces (the target dataset, the target DEK
// table, the ledger) are fatal for the run, not failures of the record or
// DEK being written: a full disk or a refused bucket fails every later unit
// the same way, and the data itself is fine. The run stops (exit 1) and a
// --resume after the cause is fixed finishes it.

// OutputError is an error writing one of rekey's outputs.
type OutputError struct {
	Path string
	Err  error
}

func (e *OutputError) Error() string {
	return fmt.Sprintf("write %s: %v (rekey stops: fix the cause, e.g. free space or permissions, then re-run with --resume)", e.Path, e.Err)
}

func (e *OutputError) Unwrap() error { return e.Err }

// OutputErr marks err as an error writing path (nil stays nil).
func OutputErr(path string, err error) error {
	if err == nil {
		return nil
	}
	var oe *OutputError
	if errors.As(err, &oe) {
		return err
	}
	return &OutputError{Path: path, Err: err}
}

// IsOutputErr reports whether err is an error writing an output.
func IsOutputErr(err error) bool {
	var oe *OutputError
	return errors.As(err, &oe)
}
