package transforms

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
)

func init() {
	register.DoFn4x1[context.Context, string, func(DEKMap), func(UnitResult), error](&MintDEKsFn{})
	register.Emitter1[DEKMap]()
}

// DEKMap pairs a source DEK with the fresh DEK that replaces it in a
// re-encrypt run. It carries wrapped keys only.
type DEKMap struct {
	SourceID      string
	SourceKEK     string
	SourceWrap    string
	SourceWrapped []byte
	NewID         string
	NewWrapped    []byte
	NewKCV        []byte // the new DEK's key check value: checked wherever it is unwrapped again
	Err           string // why records under this DEK cannot be migrated
}

// MintDEKsFn reads one source DEK table file and, for each DEK, checks it
// unwraps under the source KEK to the right key (its kcv, when the row has
// one: see proveDEK), creates a fresh DEK (HSM random or crypto/rand), wraps
// it with the target KEK and verifies the wrap, then commits the new DEK
// table file (with the new DEKs' kcv) and its ledger part.
type MintDEKsFn struct {
	Spec Spec

	src, dst keys.KEK
	cache    *keys.Cache
	sl, tl   DEKLayout // the source and target DEK tables' layouts
}

// Setup opens both KEKs (once per process).
func (f *MintDEKsFn) Setup(ctx context.Context) (err error) {
	defer noteStop(&err)
	if f.src, f.dst, err = f.Spec.openPair(ctx); err != nil {
		return err
	}
	f.cache = processCache(f.Spec.CacheSize)
	f.sl, f.tl = f.Spec.sourceLayout(f.src), f.Spec.targetLayout(f.dst)
	return nil
}

// ProcessElement mints the replacements for the DEKs of DEK table file rel.
func (f *MintDEKsFn) ProcessElement(ctx context.Context, rel string, emit func(DEKMap), emitRes func(UnitResult)) (err error) {
	defer noteStop(&err)
	markStarted()
	if err := checkInterrupt(); err != nil {
		return err
	}
	spec := &f.Spec
	srcPath := storage.Join(spec.SourceDEKs, rel)
	dstPath := storage.Join(spec.TargetDEKs, rel)
	if spec.Incremental {
		// Files skipped by this run keep using earlier runs' DEKs: each
		// run's new DEKs go to their own folder of the target table.
		dstPath = storage.Join(spec.TargetDEKs, "run_id="+spec.RunID+"/"+rel)
	}
	part := spec.LedgerPart("deks", rel)
	if res, done, err := alreadyDone(ctx, spec, &part, srcPath); err != nil {
		return err
	} else if done {
		res.Totals.DEKTableFiles = 1
		// Resume: the new DEKs of this file are committed; replay them.
		if err := f.replay(ctx, srcPath, dstPath, emit); err != nil {
			return err
		}
		emitRes(res)
		return nil
	}
	fp, err := fingerprintOf(ctx, srcPath)
	if err != nil {
		fp = ""
	}
	u, err := openDEKTable(ctx, spec, f.sl, f.tl.Table, false, srcPath, dstPath, part, f.dst.URI(), fp)
	if err != nil {
		return err
	}
	var kept map[string]schemas.DEKRow
	if part != spec.LedgerPart("deks", rel) {
		// A retry of a unit with failed DEKs: the DEKs it did mint stay.
		if kept, err = keptDEKs(ctx, f.tl, dstPath); err != nil {
			u.abort()
			return err
		}
	}
	var maps []DEKMap
	var mm []DEKMap // the current batch's, by row
	failed, err := u.run(ctx, emitRes, func(b *dekBatch) { mm = make([]DEKMap, len(b.rows)) }, func(b *dekBatch, i int) error {
		r, l := &b.rows[i], &b.led[i]
		newID := NewDEKID(r.DEKID, spec.RunID)
		l.NewDEKID = newID
		mm[i] = DEKMap{SourceID: r.DEKID, SourceKEK: r.KEK, SourceWrap: r.Wrap, SourceWrapped: bytes.Clone(r.Wrapped), NewID: newID}
		switch b.dup[i] {
		case schemas.DEKIDRepeat:
			// One fresh DEK per dek_id: a repeat is skipped, a conflict
			// fails (plan refuses a table with conflicts).
			l.At, l.Status, l.Error = now(), schemas.StatusSkipped, b.dup[i].Err(r.DEKID).Error()
			return nil
		case schemas.DEKIDConflict:
			l.At, l.Status, l.Error = now(), schemas.StatusFailed, b.dup[i].Err(r.DEKID).Error()
			return nil
		}
		if k, ok := kept[newID]; ok {
			// Records committed by the earlier attempt use this DEK.
			mm[i].NewWrapped, mm[i].NewKCV = k.Wrapped, k.KCV
			l.At = now()
			b.out[i] = k
			return decided(l, k.Wrapped, nil)
		}
		w, kcv, proof, err := f.mintOne(ctx, r, newID)
		l.At, l.Proof = now(), proof
		if err != nil {
			mm[i].Err = err.Error()
		} else {
			mm[i].NewWrapped, mm[i].NewKCV = w, kcv
			b.out[i] = schemas.DEKRow{DEKID: newID, KEK: f.dst.URI(), Wrap: f.dst.Mechanism(), Wrapped: w, Created: now(), KCV: kcv}
		}
		return decided(l, w, err)
	}, func(b *dekBatch) {
		for i := range b.rows {
			if b.dup[i] == schemas.DEKIDNew {
				maps = append(maps, mm[i])
			}
		}
	})
	if err != nil {
		return err
	}
	if failed {
		return f.Spec.MaxFailures.check()
	}
	res := u.res
	for _, m := range maps {
		emit(m)
	}
	Progress.Failed.Add(res.Totals.Failed)
	emitRes(res)
	return f.Spec.MaxFailures.check()
}

