package transforms

import (
	"cmp"
	"context"

	"github.com/parquet-go/parquet-go"

	"rekey/schemas"
	"rekey/schemas/format"
	"rekey/transforms/ledger"
)

// dekTable is the per-file skeleton of the stages that turn one source DEK
// table file into one target DEK table file (rewrap, and mint for a
// re-encrypt): the rows are streamed in batches (memory does not grow with
// the DEKs of a file), each batch's dek_ids go through one DEKIndex, its
// rows are decided in parallel, the ledger rows and the kept target rows
// are written batch by batch, and at the end the target file is committed,
// then the ledger part (the unit's commit marker). A read error turns the
// unit into one failed file row (finishDEKUnit).
type dekTable struct {
	spec                   *Spec
	srcPath, dstPath, part string
	targetKEK              string
	src                    DEKLayout // how the source file is read
	out                    dekOut
	lw                     *ledger.Writer
	index                  *schemas.DEKIndex
	res                    UnitResult
	// workers decide rows at once (default Spec.KeyWorkers; the rewrap
	// stage sets what the HSM probe measured).
	workers int
	// settle, when set, finishes a decided batch on the writer goroutine
	// before its rows are counted and written (the rewrap stage's kcv
	// proofs and ledger rows: off the custodian's goroutine). An error
	// stops the unit, as a write error does.
	settle func(b *dekBatch) error
}

// dekBatch is one batch of a dekTable: the source rows, what the index
// said of each, and the ledger row and target row each decision fills.
// A target row is kept when its ledger row ends migrated.
type dekBatch struct {
	rows []schemas.DEKRow
	raw  []parquet.Row // an application table's source rows (nil for rekey's own)
	dup  []schemas.DEKIDStatus
	led  []schemas.LedgerRow
	out  []schemas.DEKRow
	// pend is the rewrap stage's per-row state between deciding and
	// settling; it holds unwrapped DEKs until settled or dropped.
	pend []pendingDEK
}

// drop zeroes the DEKs a batch that will not be settled still holds.
func (b *dekBatch) drop() {
	for i := range b.pend {
		if d := b.pend[i].dek; d != nil {
			d.Zero()
			b.pend[i].dek = nil
		}
	}
}

// openDEKTable creates the unit's outputs: the target DEK table file (with
// the source fingerprint fp for --incremental) in layout dst, and the
// ledger part. The source file is read in layout src. With keep (a
// rewrap of an application's table) the target is the source file with
// only the wrapped keys replaced.
func openDEKTable(ctx context.Context, spec *Spec, src DEKLayout, dst format.Table, keep bool, srcPath, dstPath, part, targetKEK, fp string) (*dekTable, error) {
	var out dekOut
	if keep && dst.App() {
		// The target is the source file with its wrapped keys replaced:
		// its schema and key-value metadata. A source that cannot be
		// opened, or lacks the table's columns, gets no output here: the
		// reader meets the same error and the unit becomes one failed
		// file row naming the source (as for rekey's own tables).
		pf, f, err := openParquet(ctx, srcPath)
		if err == nil {
			f.Close() // the schema and metadata stay in memory
			if _, err = appColumns(pf.Schema(), dst, srcPath); err == nil {
				opts := []parquet.WriterOption{}
				for _, kv := range pf.Metadata().KeyValueMetadata {
					if kv.Key != MetaSourceFingerprint && kv.Key != MetaRunID && kv.Key != MetaTarget {
						opts = append(opts, parquet.KeyValueMetadata(kv.Key, kv.Value))
					}
				}
				if out, err = createDEKOut(ctx, dst, dstPath, pf, append(opts, outputMeta(spec, fp)...)...); err != nil {
					return nil, err
				}
			}
		}
		if out == nil {
			out = noDEKOut{}
		}
	} else {
		var err error
		if out, err = createDEKOut(ctx, dst, dstPath, nil, outputMeta(spec, fp)...); err != nil {
			return nil, err
		}
	}
	lw, err := ledger.Create(ctx, part)
	if err != nil {
		out.abort()
		return nil, err
	}
	u := &dekTable{spec: spec, srcPath: srcPath, dstPath: dstPath, part: part, targetKEK: targetKEK, src: src,
		out: out, lw: lw, index: schemas.NewDEKIndex(), res: UnitResult{Unit: srcPath}}
	u.res.Totals.Files, u.res.Totals.DEKTableFiles = 1, 1
	return u, nil
}

// abort drops both outputs (nothing of the unit appears).
func (u *dekTable) abort() {
	u.out.abort()
	u.lw.Abort()
}

// run streams the source file: decide(b, i) fills b.led[i] (already holding
// the run, unit, source, target and dek_id; NewDEKID = dek_id) and b.out[i],
// or leaves them to u.settle (rewrap), and returns only errors that stop
// the run. begin and end, when set, see
// each batch before and after its rows are decided (on the bundle's
// goroutine). It reports failed when the unit became
// one failed file row, and the run's error when it must stop.
//
// Three goroutines overlap (dekPipe): one reads batch k+1 and indexes its
// dek_ids while the bundle's decides batch k (the custodian's work) and a
// third settles batch k-1 (u.settle) and writes its ledger rows and target
// rows. Batches stay in
// order, so the outputs are the ones a serial loop writes; the first error
// in that order is the unit's, and nothing is committed before every batch
// is written (finishDEKUnit).
func (u *dekTable) run(ctx context.Context, emit func(UnitResult), begin func(b *dekBatch), decide func(b *dekBatch, i int) error, end func(b *dekBatch)) (failed bool, err error) {
	spec := u.spec
	p := u.startPipe(ctx)
	readErr := func() error {
		for it := range p.batches {
			if it.err != nil {
				return it.err
			}
			if err := p.writeErr(); err != nil {
				return err
			}
			if err := checkInterrupt(); err != nil {
				return err
			}
			b := it.b
			if begin != nil {
				begin(b)
			}
			if fatal := parallel(len(b.rows), cmp.Or(u.workers, spec.KeyWorkers()), func(_, i int) error { return decide(b, i) }); fatal != nil {
				b.drop()
				return fatal
			}
			if end != nil {
				end(b)
			}
			Progress.DEKs.Add(int64(len(b.rows)))
			cntDEKs.Inc(ctx, int64(len(b.rows)))
			p.write(b)
		}
		return nil
	}()
	// A write error is of an earlier batch than anything the bundle's
	// goroutine met: it comes first, as in a serial loop.
	if werr := p.stop(); werr != nil {
		readErr = werr
	}
	_ = u.index.Close()
	if readErr == nil && u.res.Totals.Failed > 0 {
		// A table with failed DEKs left out must not look finished to an
		// incremental run.
		u.out.partial()
	}
	return finishDEKUnit(ctx, spec, u.part, u.srcPath, u.out, u.lw, readErr, emit)
}

// decided fills l from err: failed (and the error returned when it stops
// the run), or migrated with the new wrapped key's size and checksum.
func decided(l *schemas.LedgerRow, wrapped []byte, err error) error {
	if err != nil {
		l.Status, l.Error = schemas.StatusFailed, err.Error()
		if isFatalKeyErr(err) {
			return err // the custodian refuses us or stays down: stop, resume later
		}
		return nil
	}
	l.Status, l.Bytes, l.Checksum = schemas.StatusMigrated, int64(len(wrapped)), checksum(wrapped)
	return nil
}
