package transforms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
)

func init() {
	register.DoFn4x1[context.Context, string, func(*SampleCell) bool, func(UnitResult), error](&RewrapFn{})
	register.Emitter1[UnitResult]()
}

// RewrapFn rewraps one DEK table file: every DEK is unwrapped by the source
// KEK, wrapped by the target KEK, unwrapped again by the target and
// compared, and proven to be the right key before the new table file is
// committed: by its kcv after the wrap (off the custodian's goroutine), or
// by a cell of the dataset before it (see proveDEK). Records are untouched.
// Its side input is SampleCells's output.
type RewrapFn struct {
	Spec Spec

	src, dst keys.KEK
	lay      DEKLayout // the DEK table's layout (a rewrap keeps it)
	samples  *cellSamples
	matched  sync.Map // KEK name -> keys.Matches(src, name)
	nMatched atomic.Int32
}

// Setup opens both KEKs (once per process).
func (f *RewrapFn) Setup(ctx context.Context) (err error) {
	defer noteStop(&err)
	if f.src, f.dst, err = f.Spec.openPair(ctx); err != nil {
		return err
	}
	f.lay = f.Spec.sourceLayout(f.src)
	return nil
}

// bind is what the table's wrapped key of dekID is bound to (source and
// target alike: a rewrap keeps the format).
func (f *RewrapFn) bind(dekID string) keys.Binding { return TableBinding(f.lay.Table, dekID) }

// ProcessElement rewraps the DEK table file rel.
func (f *RewrapFn) ProcessElement(ctx context.Context, rel string, samples func(*SampleCell) bool, emit func(UnitResult)) (err error) {
	defer noteStop(&err)
	markStarted()
	if err := checkInterrupt(); err != nil {
		return err
	}
	if f.samples == nil {
		f.samples = loadSamples(samples)
	}
	spec := &f.Spec
	srcPath := storage.Join(spec.SourceDEKs, rel)
	dstPath := storage.Join(spec.TargetDEKs, rel)
	part := spec.LedgerPart("deks", rel)
	if res, done, err := alreadyDone(ctx, spec, &part, srcPath); err != nil {
		return err
	} else if done {
		res.Totals.DEKTableFiles = 1
		emit(res)
		return nil
	}
	same, fp, err := unchanged(ctx, spec, srcPath, dstPath)
	if err == nil && same {
		res, err := skipUnchanged(ctx, spec, part, srcPath, dstPath, fp)
		if err != nil {
			return err
		}
		res.Totals.DEKTableFiles = 1
		emit(res)
		return nil
	}
	u, err := openDEKTable(ctx, spec, f.lay, f.lay.Table, true, srcPath, dstPath, part, f.dst.URI(), fp)
	if err == nil {
		u.workers = spec.hsmWorkers(ctx, f.src, f.dst)
	}
	if err != nil {
		return err
	}
	// The custodian's calls run on the bundle's goroutine (or the probed
	// number of them); a row's kcv proof and ledger row are settled on the
	// unit's writer goroutine, before the batch is written, so the
	// custodian's goroutine makes little else than its calls (issue 14; a
	// proof by a cell, which may read storage, stays there, before the
	// wrap).
	u.settle = func(b *dekBatch) error {
		for i := range b.rows {
			p := &b.pend[i]
			f.settle(ctx, &b.rows[i], p)
			if err := f.record(b, i, p.rw, p.err); err != nil {
				return err
			}
		}
		return nil
	}
	failed, err := u.run(ctx, emit, func(b *dekBatch) { b.pend = make([]pendingDEK, len(b.rows)) }, func(b *dekBatch, i int) error {
		p := &b.pend[i]
		p.rw, p.dek, p.err = f.rewrapOne(ctx, &b.rows[i], b.dup[i])
		if p.err != nil && isFatalKeyErr(p.err) {
			return p.err // the custodian refuses us or stays down: stop, resume later
		}
		return nil
	}, nil)
	if err != nil {
		return err
	}
	if failed {
		return f.Spec.MaxFailures.check()
	}
	res := u.res
	Progress.Files.Add(1)
	Progress.Failed.Add(res.Totals.Failed)
	cntFiles.Inc(ctx, 1)
	cntFailed.Inc(ctx, res.Totals.Failed)
	emit(res)
	return f.Spec.MaxFailures.check()
}

var errDuplicate = fmt.Errorf("duplicate")

