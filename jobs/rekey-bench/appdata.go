package main

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/snappy"

	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
)

// Datasets in the "aes-gcm" cell format (schemas/format), written the way
// an application writes them, not by rekey: AES-256-GCM from crypto/cipher,
// a random 12-byte nonce per cell, the cell stored as base64 text of
// nonce‖ciphertext‖tag, the record id as AAD. Keys are 256-bit, from
// crypto/rand, wrapped by the bench's source KEK through providers/keys
// (the same custodian path as rekey gen's DEKs), and kept either in a DEK
// table in rekey's layout (keys: table, bound to dek_id) or in a
// wrapped-key column of each row (keys: column, base64, unbound).

// gcmTableOptions and gcmColumnOptions are the job file's
// source.format_options for the two shapes.
var (
	gcmTableOptions  = map[string]string{"encoding": "base64", "aad": "{id}"}
	gcmColumnOptions = map[string]string{"encoding": "base64", "aad": "{id}", "keys": "column", "key_column": "wrapped_key", "key_encoding": "base64"}
)

// gcmTableRow is a record file with keys in a DEK table.
type gcmTableRow struct {
	ID      int64     `parquet:"id"`
	DEKID   string    `parquet:"dek_id"`
	Tenant  string    `parquet:"tenant"`
	Payload string    `parquet:"payload"`
	Created time.Time `parquet:"created,timestamp(microsecond)"`
}

// gcmColumnRow is a record file with each row's wrapped key beside it.
type gcmColumnRow struct {
	ID         int64     `parquet:"id"`
	Tenant     string    `parquet:"tenant"`
	Payload    string    `parquet:"payload"`
	WrappedKey string    `parquet:"wrapped_key"`
	Created    time.Time `parquet:"created,timestamp(microsecond)"`
}

// formatFile records a dataset's cell format beside it, so `rekey-bench
// profile --dataset` runs it with the right options.
const formatFile = "format.json"

type datasetFormat struct {
	Format  string            `json:"format"`
	Options map[string]string `json:"format_options"`
}

// newGCMDataset describes an aes-gcm dataset of deks keys, which records
// cycle over (deks = files x records: one key per record).
func newGCMDataset(root, name string, cell, files, records, deks int, column bool) *dataset {
	ds := newDataset(root, name, cell, files, records, deks)
	ds.Format = "aes-gcm"
	ds.FormatOptions = gcmTableOptions
	if column {
		ds.FormatOptions = gcmColumnOptions
		ds.DEKs = "" // no DEK table: the keys are in the records
	}
	return ds
}

