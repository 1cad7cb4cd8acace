package transforms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
)

func init() {
	register.DoFn3x1[context.Context, string, func(schemas.DEKRow), error](&ReadDEKsFn{})
	register.Emitter1[schemas.DEKRow]()
	register.DoFn4x1[context.Context, string, func(*schemas.DEKRow) bool, func(UnitResult), error](&VerifyFn{})
	register.Iter1[schemas.DEKRow]()
	register.DoFn3x1[context.Context, string, func(UnitResult), error](&VerifyDEKsFn{})
}

// VerifyDEKsFn unwraps every DEK of one DEK table file with the KEK it is
// given and counts the ones that unwrap.
type VerifyDEKsFn struct {
	Spec Spec
	kek  keys.KEK
}

// Setup opens the KEK (once per process).
func (f *VerifyDEKsFn) Setup(ctx context.Context) (err error) {
	if f.kek, err = f.Spec.openKEK(ctx, f.Spec.TargetKEK, f.Spec.TargetWrap); err != nil {
		return fmt.Errorf("KEK: %w", err)
	}
	return nil
}

// ProcessElement verifies DEK table file rel.
func (f *VerifyDEKsFn) ProcessElement(ctx context.Context, rel string, emit func(UnitResult)) error {
	path := storage.Join(f.Spec.TargetDEKs, rel)
	res := UnitResult{Unit: path}
	seen := map[string]bool{}
	err := readDEKRows(ctx, path, f.Spec.rowBatch(), func(rows []schemas.DEKRow) error {
		errs := make([]error, len(rows))
		_ = parallel(len(rows), f.Spec.workers(), func(_, i int) error {
			r := &rows[i]
			if err := r.Validate(); err != nil {
				errs[i] = err
				return nil
			}
			if !KEKMatches(f.kek, r.KEK) {
				errs[i] = fmt.Errorf("dek_id %q is wrapped by %s, not by %s", r.DEKID, r.KEK, f.kek.URI())
				return nil
			}
			var dek *keys.DEK
			errs[i] = withRetry(ctx, func() (err error) {
				dek, err = f.kek.Unwrap(ctx, r.DEKID, r.Wrap, r.Wrapped)
				return err
			})
			dek.Zero()
			return nil
		})
		for i := range rows {
			res.Totals.DEKs++
			if errs[i] == nil && seen[rows[i].DEKID] {
				errs[i] = fmt.Errorf("dek_id %q appears more than once in the DEK table", rows[i].DEKID)
			}
			seen[rows[i].DEKID] = true
			if errs[i] != nil {
				if isFatalKeyErr(errs[i]) {
					return errs[i]
				}
				res.Totals.DEKsFailed++
				res.Totals.Failed++
				res.note(path, "", rows[i].DEKID, errs[i].Error())
			} else {
				res.Totals.DEKsMigrated++
			}
		}
		Progress.DEKs.Add(int64(len(rows)))
		return nil
	})
	if err != nil {
		if isFatalKeyErr(err) {
			return err
		}
		res.Totals.FilesFailed++
		res.Totals.Failed++
		res.note(path, "", "", err.Error())
	}
	emit(res)
	return nil
}

// ReadDEKsFn emits the rows of one DEK table file (wrapped keys only).
type ReadDEKsFn struct {
	Root string
}

// ProcessElement reads DEK table file rel.
func (f *ReadDEKsFn) ProcessElement(ctx context.Context, rel string, emit func(schemas.DEKRow)) error {
	return readDEKRows(ctx, storage.Join(f.Root, rel), 4096, func(rows []schemas.DEKRow) error {
		for _, r := range rows {
			r.Wrapped = bytes.Clone(r.Wrapped)
			emit(r)
		}
		return nil
	})
}

// VerifyFn checks that every encrypted cell of one record file decrypts
// under the DEK table it is given, with the KEK it is given. It writes
// nothing but its result.
type VerifyFn struct {
	Spec Spec

	kek   keys.KEK
	cache *keyCache
	deks  map[string]*schemas.DEKRow
	bad   map[string]string
}

// Setup opens the KEK (once per process).
func (f *VerifyFn) Setup(ctx context.Context) error {
	var err error
	if f.kek, err = f.Spec.openKEK(ctx, f.Spec.TargetKEK, f.Spec.TargetWrap); err != nil {
		return fmt.Errorf("KEK: %w", err)
	}
	f.cache = processCache(f.Spec.CacheSize)
	return nil
}

func (f *VerifyFn) load(iter func(*schemas.DEKRow) bool) {
	if f.deks != nil {
		return
	}
	f.deks, f.bad = map[string]*schemas.DEKRow{}, map[string]string{}
	var r schemas.DEKRow
	for iter(&r) {
		c := r
		if err := c.Validate(); err != nil {
			f.bad[c.DEKID] = err.Error()
			continue
		}
		if prev, ok := f.deks[c.DEKID]; ok && !bytes.Equal(prev.Wrapped, c.Wrapped) {
			f.bad[c.DEKID] = fmt.Sprintf("dek_id %q appears more than once in the DEK table with different wrapped keys", c.DEKID)
		}
		f.deks[c.DEKID] = &c
	}
}

// ProcessElement verifies record file rel.
func (f *VerifyFn) ProcessElement(ctx context.Context, rel string, deks func(*schemas.DEKRow) bool, emit func(UnitResult)) error {
	markStarted()
	f.load(deks)
	path := storage.Join(f.Spec.TargetData, rel)
	res := UnitResult{Unit: path}
	res.Totals.Files = 1
	err := f.verifyFile(ctx, path, &res)
	if err != nil {
		if isFatalKeyErr(err) {
			return err
		}
		res.Totals.FilesFailed++
		res.Totals.Failed++
		res.note(path, "", "", err.Error())
	}
	Progress.Files.Add(1)
	Progress.Failed.Add(res.Totals.Failed)
	emit(res)
	return nil
}

