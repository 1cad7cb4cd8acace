package main

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/snappy"

	"rekey/providers/keys"
	"rekey/schemas"
)

// aesRate is the software AES-256-GCM limit: bytes of plaintext per second
// through schemas.OpenCell (source key) then schemas.SealCell (target key,
// fresh nonce from crypto/rand), the per-cell work of a re-encrypt, with g
// goroutines for about d. With verify, each new cell is opened again too
// (rekey's verify before commit). Buffers are reused: this is the limit,
// not the pipeline.
func aesRate(cell, g int, d time.Duration, verify bool) (float64, error) {
	type worker struct {
		a, b  cipher.AEAD
		cells [][]byte
		ids   []string
	}
	newAEAD := func() (cipher.AEAD, error) {
		k := make([]byte, keys.DEKSize)
		if _, err := rand.Read(k); err != nil {
			return nil, err
		}
		dek, err := keys.NewDEK(k)
		if err != nil {
			return nil, err
		}
		return dek.AEAD()
	}
	ws := make([]worker, g)
	for w := range ws {
		var err error
		if ws[w].a, err = newAEAD(); err != nil {
			return 0, err
		}
		if ws[w].b, err = newAEAD(); err != nil {
			return 0, err
		}
		pt := make([]byte, cell)
		_, _ = rand.Read(pt)
		for i := 0; i < 16; i++ {
			id := strconv.Itoa(w*1000 + i)
			aad, _ := schemas.CellAAD(nil, "payload", id, "dek-a")
			c, err := schemas.SealCell(nil, ws[w].a, rand.Reader, pt, aad)
			if err != nil {
				return 0, err
			}
			ws[w].cells = append(ws[w].cells, c)
			ws[w].ids = append(ws[w].ids, id)
		}
	}
	var total atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for w := range ws {
		wg.Add(1)
		go func(w *worker) {
			defer wg.Done()
			var aad, aad2, pt, ct, back []byte
			var n int64
			for i := 0; ; i++ {
				if i%8 == 0 && time.Now().After(deadline) {
					break
				}
				k := i % len(w.cells)
				var err error
				aad, _ = schemas.CellAAD(aad[:0], "payload", w.ids[k], "dek-a")
				if pt, err = schemas.OpenCell(pt[:0], w.a, w.cells[k], aad); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				aad2, _ = schemas.CellAAD(aad2[:0], "payload", w.ids[k], "dek-b")
				if ct, err = schemas.SealCell(ct[:0], w.b, rand.Reader, pt, aad2); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				if verify {
					if back, err = schemas.OpenCell(back[:0], w.b, ct, aad2); err != nil || !bytes.Equal(back, pt) {
						once.Do(func() { firstErr = fmt.Errorf("verify: %v", err) })
						return
					}
				}
				n += int64(cell)
			}
			total.Add(n)
		}(&ws[w])
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(total.Load()) / el, nil
}

// hsmRate is the HSM limit: DEKs per second for g goroutines, each doing,
// per DEK of the table, src.Unwrap then dst.Wrap (and with verify
// dst.Unwrap of the new wrapped key and a compare: what rewrap does per
// DEK), through providers/keys, so the code path into crypto11 and SoftHSM
// is the pipeline's own.
func hsmRate(ctx context.Context, src, dst keys.KEK, rows []schemas.DEKRow, g int, d time.Duration, verify bool) (float64, error) {
	var next, done atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for w := 0; w < g; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				r := &rows[int(next.Add(1)-1)%len(rows)]
				err := func() error {
					dek, err := src.Unwrap(ctx, keys.ByID(r.DEKID), r.Wrap, r.Wrapped)
					if err != nil {
						return err
					}
					defer dek.Zero()
					wrapped, err := dst.Wrap(ctx, keys.ByID(r.DEKID), dek)
					if err != nil {
						return err
					}
					if verify {
						back, err := dst.Unwrap(ctx, keys.ByID(r.DEKID), dst.Mechanism(), wrapped)
						if err != nil {
							return err
						}
						same := bytes.Equal(back.Bytes(), dek.Bytes())
						back.Zero()
						if !same {
							return errors.New("verify: round trip differs")
						}
					}
					return nil
				}()
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(done.Load()) / time.Since(start).Seconds(), nil
}

// parquetCopyRate is the Parquet limit: payload bytes per second to read
// every record file of ds and write it again, the way rekey's re-encrypt
// does (row API, source schema and metadata, row groups kept), with no
// crypto, fsync'd like rekey's commits. g files are copied at once. compress picks the writer codec
// (rekey writes snappy); false writes uncompressed pages, the lever the
// issue names for ciphertext columns.
func parquetCopyRate(ds *dataset, tmp string, g int, compress bool) (float64, error) {
	files, done, err := ds.filesInto(tmp)
	if err != nil {
		return 0, err
	}
	defer done()
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < g; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(files) {
					return
				}
				if err := copyParquet(files[i], filepath.Join(tmp, filepath.Base(files[i])), compress); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(ds.payloadBytes()) / time.Since(start).Seconds(), nil
}

func copyParquet(src, dst string, compress bool) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	pf, err := parquet.OpenFile(in, st.Size(), parquet.SkipPageIndex(true), parquet.SkipBloomFilters(true))
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	opts := []parquet.WriterOption{pf.Schema()}
	if compress {
		opts = append(opts, parquet.Compression(&snappy.Codec{}))
	}
	for _, kv := range pf.Metadata().KeyValueMetadata {
		opts = append(opts, parquet.KeyValueMetadata(kv.Key, kv.Value))
	}
	pw := parquet.NewWriter(out, opts...)
	rows := make([]parquet.Row, 1024)
	for _, rg := range pf.RowGroups() {
		rr := rg.Rows()
		for {
			n, rerr := rr.ReadRows(rows)
			if n > 0 {
				if _, err := pw.WriteRows(rows[:n]); err != nil {
					rr.Close()
					return err
				}
			}
			if errors.Is(rerr, io.EOF) {
				break
			}
			if rerr != nil {
				rr.Close()
				return rerr
			}
		}
		rr.Close()
		if err := pw.Flush(); err != nil {
			return err
		}
	}
	if err := pw.Close(); err != nil {
		return err
	}
	// rekey commits each output file with fsync before the rename; so does
	// the limit, or it would not be a limit of the same work.
	if err := out.Sync(); err != nil {
		return err
	}
	return out.Close()
}

// composed is the re-encrypt bound when crypto and Parquet work run one
// after the other on the same cores.
func composed(crypto, pq float64) float64 {
	if crypto <= 0 || pq <= 0 {
		return 0
	}
	return 1 / (1/crypto + 1/pq)
}
