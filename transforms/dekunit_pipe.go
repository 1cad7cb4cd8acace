package transforms

import (
	"bytes"
	"context"
	"errors"
	"sync"

	"github.com/parquet-go/parquet-go"

	"rekey/schemas"
)

// dekPipe runs a dekTable's reading and writing beside the bundle's
// goroutine, which decides the batches (the custodian's calls). With one
// HSM goroutine (SoftHSM2 serialises) the HSM used to wait while a batch
// was read, indexed, and its ledger rows and target rows encoded; now the
// reader is at most two batches ahead and the writer one behind (bounded
// memory: five batches at most).
//
// Order is kept: the reader sends the batches in file order and, after the
// last good one, its error; the writer writes them in the order decided,
// so the target file and the ledger part are the ones a serial loop makes.
// The writer's first error is sticky: it stops the unit before its next
// batch is decided.
type dekPipe struct {
	u       *dekTable
	batches chan dekItem  // reader -> bundle's goroutine
	quit    chan struct{} // closed by stop: the reader ends
	read    chan struct{} // closed when the reader has ended
	toWrite chan *dekBatch
	written chan struct{} // closed when the writer has ended

	mu   sync.Mutex
	werr error
}

// dekItem is a batch, or the error that ends the source file's reading.
type dekItem struct {
	b   *dekBatch
	err error
}

var errPipeStopped = errors.New("DEK table unit stopped")

func (u *dekTable) startPipe(ctx context.Context) *dekPipe {
	p := &dekPipe{u: u, batches: make(chan dekItem, 1), quit: make(chan struct{}), read: make(chan struct{}),
		toWrite: make(chan *dekBatch, 1), written: make(chan struct{})}
	go p.reader(ctx)
	go p.writer()
	return p
}

// reader streams the source file into batches: each row its own (the
// reader's buffer is reused), its dek_id through the unit's index, its
// ledger row begun.
func (p *dekPipe) reader(ctx context.Context) {
	defer close(p.read)
	defer close(p.batches)
	u := p.u
	err := func() (err error) {
		defer recoverTo(&err)
		return readDEKTable(ctx, u.src, u.srcPath, u.spec.rowBatch(), func(rows []schemas.DEKRow, raw []parquet.Row) error {
			select {
			case p.batches <- dekItem{b: u.newBatch(rows, raw)}:
				return nil
			case <-p.quit:
				return errPipeStopped
			}
		})
	}()
	if err != nil && !errors.Is(err, errPipeStopped) {
		select {
		case p.batches <- dekItem{err: err}:
		case <-p.quit:
		}
	}
}

// newBatch copies rows (the reader reuses its buffer) and begins each
// one's ledger row.
func (u *dekTable) newBatch(rows []schemas.DEKRow, raw []parquet.Row) *dekBatch {
	spec := u.spec
	b := &dekBatch{rows: make([]schemas.DEKRow, len(rows)), dup: make([]schemas.DEKIDStatus, len(rows)),
		led: make([]schemas.LedgerRow, len(rows)), out: make([]schemas.DEKRow, len(rows))}
	if raw != nil {
		b.raw = make([]parquet.Row, len(raw))
		for i := range raw {
			b.raw[i] = raw[i].Clone()
		}
	}
	for i := range rows {
		r := &b.rows[i]
		*r = rows[i]
		r.Wrapped, r.KCV = bytes.Clone(r.Wrapped), bytes.Clone(r.KCV)
		b.dup[i] = u.index.Add(0, r)
		b.led[i] = schemas.LedgerRow{RunID: spec.RunID, Mode: spec.Mode, Unit: schemas.UnitDEK, Source: u.srcPath, Target: u.dstPath,
			DEKID: r.DEKID, NewDEKID: r.DEKID, SourceKEK: r.KEK, TargetKEK: u.targetKEK}
	}
	return b
}

// writer settles each decided batch (u.settle, when set), counts it in the
// unit's result and writes its ledger rows and the target rows of its
// migrated DEKs; a batch it does not write has its DEKs zeroed (drop).
func (p *dekPipe) writer() {
	defer close(p.written)
	u := p.u
	for b := range p.toWrite {
		if p.writeErr() != nil {
			b.drop()
			continue // the unit is dropped: nothing more to write
		}
		err := func() (err error) {
			defer b.drop()
			defer recoverTo(&err)
			if u.settle != nil {
				if err := u.settle(b); err != nil {
					return err
				}
			}
			keep, raw := b.out[:0], b.raw[:0]
			for i := range b.led {
				u.res.add(&b.led[i])
				if b.led[i].Status == schemas.StatusMigrated {
					keep = append(keep, b.out[i])
					if b.raw != nil {
						raw = append(raw, b.raw[i])
					}
				}
			}
			if err := u.lw.Write(b.led); err != nil {
				return err
			}
			if b.raw == nil {
				raw = nil
			}
			return u.out.write(keep, raw)
		}()
		if err != nil {
			p.mu.Lock()
			p.werr = err
			p.mu.Unlock()
		}
	}
}

// write hands a decided batch to the writer (waiting while it has one
// batch queued).
func (p *dekPipe) write(b *dekBatch) { p.toWrite <- b }

// writeErr is the writer's first error, nil so far.
func (p *dekPipe) writeErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.werr
}

// stop ends the reader, waits for the writer to write what it was given,
// and returns the writer's first error. The unit's outputs and result are
// the bundle's goroutine's again.
func (p *dekPipe) stop() error {
	close(p.quit)
	<-p.read
	close(p.toWrite)
	<-p.written
	return p.writeErr()
}
