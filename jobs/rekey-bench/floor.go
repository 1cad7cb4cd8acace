package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
)

// floorFile is one record file prepared for the floor: its encrypted
// cells copied out of the Parquet file beforehand (not timed), with what
// their AADs need.
type floorFile struct {
	path  string
	cells []byte // every payload cell (ciphertext envelope), one after the other
	ends  []int  // end offset of each cell in cells
	ids   []string
	keys  []*floorKey
}

// floorKey is a source DEK's id and its pair (source AEAD, fresh AEAD).
type floorKey struct {
	oldID string
	p     *userPair
}

// floorRate is issue 14's floor for a reencrypt of ds: an I/O + AES lower
// bound that decodes no Parquet. Before the clock starts, every payload
// cell of every record file is read out with parquet-go into memory, with
// its record id and DEK, and each source DEK is unwrapped and paired with
// a fresh target DEK (the user programs' userKeys: HSM work is not in the
// floor). Timed, by g goroutines over the files (each takes the next
// file): os.ReadFile of the record file; for every cell of it, what rekey
// does per cell: AAD, schemas.OpenCell with the source DEK, SealCell with
// the fresh DEK (nonces from crypto/rand through a 4 KiB bufio.Reader, as
// rekey), OpenCell again and a compare (verify before commit), plaintext
// cleared; then the bytes read are written to a new file, fsync'd and
// closed. The new cells are not kept (a reused buffer) and no DEK table
// or ledger is written. It returns payload bytes per second of the timed
// part.
func floorRate(ctx context.Context, ds *dataset, src, dst keys.KEK, out, runID string, g int) (float64, error) {
	files, done, err := ds.filesInto(out)
	if err != nil {
		return 0, err
	}
	defer done()
	defer debug.FreeOSMemory() // give back the cells before rekey's runs
	uk, err := newUserKeys(ctx, ds, src, dst, runID)
	if err != nil {
		return 0, err
	}
	defer uk.close()
	prepared := make([]*floorFile, len(files))
	var ncells int64
	for i, path := range files {
		if prepared[i], err = floorPrepare(path, uk); err != nil {
			return 0, err
		}
		ncells += int64(len(prepared[i].ends))
	}
	if ncells != ds.records() {
		return 0, fmt.Errorf("floor: %d cells read, want %d", ncells, ds.records())
	}
	runtime.GC() // the preparation's garbage is not the floor's

	var next atomic.Int64
	errs := make([]error, g)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < g; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nonces := bufio.NewReaderSize(rand.Reader, 4096)
			var aad, aad2, pt, ct, back []byte
			for {
				i := int(next.Add(1) - 1)
				if i >= len(prepared) || ctx.Err() != nil {
					errs[w] = ctx.Err()
					return
				}
				f := prepared[i]
				b, err := os.ReadFile(f.path)
				if err != nil {
					errs[w] = err
					return
				}
				from := 0
				for k, end := range f.ends {
					cell := f.cells[from:end]
					from = end
					fk := f.keys[k]
					aad, _ = schemas.CellAAD(aad[:0], "payload", f.ids[k], fk.oldID)
					if pt, err = schemas.OpenCell(pt[:0], fk.p.old, cell, aad); err != nil {
						errs[w] = fmt.Errorf("%s record %s: %w", f.path, f.ids[k], err)
						return
					}
					aad2, _ = schemas.CellAAD(aad2[:0], "payload", f.ids[k], fk.p.newID)
					if ct, err = schemas.SealCell(ct[:0], fk.p.new, nonces, pt, aad2); err != nil {
						errs[w] = err
						return
					}
					back, err = schemas.OpenCell(back[:0], fk.p.new, ct, aad2)
					same := err == nil && bytes.Equal(back, pt)
					clear(back)
					clear(pt)
					if !same {
						errs[w] = fmt.Errorf("%s record %s: verify failed", f.path, f.ids[k])
						return
					}
				}
				o, err := os.Create(filepath.Join(out, filepath.Base(f.path)))
				if err != nil {
					errs[w] = err
					return
				}
				_, err = o.Write(b)
				if err == nil {
					err = o.Sync()
				}
				if cerr := o.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					errs[w] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return float64(ds.payloadBytes()) / secs, nil
}

// floorPrepare reads the payload cells of one record file (not timed).
func floorPrepare(path string, uk *userKeys) (*floorFile, error) {
	in, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	f := &floorFile{path: path}
	byID := map[string]*floorKey{}
	r := parquet.NewGenericReader[transforms.GenRow](in)
	defer r.Close()
	rows := make([]transforms.GenRow, 1024)
	for {
		n, rerr := r.Read(rows)
		for i := 0; i < n; i++ {
			row := &rows[i]
			fk := byID[row.DEKID]
			if fk == nil {
				p, err := uk.get(row.DEKID)
				if err != nil {
					return nil, err
				}
				fk = &floorKey{oldID: strings.Clone(row.DEKID), p: p}
				byID[fk.oldID] = fk
			}
			f.cells = append(f.cells, row.Payload...)
			f.ends = append(f.ends, len(f.cells))
			f.ids = append(f.ids, strconv.FormatInt(row.ID, 10))
			f.keys = append(f.keys, fk)
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return nil, fmt.Errorf("%s: %w", path, rerr)
		}
	}
	return f, nil
}