// mintOne returns the new DEK's wrapped key and kcv, and the proof the
// source DEK had ("" if none was reached).
func (f *MintDEKsFn) mintOne(ctx context.Context, r *schemas.DEKRow, newID string) (_, kcv []byte, proof string, err error) {
	defer recoverTo(&err)
	if err := r.Validate(); err != nil {
		return nil, nil, "", err
	}
	if len(newID) > schemas.MaxDEKIDBytes {
		return nil, nil, "", fmt.Errorf("new dek_id %q would be longer than %d bytes (shorten the run id)", newID, schemas.MaxDEKIDBytes)
	}
	if !keys.Matches(f.src, r.KEK) {
		return nil, nil, "", fmt.Errorf("dek_id %q is wrapped by %s, not by the configured source KEK %s", r.DEKID, r.KEK, f.src.URI())
	}
	// The source DEK must unwrap to the right key; keep it cached for the
	// record stage. The proof runs inside the load, so a wrong key never
	// enters the cache, and again on a cached key (cheap).
	src, err := cachedAEAD(f.cache.Get(keys.CacheKey(f.src.URI(), TableBinding(f.sl.Table, r.DEKID), r.Wrap, r.Wrapped), func() (*keys.DEK, error) {
		var d *keys.DEK
		if err := func() (err error) {
			d, err = f.src.Unwrap(ctx, TableBinding(f.sl.Table, r.DEKID), r.Wrap, r.Wrapped)
			return err
		}(); err != nil {
			return nil, err
		}
		if _, err := proveDEK(ctx, &f.Spec, f.src, r, d, nil); err != nil {
			d.Zero()
			return nil, err
		}
		return d, nil
	}))
	if err != nil {
		if len(r.KCV) > 0 && errorsIs(err, schemas.ErrKCVMismatch) {
			proof = schemas.ProofKCV
		}
		return nil, nil, proof, err
	}
	if proof, err = proveDEK(ctx, &f.Spec, f.src, r, src.dek, nil); err != nil {
		return nil, nil, proof, err
	}
	var dek *keys.DEK
	err = func() (err error) {
		dek, err = f.newDEK(ctx)
		return err
	}()
	if err != nil {
		return nil, nil, proof, err
	}
	kcv = schemas.KCV(dek.Bytes(), newID)
	var w []byte
	if err := func() (err error) {
		w, err = f.dst.Wrap(ctx, TableBinding(f.tl.Table, newID), dek)
		return err
	}(); err != nil {
		dek.Zero()
		return nil, nil, proof, err
	}
	if !f.Spec.SkipVerify {
		var back *keys.DEK
		if err := func() (err error) {
			back, err = f.dst.Unwrap(ctx, TableBinding(f.tl.Table, newID), f.dst.Mechanism(), w)
			return err
		}(); err != nil {
			dek.Zero()
			return nil, nil, proof, fmt.Errorf("verify before commit: %w", err)
		}
		same := bytes.Equal(back.Bytes(), dek.Bytes())
		back.Zero()
		if !same {
			dek.Zero()
			return nil, nil, proof, fmt.Errorf("verify before commit: new DEK %q unwrapped by the target differs", newID)
		}
	}
	// The cache owns dek from here.
	f.cache.Put(keys.CacheKey(f.dst.URI(), TableBinding(f.tl.Table, newID), f.dst.Mechanism(), w), dek)
	return w, kcv, proof, nil
}

