package main

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
)

// baseline is the program a user would write instead of rekey: one
// goroutine, no Beam. It reads each record file with parquet-go's typed
// reader, unwraps each source DEK once (a map as cache), makes one fresh
// DEK per source DEK (crypto/rand, wrapped once by the target KEK), opens
// and seals every payload cell, and writes the file with parquet-go's
// defaults, then the new DEK table. No ledger and no verify before commit:
// it is the straightforward program, and it makes the baseline harder to
// beat, not easier. It returns payload bytes per second and the number of
// HSM operations it made.
func baseline(ctx context.Context, ds *dataset, src, dst keys.KEK, out, runID string) (rate float64, hsmOps int64, err error) {
	files, err := ds.files()
	if err != nil {
		return 0, 0, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(out)
	start := time.Now()
	deks, err := transforms.ReadDEKTable(ctx, ds.DEKs)
	if err != nil {
		return 0, 0, err
	}
	wrapped := map[string]*schemas.DEKRow{}
	for i := range deks {
		wrapped[deks[i].DEKID] = &deks[i]
	}
	type pair struct {
		old, new cipher.AEAD
		newID    string
	}
	keyOf := map[string]*pair{}
	var newTable []schemas.DEKRow
	var zero []*keys.DEK
	defer func() {
		for _, d := range zero {
			d.Zero()
		}
	}()
	get := func(dekID string) (*pair, error) {
		if p := keyOf[dekID]; p != nil {
			return p, nil
		}
		r := wrapped[dekID]
		if r == nil {
			return nil, fmt.Errorf("dek_id %q not in the DEK table", dekID)
		}
		old, err := src.Unwrap(ctx, keys.ByID(r.DEKID), r.Wrap, r.Wrapped)
		hsmOps++
		if err != nil {
			return nil, err
		}
		zero = append(zero, old)
		b := make([]byte, keys.DEKSize)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		fresh, err := keys.NewDEK(b)
		clear(b)
		if err != nil {
			return nil, err
		}
		zero = append(zero, fresh)
		p := &pair{newID: transforms.NewDEKID(dekID, runID)}
		w, err := dst.Wrap(ctx, keys.ByID(p.newID), fresh)
		hsmOps++
		if err != nil {
			return nil, err
		}
		newTable = append(newTable, schemas.DEKRow{DEKID: p.newID, KEK: dst.URI(), Wrap: dst.Mechanism(), Wrapped: w, Created: time.Now().UTC()})
		if p.old, err = old.AEAD(); err != nil {
			return nil, err
		}
		if p.new, err = fresh.AEAD(); err != nil {
			return nil, err
		}
		keyOf[dekID] = p
		return p, nil
	}
	rows := make([]transforms.GenRow, 1024)
	var aad, pt []byte
	for _, path := range files {
		in, err := os.Open(path)
		if err != nil {
			return 0, hsmOps, err
		}
		o, err := os.Create(filepath.Join(out, filepath.Base(path)))
		if err != nil {
			in.Close()
			return 0, hsmOps, err
		}
		r := parquet.NewGenericReader[transforms.GenRow](in)
		w := parquet.NewGenericWriter[transforms.GenRow](o)
		for {
			n, rerr := r.Read(rows)
			for i := 0; i < n; i++ {
				row := &rows[i]
				p, err := get(row.DEKID)
				if err != nil {
					return 0, hsmOps, err
				}
				id := strconv.FormatInt(row.ID, 10)
				if aad, err = schemas.CellAAD(aad[:0], "payload", id, row.DEKID); err != nil {
					return 0, hsmOps, err
				}
				if pt, err = schemas.OpenCell(pt[:0], p.old, row.Payload, aad); err != nil {
					return 0, hsmOps, fmt.Errorf("%s record %s: %w", path, id, err)
				}
				if aad, err = schemas.CellAAD(aad[:0], "payload", id, p.newID); err != nil {
					return 0, hsmOps, err
				}
				if row.Payload, err = schemas.SealCell(nil, p.new, rand.Reader, pt, aad); err != nil {
					return 0, hsmOps, err
				}
				row.DEKID = p.newID
			}
			if n > 0 {
				if _, err := w.Write(rows[:n]); err != nil {
					return 0, hsmOps, err
				}
			}
			if errors.Is(rerr, io.EOF) {
				break
			}
			if rerr != nil {
				return 0, hsmOps, rerr
			}
		}
		clear(pt[:cap(pt)])
		if err := w.Close(); err != nil {
			return 0, hsmOps, err
		}
		r.Close()
		in.Close()
		if err := o.Close(); err != nil {
			return 0, hsmOps, err
		}
	}
	t, err := os.Create(filepath.Join(out, "deks.parquet"))
	if err != nil {
		return 0, hsmOps, err
	}
	if err := parquet.Write(t, newTable); err != nil {
		t.Close()
		return 0, hsmOps, err
	}
	if err := t.Close(); err != nil {
		return 0, hsmOps, err
	}
	return float64(ds.payloadBytes()) / time.Since(start).Seconds(), hsmOps, nil
}
