package transforms

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/snappy"

	"rekey/providers/storage"
	"rekey/schemas"
)

// rowWriter writes typed Parquet rows to a pending object and commits it.
type rowWriter[T any] struct {
	out  storage.Writer
	pw   *parquet.GenericWriter[T]
	path string
	n    int64
}

func createRows[T any](ctx context.Context, path string, opts ...parquet.WriterOption) (*rowWriter[T], error) {
	out, err := storage.Create(ctx, path)
	if err != nil {
		return nil, err
	}
	opts = append([]parquet.WriterOption{parquet.Compression(&snappy.Codec{})}, opts...)
	return &rowWriter[T]{out: out, pw: parquet.NewGenericWriter[T](out, opts...), path: path}, nil
}

func (w *rowWriter[T]) write(rows []T) error {
	n, err := w.pw.Write(rows)
	w.n += int64(n)
	if err != nil {
		return fmt.Errorf("write %s: %w", w.path, err)
	}
	return nil
}

func (w *rowWriter[T]) commit() error {
	if err := w.pw.Close(); err != nil {
		_ = w.out.Abort()
		return fmt.Errorf("write %s: %w", w.path, err)
	}
	return w.out.Commit()
}

func (w *rowWriter[T]) abort() {
	if w != nil {
		_ = w.out.Abort()
	}
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

// readDEKRows streams a DEK table file in batches.
func readDEKRows(ctx context.Context, path string, batch int, fn func([]schemas.DEKRow) error) error {
	pf, f, err := openParquet(ctx, path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, col := range []string{"dek_id", "kek", "wrap", "wrapped"} {
		if _, ok := pf.Schema().Lookup(col); !ok {
			return fmt.Errorf("%s is not a rekey DEK table: no column %q (see docs/FORMAT.md)", path, col)
		}
	}
	r := parquet.NewGenericReader[schemas.DEKRow](f)
	defer r.Close()
	buf := make([]schemas.DEKRow, batch)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if ferr := fn(buf[:n]); ferr != nil {
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
		if err := readDEKRows(ctx, path, 4096, func(rows []schemas.DEKRow) error { return fn(path, rows) }); err != nil {
			return err
		}
	}
	return nil
}

// ReadLedger reads every row of one run's ledger.
func ReadLedger(ctx context.Context, ledger, runID string) ([]schemas.LedgerRow, error) {
	dir := RunLedgerDir(ledger, runID)
	files, err := storage.List(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("ledger of run %q: %w", runID, err)
	}
	var all []schemas.LedgerRow
	for _, rel := range files {
		if !isParquet(rel) {
			continue
		}
		rows, err := readLedgerPart(ctx, storage.Join(dir, rel))
		if err != nil {
			return nil, err
		}
		all = append(all, rows...)
	}
	return all, nil
}

func readLedgerPart(ctx context.Context, path string) ([]schemas.LedgerRow, error) {
	f, err := storage.Open(ctx, path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rows, err := parquet.Read[schemas.LedgerRow](f, f.Size())
	if err != nil {
		return nil, fmt.Errorf("read ledger part %s: %w", path, err)
	}
	return rows, nil
}

func isParquet(rel string) bool {
	return len(rel) > 8 && rel[len(rel)-8:] == ".parquet"
}