func (f *MintDEKsFn) newDEK(ctx context.Context) (*keys.DEK, error) {
	if f.Spec.DEKSource != "crypto-rand" {
		if keys.CanGenerate(f.dst) {
			return keys.Generate(ctx, f.dst)
		}
	}
	b := make([]byte, keys.DEKSize)
	defer clear(b)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return keys.NewDEK(b)
}

// replay re-emits the DEK pairs of a committed unit from its source and
// target DEK table files.
func (f *MintDEKsFn) replay(ctx context.Context, srcPath, dstPath string, emit func(DEKMap)) error {
	target := map[string]schemas.DEKRow{}
	if ok, err := storage.Exists(ctx, dstPath); err != nil {
		return fmt.Errorf("resume: %w", err)
	} else if !ok {
		// The unit failed as a whole file (see its ledger part): its DEKs
		// were never minted; records under them fail with that reason.
		_ = readDEKRowsIn(ctx, f.sl, srcPath, 4096, func(rows []schemas.DEKRow) error {
			for _, r := range rows {
				emit(DEKMap{SourceID: r.DEKID, SourceKEK: r.KEK, SourceWrap: r.Wrap, Err: "its DEK table file failed in this run (see the ledger)"})
			}
			return nil
		})
		return nil
	}
	if err := readDEKRowsIn(ctx, f.tl, dstPath, 4096, func(rows []schemas.DEKRow) error {
		for _, r := range rows {
			target[r.DEKID] = schemas.DEKRow{Wrapped: bytes.Clone(r.Wrapped), KCV: bytes.Clone(r.KCV)}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	return readDEKRowsIn(ctx, f.sl, srcPath, 4096, func(rows []schemas.DEKRow) error {
		for _, r := range rows {
			m := DEKMap{SourceID: r.DEKID, SourceKEK: r.KEK, SourceWrap: r.Wrap, SourceWrapped: bytes.Clone(r.Wrapped), NewID: NewDEKID(r.DEKID, f.Spec.RunID)}
			if t, ok := target[m.NewID]; ok {
				m.NewWrapped, m.NewKCV = t.Wrapped, t.KCV
			} else {
				m.Err = "no new DEK was minted for this dek_id (see its dek ledger row)"
			}
			emit(m)
		}
		return nil
	})
}

// MintDEKs is the first stage of a re-encrypt run: it returns the DEK pairs
// and the units' results.
func MintDEKs(s beam.Scope, spec Spec, files beam.PCollection) (maps, results beam.PCollection) {
	s = s.Scope("MintDEKs")
	return beam.ParDo2(s, &MintDEKsFn{Spec: spec}, files)
}