// rewrapped is one DEK's new wrap, with how it was proven and where it was
// made (schemas.Path*).
type rewrapped struct {
	wrapped, kcv []byte
	proof, path  string
}

// record fills row i's ledger row and target row from its rewrap.
func (f *RewrapFn) record(b *dekBatch, i int, rw rewrapped, err error) error {
	r, l := &b.rows[i], &b.led[i]
	l.At, l.Proof, l.Path = now(), rw.proof, rw.path
	if err == errDuplicate && f.lay.Table.App() {
		// An application's table is written back row for row: a repeat
		// (its other columns may differ) would be lost, so it fails.
		l.Status, l.Error = schemas.StatusFailed, fmt.Sprintf("%v: rekey writes one row per dek_id of an application's DEK table, so this row is not in the target file; deduplicate the table (its other columns may differ from the first row's), then re-run", b.dup[i].Err(r.DEKID))
		return nil
	}
	if err == errDuplicate {
		l.Status, l.Error = schemas.StatusSkipped, b.dup[i].Err(r.DEKID).Error()
		return nil
	}
	b.out[i] = schemas.DEKRow{DEKID: r.DEKID, KEK: f.dst.URI(), Wrap: f.dst.Mechanism(), Wrapped: rw.wrapped, Created: r.Created, KCV: rw.kcv}
	return decided(l, rw.wrapped, err)
}

// pendingDEK is one row between its custodian calls and its settling
// (RewrapFn.settle): the new wrap, the error so far, and the source DEK
// while its kcv proof is still to be made (then zeroed).
type pendingDEK struct {
	rw  rewrapped
	err error
	dek *keys.DEK
}

// rewrapOne returns r's new wrap, the proof the source DEK had ("" if none
// was reached, or still to be made) and the path it took. When the source
// custodian can rewrap into the target itself (keys.CanRewrap), it is
// asked to, so the DEK stays inside it; otherwise (or when it declines
// this key) the DEK is unwrapped here and wrapped again, and returned
// (dek) for settle to prove against the row's kcv and zero: that check is
// CPU work only, made on the writer goroutine; its failure fails the row
// before anything is committed and is the row's error whatever the wrap or
// verify answered, unless that answer stopped the run (a fatal custodian
// error: the batch is dropped, and a resume decides the row again). A
// wrong key is thus wrapped by the target before it is found out, and
// discarded. A proof by a cell of the dataset (a table without kcv) may
// read storage: it is made here, before the wrap.
func (f *RewrapFn) rewrapOne(ctx context.Context, r *schemas.DEKRow, dup schemas.DEKIDStatus) (out rewrapped, dek *keys.DEK, err error) {
	defer recoverTo(&err)
	if err := r.Validate(); err != nil {
		return out, nil, err
	}
	switch dup {
	case schemas.DEKIDRepeat:
		return out, nil, errDuplicate
	case schemas.DEKIDConflict:
		return out, nil, dup.Err(r.DEKID)
	}
	if !f.srcMatches(r.KEK) {
		return out, nil, fmt.Errorf("dek_id %q is wrapped by %s, not by the configured source KEK %s", r.DEKID, r.KEK, f.src.URI())
	}
	if keys.CanRewrap(f.src, f.dst, r.Wrap) {
		out, err = f.rewrapInside(ctx, r)
		if !errors.Is(err, keys.ErrNoRewrap) {
			return out, nil, err
		}
	}
	out = rewrapped{path: schemas.PathRekey}
	dek, err = f.src.Unwrap(ctx, f.bind(r.DEKID), r.Wrap, r.Wrapped)
	if err != nil {
		return out, nil, err
	}
	if len(r.KCV) == 0 {
		if out.proof, err = proveDEK(ctx, &f.Spec, f.src, r, dek, f.samples); err != nil {
			dek.Zero()
			return out, nil, err
		}
	}
	if out.wrapped, err = f.dst.Wrap(ctx, f.bind(r.DEKID), dek); err != nil {
		return out, dek, err
	}
	if f.Spec.SkipVerify {
		return out, dek, nil
	}
	return out, dek, f.verifyNew(ctx, r, out.wrapped, dek.Bytes())
}

