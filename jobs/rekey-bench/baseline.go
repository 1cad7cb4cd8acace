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
	"sync"
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
	files, done, err := ds.filesInto(out)
	if err != nil {
		return 0, 0, err
	}
	defer done()
	start := time.Now()
	uk, err := newUserKeys(ctx, ds, src, dst, runID)
	if err != nil {
		return 0, 0, err
	}
	defer uk.close()
	var buf userBuffers
	for _, path := range files {
		if err := userReencryptFile(path, filepath.Join(out, filepath.Base(path)), uk.get, &buf); err != nil {
			return 0, uk.hsmOps, err
		}
	}
	if err := uk.writeTable(filepath.Join(out, "deks.parquet")); err != nil {
		return 0, uk.hsmOps, err
	}
	return float64(ds.payloadBytes()) / time.Since(start).Seconds(), uk.hsmOps, nil
}

// perFileLoop is issue 14's per-file user loop: the baseline's program
// with one goroutine per record file, all files of the dataset at once
// (what a data engineer adds first: `go func` around the file loop's
// body). The DEK map is shared by the goroutines behind one mutex, held
// across the HSM calls of a miss, as the straightforward code would; no
// ledger, no verify, no fsync, parquet-go's defaults, like the baseline.
// It returns payload bytes per second and the HSM operations it made.
func perFileLoop(ctx context.Context, ds *dataset, src, dst keys.KEK, out, runID string) (rate float64, hsmOps int64, err error) {
	files, done, err := ds.filesInto(out)
	if err != nil {
		return 0, 0, err
	}
	defer done()
	start := time.Now()
	uk, err := newUserKeys(ctx, ds, src, dst, runID)
	if err != nil {
		return 0, 0, err
	}
	defer uk.close()
	var mu sync.Mutex
	get := func(dekID string) (*userPair, error) {
		mu.Lock()
		defer mu.Unlock()
		return uk.get(dekID)
	}
	errs := make([]error, len(files))
	var wg sync.WaitGroup
	for i, path := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf userBuffers
			errs[i] = userReencryptFile(path, filepath.Join(out, filepath.Base(path)), get, &buf)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, uk.hsmOps, err
	}
	if err := uk.writeTable(filepath.Join(out, "deks.parquet")); err != nil {
		return 0, uk.hsmOps, err
	}
	return float64(ds.payloadBytes()) / time.Since(start).Seconds(), uk.hsmOps, nil
}

// userPair is what the user programs keep per source DEK: its AEAD, the
// fresh DEK's AEAD and the fresh DEK's id.
type userPair struct {
	old, new cipher.AEAD
	newID    string
}

// userKeys is the user programs' DEK resolution: the source DEK table in
// a map, each source DEK unwrapped once on first use and paired with one
// fresh DEK wrapped once by the target KEK. get is not safe for
// concurrent use (perFileLoop puts a mutex around it).
type userKeys struct {
	ctx      context.Context
	src, dst keys.KEK
	runID    string
	wrapped  map[string]*schemas.DEKRow
	keyOf    map[string]*userPair
	newTable []schemas.DEKRow
	zero     []*keys.DEK
	hsmOps   int64
}

func newUserKeys(ctx context.Context, ds *dataset, src, dst keys.KEK, runID string) (*userKeys, error) {
	deks, err := transforms.ReadDEKTable(ctx, ds.DEKs)
	if err != nil {
		return nil, err
	}
	uk := &userKeys{ctx: ctx, src: src, dst: dst, runID: runID, wrapped: map[string]*schemas.DEKRow{}, keyOf: map[string]*userPair{}}
	for i := range deks {
		uk.wrapped[deks[i].DEKID] = &deks[i]
	}
	return uk, nil
}

func (uk *userKeys) get(dekID string) (*userPair, error) {
	if p := uk.keyOf[dekID]; p != nil {
		return p, nil
	}
	r := uk.wrapped[dekID]
	if r == nil {
		return nil, fmt.Errorf("dek_id %q not in the DEK table", dekID)
	}
	old, err := uk.src.Unwrap(uk.ctx, keys.ByID(r.DEKID), r.Wrap, r.Wrapped)
	uk.hsmOps++
	if err != nil {
		return nil, err
	}
	uk.zero = append(uk.zero, old)
	b := make([]byte, keys.DEKSize)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	fresh, err := keys.NewDEK(b)
	clear(b)
	if err != nil {
		return nil, err
	}
	uk.zero = append(uk.zero, fresh)
	p := &userPair{newID: transforms.NewDEKID(dekID, uk.runID)}
	w, err := uk.dst.Wrap(uk.ctx, keys.ByID(p.newID), fresh)
	uk.hsmOps++
	if err != nil {
		return nil, err
	}
	uk.newTable = append(uk.newTable, schemas.DEKRow{DEKID: p.newID, KEK: uk.dst.URI(), Wrap: uk.dst.Mechanism(), Wrapped: w, Created: time.Now().UTC()})
	if p.old, err = old.AEAD(); err != nil {
		return nil, err
	}
	if p.new, err = fresh.AEAD(); err != nil {
		return nil, err
	}
	uk.keyOf[dekID] = p
	return p, nil
}

// writeTable writes the new DEK table with parquet-go's defaults.
func (uk *userKeys) writeTable(path string) error {
	t, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := parquet.Write(t, uk.newTable); err != nil {
		t.Close()
		return err
	}
	return t.Close()
}

func (uk *userKeys) close() {
	for _, d := range uk.zero {
		d.Zero()
	}
}

// userBuffers are one goroutine's reused buffers of the user programs.
type userBuffers struct {
	rows    []transforms.GenRow
	aad, pt []byte
}

// userReencryptFile is the user programs' body for one record file: read
// it with parquet-go's typed reader, open and seal every payload cell
// with the pair of its DEK, write it with parquet-go's defaults (no
// fsync).
func userReencryptFile(path, outPath string, get func(string) (*userPair, error), buf *userBuffers) error {
	in, err := os.Open(path)
	if err != nil {
		return err
	}
	defer in.Close()
	o, err := os.Create(outPath)
	if err != nil {
		return err
	}
	defer o.Close()
	if buf.rows == nil {
		buf.rows = make([]transforms.GenRow, 1024)
	}
	rows := buf.rows
	r := parquet.NewGenericReader[transforms.GenRow](in)
	defer r.Close()
	w := parquet.NewGenericWriter[transforms.GenRow](o)
	defer func() { clear(buf.pt[:cap(buf.pt)]) }() // the last plaintext
	for {
		n, rerr := r.Read(rows)
		for i := 0; i < n; i++ {
			row := &rows[i]
			p, err := get(row.DEKID)
			if err != nil {
				return err
			}
			id := strconv.FormatInt(row.ID, 10)
			if buf.aad, err = schemas.CellAAD(buf.aad[:0], "payload", id, row.DEKID); err != nil {
				return err
			}
			if buf.pt, err = schemas.OpenCell(buf.pt[:0], p.old, row.Payload, buf.aad); err != nil {
				return fmt.Errorf("%s record %s: %w", path, id, err)
			}
			if buf.aad, err = schemas.CellAAD(buf.aad[:0], "payload", id, p.newID); err != nil {
				return err
			}
			if row.Payload, err = schemas.SealCell(nil, p.new, rand.Reader, buf.pt, buf.aad); err != nil {
				return err
			}
			row.DEKID = p.newID
		}
		if n > 0 {
			if _, err := w.Write(rows[:n]); err != nil {
				return err
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	return o.Close()
}