func (f *VerifyFn) verifyFile(ctx context.Context, path string, res *UnitResult) error {
	pf, in, err := openParquet(ctx, path)
	if err != nil {
		return err
	}
	defer in.Close()
	l, err := layoutOf(pf.Schema(), f.Spec.Encrypted, f.Spec.DEKColumn, f.Spec.IDColumn)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	workers := f.Spec.workers()
	scratch := make([]cellScratch, workers)
	rows := make([]parquet.Row, f.Spec.rowBatch())
	errs := make([]string, len(rows))
	ids := make([]string, len(rows))
	dekIDs := make([]string, len(rows))
	keysOf := map[string]*verifyKey{} // each DEK resolved once per file
	for _, rg := range pf.RowGroups() {
		rr := rg.Rows()
		for {
			n, rerr := rr.ReadRows(rows)
			if n > 0 {
				missing := newDEKIDs(keysOf, rows[:n], l.dek)
				resolved := make([]*verifyKey, len(missing))
				_ = parallel(len(missing), workers, func(_, i int) error {
					resolved[i] = f.resolve(ctx, missing[i])
					return nil
				})
				for i, id := range missing {
					keysOf[id] = resolved[i]
					if resolved[i].fatal {
						rr.Close()
						return resolved[i].err
					}
				}
				_ = parallel(n, workers, func(w, i int) error {
					ids[i], dekIDs[i], errs[i] = "", "", ""
					if e := f.verifyRow(&l, rows[i], &scratch[w], &ids[i], &dekIDs[i], keysOf); e != nil {
						errs[i] = e.Error()
					}
					return nil
				})
				for i := 0; i < n; i++ {
					res.Totals.Records++
					if errs[i] == "" {
						res.Totals.RecordsMigrated++
					} else {
						res.Totals.RecordsFailed++
						res.Totals.Failed++
						res.note(path, ids[i], dekIDs[i], errs[i])
					}
				}
				Progress.Records.Add(int64(n))
			}
			if errors.Is(rerr, io.EOF) {
				break
			}
			if rerr != nil {
				rr.Close()
				return fmt.Errorf("read %s: %w", path, rerr)
			}
		}
		rr.Close()
	}
	return nil
}

// verifyKey is one DEK of the table, resolved for a file: its key, or why
// its records cannot verify.
type verifyKey struct {
	key   *cachedKey
	err   error
	fatal bool // the custodian refuses us: stop
}

func (f *VerifyFn) resolve(ctx context.Context, dekID string) *verifyKey {
	if why, bad := f.bad[dekID]; bad {
		return &verifyKey{err: fmt.Errorf("DEK %q: %s", dekID, why)}
	}
	d := f.deks[dekID]
	if d == nil {
		return &verifyKey{err: fmt.Errorf("names dek_id %q, which is not in the DEK table", dekID)}
	}
	if !KEKMatches(f.kek, d.KEK) {
		return &verifyKey{err: fmt.Errorf("DEK %q is wrapped by %s, not by %s", dekID, d.KEK, f.kek.URI())}
	}
	key, err := unwrapCached(ctx, f.cache, f.kek, d.DEKID, d.Wrap, d.Wrapped)
	if err != nil {
		return &verifyKey{err: fmt.Errorf("unwrap DEK %q: %w", dekID, err), fatal: isFatalKeyErr(err)}
	}
	return &verifyKey{key: key}
}

func (f *VerifyFn) verifyRow(l *recordLayout, row parquet.Row, sc *cellScratch, id, dekID *string, keysOf map[string]*verifyKey) error {
	iv, dv := findValue(row, l.id), findValue(row, l.dek)
	if iv < 0 || dv < 0 {
		return fmt.Errorf("row has no value for the record id or dek_id column")
	}
	var err error
	if *id, err = recordID(row[iv]); err != nil {
		return err
	}
	if row[dv].IsNull() {
		return fmt.Errorf("record %q has a null dek_id", *id)
	}
	*dekID = string(row[dv].ByteArray())
	vk := keysOf[*dekID]
	if vk.err != nil {
		return fmt.Errorf("record %q: %w", *id, vk.err)
	}
	key := vk.key
	for k, col := range l.enc {
		vi := findValue(row, col)
		if vi < 0 || row[vi].IsNull() {
			continue
		}
		if sc.aad, err = schemas.CellAAD(sc.aad[:0], l.encName[k], *id, *dekID); err != nil {
			return err
		}
		pt, err := schemas.OpenCell(sc.pt[:0], key.aead, row[vi].ByteArray(), sc.aad)
		sc.pt = pt
		clear(pt)
		if err != nil {
			return fmt.Errorf("record %q column %q: %w", *id, l.encName[k], err)
		}
	}
	return nil
}

// Verify is the verify composite: every DEK of the table at spec.TargetDEKs
// unwrapped, and every record file under spec.TargetData (if set) checked
// against that table.
func Verify(s beam.Scope, spec Spec) beam.PCollection {
	s = s.Scope("Verify")
	dekFiles := ListFiles(s, spec.TargetDEKs)
	dekResults := beam.ParDo(s, &VerifyDEKsFn{Spec: spec}, dekFiles)
	if spec.TargetData == "" {
		return dekResults
	}
	deks := beam.ParDo(s, &ReadDEKsFn{Root: spec.TargetDEKs}, dekFiles)
	files := ListFiles(s, spec.TargetData)
	recResults := beam.ParDo(s, &VerifyFn{Spec: spec}, files, beam.SideInput{Input: deks})
	return beam.Flatten(s, dekResults, recResults)
}