// settle finishes row r after its custodian calls: the source DEK's proof
// against the row's kcv (its failure is the row's error, before any
// other: the wrong key would otherwise be reported as a wrap or verify
// failure), the new row's kcv, and the DEK zeroed.
func (f *RewrapFn) settle(ctx context.Context, r *schemas.DEKRow, p *pendingDEK) {
	if p.dek == nil {
		return
	}
	defer func() { p.dek.Zero(); p.dek = nil }()
	if len(r.KCV) > 0 {
		proof, err := proveDEK(ctx, &f.Spec, f.src, r, p.dek, nil)
		p.rw.proof = proof
		if err != nil {
			p.err = err
			return
		}
		p.rw.kcv = r.KCV // just checked equal to the DEK's (r is the batch's own copy)
		return
	}
	if p.err == nil {
		p.rw.kcv = schemas.KCV(p.dek.Bytes(), r.DEKID)
	}
}

// srcMatches is keys.Matches(f.src, kek), remembered for the few KEK
// names a table holds (it parses the name: a cost per DEK otherwise).
func (f *RewrapFn) srcMatches(kek string) bool {
	if v, ok := f.matched.Load(kek); ok {
		return v.(bool)
	}
	m := keys.Matches(f.src, kek)
	if f.nMatched.Add(1) <= maxMatched {
		f.matched.Store(kek, m)
	}
	return m
}

const maxMatched = 64

// rewrapInside asks the source custodian to rewrap r into the target.
// What the custodian did not prove or verify inside is done here with the
// target's unwrap of the new wrap: the DEK then passes through rekey for
// that check only, as it does on the client path.
func (f *RewrapFn) rewrapInside(ctx context.Context, r *schemas.DEKRow) (rewrapped, error) {
	out := rewrapped{path: schemas.PathCustodian}
	res, err := keys.Rewrap(ctx, f.src, keys.RewrapRequest{Src: f.bind(r.DEKID), SrcMech: r.Wrap, Wrapped: r.Wrapped,
		Dst: f.dst, DstB: f.bind(r.DEKID), KCV: r.KCV})
	if err != nil {
		if errors.Is(err, schemas.ErrKCVMismatch) {
			out.proof = schemas.ProofKCV
			return out, fmt.Errorf("dek_id %q: the source custodian %s returned a wrong key: %w. "+
				"Nothing was committed for this DEK; a resume (--resume) tries it again. If it repeats, have the HSM checked", r.DEKID, f.src.URI(), err)
		}
		return out, err
	}
	out.wrapped, out.proof, out.kcv = res.Wrapped, res.Proof, res.KCV
	if out.kcv == nil {
		out.kcv = r.KCV // the same key under the same dek_id
	}
	needProof := out.proof == "" && (len(r.KCV) > 0 || f.samples.has(r.DEKID))
	if !needProof && (res.Verified || f.Spec.SkipVerify) {
		if out.proof == "" {
			out.proof = schemas.ProofNone
		}
		return out, nil
	}
	back, err := f.dst.Unwrap(ctx, f.bind(r.DEKID), f.dst.Mechanism(), out.wrapped)
	if err != nil {
		return out, fmt.Errorf("verify before commit: the target cannot unwrap what the custodian rewrapped: %w", err)
	}
	defer back.Zero()
	if out.proof == "" {
		if out.proof, err = proveDEK(ctx, &f.Spec, f.src, r, back, f.samples); err != nil {
			return out, err
		}
	}
	if out.kcv == nil {
		out.kcv = schemas.KCV(back.Bytes(), r.DEKID)
	}
	return out, nil
}

// verifyNew unwraps the new wrap with the target and compares it with the
// source DEK (verify before commit).
func (f *RewrapFn) verifyNew(ctx context.Context, r *schemas.DEKRow, w, dek []byte) error {
	back, err := f.dst.Unwrap(ctx, f.bind(r.DEKID), f.dst.Mechanism(), w)
	if err != nil {
		return fmt.Errorf("verify before commit: %w", err)
	}
	defer back.Zero()
	if !bytes.Equal(back.Bytes(), dek) {
		return fmt.Errorf("verify before commit: dek_id %q unwrapped by the target differs from the source DEK", r.DEKID)
	}
	return nil
}

// isFatalKeyErr reports errors that no other DEK or record would escape:
// the custodian is unreachable or refuses us. The run stops at once.
func isFatalKeyErr(err error) bool { return keys.IsFatal(err) }

// RewrapDEKTables is the rewrap composite; samples is SampleCells's output.
func RewrapDEKTables(s beam.Scope, spec Spec, files, samples beam.PCollection) beam.PCollection {
	s = s.Scope("Rewrap")
	return beam.ParDo(s, &RewrapFn{Spec: spec}, files, beam.SideInput{Input: samples})
}