// generateGCM writes ds (unless a previous bench run left it with the same
// parameters). src is the source KEK, opened with workers sessions.
func generateGCM(ctx context.Context, src keys.KEK, ds *dataset, workers int) error {
	column := ds.ColumnKeys()
	args := []string{"aes-gcm-gen/v1", "kek=" + src.URI(), "cell=" + strconv.Itoa(ds.Cell), "files=" + strconv.Itoa(ds.Files),
		"records=" + strconv.Itoa(ds.Records), "keys=" + strconv.Itoa(ds.NumDEKs), "column=" + strconv.FormatBool(column)}
	if stampMatches(ds.Dir, args) {
		fmt.Fprintf(os.Stderr, "  dataset %s: reusing %s\n", ds.Name, ds.Dir)
		return nil
	}
	if err := os.RemoveAll(ds.Dir); err != nil {
		return err
	}
	for _, d := range []string{ds.Data, ds.DEKs} {
		if d != "" {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
	}
	fmt.Fprintf(os.Stderr, "  dataset %s: %d files x %d records of %s, %d keys (%s), aes-gcm base64 cells\n",
		ds.Name, ds.Files, ds.Records, cellName(ds.Cell), ds.NumDEKs, map[bool]string{false: "DEK table", true: "wrapped_key column"}[column])
	start := time.Now()

	// The keys: wrapped in parallel (sessions = workers), as an app's
	// key service would, then sealed cells with software AES-GCM.
	type appKey struct {
		id      string
		aead    cipher.AEAD
		wrapped []byte
		kcv     []byte
	}
	ks := make([]appKey, ds.NumDEKs)
	if err := forEach(len(ks), workers, func(i int) error {
		raw := make([]byte, keys.DEKSize)
		defer clear(raw)
		if _, err := rand.Read(raw); err != nil {
			return err
		}
		dek, err := keys.NewDEK(raw)
		if err != nil {
			return err
		}
		defer dek.Zero()
		k := appKey{id: fmt.Sprintf("app-%07d", i)}
		b := keys.ByID(k.id) // keys: table: bound to dek_id
		if column {
			b = keys.Binding{} // keys: column, binding: none
		}
		if k.wrapped, err = src.Wrap(ctx, b, dek); err != nil {
			return fmt.Errorf("wrap key %d with the source KEK: %w", i, err)
		}
		block, err := aes.NewCipher(raw)
		if err != nil {
			return err
		}
		if k.aead, err = cipher.NewGCM(block); err != nil {
			return err
		}
		k.kcv = schemas.KCV(raw, k.id)
		ks[i] = k
		return nil
	}); err != nil {
		return err
	}
	if !column {
		rows := make([]schemas.DEKRow, len(ks))
		now := time.Now().UTC()
		for i, k := range ks {
			rows[i] = schemas.DEKRow{DEKID: k.id, KEK: src.URI(), Wrap: src.Mechanism(), Wrapped: k.wrapped, Created: now, KCV: k.kcv}
		}
		if err := writeParquet(filepath.Join(ds.DEKs, "part-00000.parquet"), rows); err != nil {
			return err
		}
	}
	spec := &transforms.GenSpec{RecordSize: ds.Cell, Records: ds.Records}
	rg := rowGroupRows(ds.Cell)
	err := forEach(ds.Files, workers, func(f int) error {
		path := filepath.Join(ds.Data, fmt.Sprintf("part-%05d.parquet", f))
		nonce := make([]byte, 12)
		// seal seals record r of file f: what an application stores,
		// base64(nonce ‖ Seal(...)), Seal's output being ciphertext ‖ tag.
		seal := func(r int) (int64, *appKey, string, error) {
			id := transforms.GenRecordID(spec, f, r)
			k := &ks[int(id%int64(len(ks)))]
			pt := transforms.GenPlaintext(spec, "payload", id)
			if _, err := rand.Read(nonce); err != nil {
				return 0, nil, "", err
			}
			raw := k.aead.Seal(append([]byte(nil), nonce...), nonce, pt, []byte(strconv.FormatInt(id, 10)))
			return id, k, base64.StdEncoding.EncodeToString(raw), nil
		}
		if column {
			return writeRecords(path, ds.Records, rg, func(r int) (gcmColumnRow, error) {
				id, k, c, err := seal(r)
				if err != nil {
					return gcmColumnRow{}, err
				}
				return gcmColumnRow{ID: id, Tenant: fmt.Sprintf("tenant-%d", id%13), Payload: c,
					WrappedKey: base64.StdEncoding.EncodeToString(k.wrapped), Created: time.Unix(1700000000+id, 0).UTC()}, nil
			})
		}
		return writeRecords(path, ds.Records, rg, func(r int) (gcmTableRow, error) {
			id, k, c, err := seal(r)
			if err != nil {
				return gcmTableRow{}, err
			}
			return gcmTableRow{ID: id, DEKID: k.id, Tenant: fmt.Sprintf("tenant-%d", id%13), Payload: c, Created: time.Unix(1700000000+id, 0).UTC()}, nil
		})
	})
	if err != nil {
		return err
	}
	b, _ := json.Marshal(datasetFormat{Format: ds.Format, Options: ds.FormatOptions})
	if err := os.WriteFile(filepath.Join(ds.Dir, formatFile), b, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  dataset %s: %s\n", ds.Name, time.Since(start).Round(time.Millisecond))
	return writeStamp(ds.Dir, args)
}

// readDatasetFormat fills ds's format from its format file, if it has one.
func readDatasetFormat(ds *dataset) error {
	b, err := os.ReadFile(filepath.Join(ds.Dir, formatFile))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var f datasetFormat
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("%s: %v", filepath.Join(ds.Dir, formatFile), err)
	}
	ds.Format, ds.FormatOptions = f.Format, f.Options
	if ds.ColumnKeys() || ds.CellKeys() {
		ds.DEKs = ""
	}
	return nil
}

// writeParquet writes rows as one snappy-compressed file (as rekey gen does).
func writeParquet[T any](path string, rows []T) error {
	return writeRecords(path, len(rows), len(rows), func(i int) (T, error) { return rows[i], nil })
}

// writeRecords writes n rows made by row to one snappy-compressed file (as
// rekey gen does), rg rows per row group, holding one row group in memory.
func writeRecords[T any](path string, n, rg int, row func(i int) (T, error)) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	rg = max(rg, 1)
	w := parquet.NewGenericWriter[T](f, parquet.Compression(&snappy.Codec{}), parquet.MaxRowsPerRowGroup(int64(rg)))
	buf := make([]T, 0, min(rg, n))
	for start := 0; start < n; start += rg {
		buf = buf[:0]
		for i := start; i < min(start+rg, n); i++ {
			r, err := row(i)
			if err != nil {
				return err
			}
			buf = append(buf, r)
		}
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	return f.Close()
}

// forEach runs fn(0..n-1) on up to g goroutines and returns the first error.
func forEach(n, g int, fn func(i int) error) error {
	var mu sync.Mutex
	var firstErr error
	next := 0
	var wg sync.WaitGroup
	for w := 0; w < max(1, min(g, n)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				stop := firstErr != nil
				mu.Unlock()
				if stop || i >= n {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}
