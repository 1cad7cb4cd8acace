package transforms

import (
	"bufio"
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"log"
	"runtime/debug"
	"sync"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/snappy"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/schemas/format"
	"rekey/transforms/ledger"
)

func init() {
	register.DoFn4x1[context.Context, string, func(*DEKMap) bool, func(UnitResult), error](&ReencryptFn{})
	register.Iter1[DEKMap]()
}

// ReencryptFn re-encrypts one record file: every encrypted cell is opened
// with its source DEK, sealed under the fresh DEK that replaces it, opened
// again and compared with the plaintext (verify before commit), and the
// output file is committed only when written whole. A record that fails is
// left out of the output and gets a failed ledger row.
type ReencryptFn struct {
	Spec Spec

	src, dst keys.KEK
	sf, tf   format.Format // source and target cell formats
	cache    *keys.Cache
	maps     map[string]*DEKMap
	fl       *flight // this bundle's files in flight
}

// Setup opens both KEKs (once per process).
func (f *ReencryptFn) Setup(ctx context.Context) (err error) {
	defer noteStop(&err)
	if f.src, f.dst, err = f.Spec.openPair(ctx); err != nil {
		return err
	}
	if f.sf, f.tf, err = f.Spec.Formats(); err != nil {
		return err
	}
	f.cache = processCache(f.Spec.CacheSize)
	return nil
}

func (f *ReencryptFn) loadMaps(iter func(*DEKMap) bool) {
	if f.maps != nil {
		return
	}
	f.maps = map[string]*DEKMap{}
	var m DEKMap
	for iter(&m) {
		c := m
		if prev, ok := f.maps[c.SourceID]; ok {
			if !bytes.Equal(prev.SourceWrapped, c.SourceWrapped) || prev.SourceKEK != c.SourceKEK {
				prev.Err = fmt.Sprintf("dek_id %q appears more than once in the source DEK table with different wrapped keys", c.SourceID)
			}
			continue
		}
		f.maps[c.SourceID] = &c
	}
}

// cellScratch is one worker goroutine's reusable buffers.
type cellScratch struct {
	pt, back        []byte
	cell, cell2     format.Cell
	fields, tfields []string
	sum             [sha256.Size]byte
	nonces          io.Reader
	hash            hash.Hash // the ledger checksum, reset per record
	cells           [][]byte
	arena           *arena   // new ciphertexts of the current batch (the batch's)
	strs            strArena // record ids and checksums of the ledger rows
}

// alloc returns an empty slice with room for n bytes, carved from the
// batch's arena for this worker: the cells live as long as the batch, and
// the arena is reused once the writer has encoded it.
func (sc *cellScratch) alloc(n int) []byte { return sc.arena.alloc(n) }

type rowOutcome struct {
	ok    bool
	id    string
	dekID string
	err   string
	bytes int64
	sum   string
	fatal error // the custodian refuses us: stop the run
}

// ProcessElement re-encrypts record file rel.
func (f *ReencryptFn) ProcessElement(ctx context.Context, rel string, deks func(*DEKMap) bool, emit func(UnitResult)) (err error) {
	defer noteStop(&err)
	markStarted()
	f.loadMaps(deks)
	if f.fl == nil {
		f.fl = newFlight(f.Spec.filesInFlight())
	}
	// The files in flight count on their own goroutines. Beam adds a
	// counter to a plain map the first time it is incremented: create
	// them here, on the bundle goroutine, so the files only read the map
	// (the increments themselves are atomic).
	for _, c := range [...]beam.Counter{cntRecords, cntBytes, cntFailed, cntFiles} {
		c.Inc(ctx, 0)
	}
	fl := f.fl
	err = fl.start(emit, func(emit func(UnitResult)) error {
		return recordUnit(ctx, &f.Spec, rel, emit, func(srcPath, dstPath, part string) (UnitResult, error) {
			return f.reencryptFile(ctx, fl, rel, srcPath, dstPath, part)
		})
	})
	if err != nil {
		f.fl = nil
	}
	return err
}

// FinishBundle waits for the bundle's files in flight and emits their
// results. (Beam wants the side input in its signature; it is not read.)
func (f *ReencryptFn) FinishBundle(ctx context.Context, _ func(*DEKMap) bool, emit func(UnitResult)) (err error) {
	defer noteStop(&err)
	if f.fl == nil {
		return nil
	}
	fl := f.fl
	f.fl = nil
	return fl.drain(emit)
}

// recordUnit is the skeleton of a stage that writes one record file per
// source file: a unit committed by an earlier attempt is replayed from its
// ledger part (resume), an unchanged one skipped (incremental), and a file
// that fails as a whole becomes one failed ledger row unless the error
// stops the run (a custodian that refuses us, output that cannot be
// written).
func recordUnit(ctx context.Context, spec *Spec, rel string, emit func(UnitResult), do func(srcPath, dstPath, part string) (UnitResult, error)) error {
	if err := checkInterrupt(); err != nil {
		return err
	}
	srcPath := storage.Join(spec.SourceData, rel)
	dstPath := storage.Join(spec.TargetData, rel)
	part := spec.LedgerPart("data", rel)
	if res, done, err := alreadyDone(ctx, spec, &part, srcPath); err != nil {
		return err
	} else if done {
		emit(res)
		return nil
	}
	if same, fp, err := unchanged(ctx, spec, srcPath, dstPath); err == nil && same {
		res, err := skipUnchanged(ctx, spec, part, srcPath, dstPath, fp)
		if err != nil {
			return err
		}
		emit(res)
		return nil
	}
	res, err := doUnit(do, srcPath, dstPath, part)
	if err != nil {
		if stops(err) {
			return err
		}
		row, fres := fileFailure(spec, srcPath, 0, err)
		if err := ledger.WritePart(ctx, part, []schemas.LedgerRow{row}); err != nil {
			return err
		}
		Progress.Failed.Add(1)
		cntFailed.Inc(ctx, 1)
		emit(fres)
		return spec.MaxFailures.check()
	}
	Progress.Files.Add(1)
	cntFiles.Inc(ctx, 1)
	emit(res)
	return spec.MaxFailures.check()
}

// doUnit is do, a panic becoming the file's error: a corrupt file can make
// the Parquet reader panic, and that file then fails alone (a failed ledger
// row naming it), as when the reader returns an error; the file's deferred
// cleanup (abort of its pending outputs) has run by then.
func doUnit(do func(srcPath, dstPath, part string) (UnitResult, error), srcPath, dstPath, part string) (res UnitResult, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s: internal error (panic) while migrating the file: %v (is the file corrupt? check it with a Parquet tool)", srcPath, r)
			log.Printf("rekey: recovered panic migrating %s: %v\n%s", srcPath, r, debug.Stack())
		}
	}()
	return do(srcPath, dstPath, part)
}

// recordWriterOptions are the options of a record file written from pf:
// the target schema, snappy, the source's key-value metadata (but rekey's
// own) and this run's.
func recordWriterOptions(spec *Spec, pf *parquet.File, schema *parquet.Schema, fp string) []parquet.WriterOption {
	opts := []parquet.WriterOption{schema, parquet.Compression(&snappy.Codec{})}
	for _, kv := range pf.Metadata().KeyValueMetadata {
		if kv.Key != MetaSourceFingerprint && kv.Key != MetaRunID && kv.Key != MetaTarget {
			opts = append(opts, parquet.KeyValueMetadata(kv.Key, kv.Value))
		}
	}
	return append(opts, outputMeta(spec, fp)...)
}

// reencryptFile re-encrypts one file and commits it, then its ledger part
// (streamed batch by batch into a pending part, so memory does not grow
// with the records of a file).
func (f *ReencryptFn) reencryptFile(ctx context.Context, fl *flight, rel, srcPath, dstPath, part string) (UnitResult, error) {
	spec := &f.Spec
	res := UnitResult{Unit: srcPath}
	res.Totals.Files = 1
	pf, in, err := openParquet(ctx, srcPath)
	if err != nil {
		return res, err
	}
	defer in.Close()
	// The row groups' memory is held until the writer has flushed the
	// last one; the file's close, fsync and commit (tens of milliseconds
	// of I/O wait for a 32 MiB file) then overlap the next file's rows.
	release := sync.OnceFunc(fl.reserve(largestRowGroup(pf)))
	defer release()
	layout, err := layoutFor(pf.Schema(), spec, f.sf, f.tf)
	if err != nil {
		return res, fmt.Errorf("%s: %w", srcPath, err)
	}
	colNames := leafNames(pf.Schema())
	out, err := storage.Create(ctx, dstPath)
	if err != nil {
		return res, outputErr(dstPath, err)
	}
	kept := keepSchema(out, dstPath, pf) // the target's schema is the source's
	committed := false
	defer func() {
		if !committed {
			_ = out.Abort()
		}
	}()
	fp, err := Fingerprint(in)
	if err != nil {
		return res, err
	}
	keyCol := ""
	kept.changed = map[string]bool{}
	if layout.keyCol {
		keyCol = f.sf.KeyColumn()
		kept.changed[keyCol] = true
	}
	if f.sf.Text() != f.tf.Text() {
		for _, c := range spec.Encrypted {
			kept.changed[c] = true
		}
	}
	pw := parquet.NewWriter(kept, recordWriterOptions(spec, pf, outputSchemaFor(pf.Schema(), spec.Encrypted, f.tf, keyCol, spec.DEKColumn), fp)...)
	led, err := ledger.Create(ctx, part)
	if err != nil {
		return res, err
	}
	ledgerDone := false
	defer func() {
		if !ledgerDone {
			led.Abort()
		}
	}()
	keysOf := map[string]*filePair{}
	var minted *fileDEKs // keys in a column: this file's new DEKs
	if layout.keyCol {
		minted = &fileDEKs{rel: rel, used: map[string]bool{}}
	}
	workers := spec.workers()
	scratch := make([]cellScratch, workers)
	for i := range scratch {
		// Nonces come from crypto/rand in blocks: one read per 340 cells
		// instead of one system call per cell.
		scratch[i].nonces = bufio.NewReaderSize(rand.Reader, 4096)
	}
	// The file's goroutine reads and re-encrypts batch k (crypto on the
	// worker pool) while a writer goroutine encodes batch k-1 and its
	// ledger rows: on two cores, Parquet encoding and crypto overlap
	// instead of alternating.
	batch := spec.rowBatch()
	pool := newBatchPool(batch, workers)
	w := startBatchWriter(pw, led, pool)
	defer w.stop()
	outcomes := make([]rowOutcome, batch)
	rowBase := int64(0) // the file's row number of rows[0]
	for g, rg := range pf.RowGroups() {
		rr := rg.Rows()
		bn := spec.batchRows(pf, g, batch)
		for {
			if err := fl.halt(); err != nil {
				rr.Close()
				return res, err
			}
			// Each batch reads into rows the writer does not hold: the
			// batch before this one may still be queued or being encoded.
			b := pool.get()
			rows := b.rows
			n, rerr := rr.ReadRows(rows[:bn])
			if n == 0 {
				pool.put(b)
			}
			if n > 0 {
				var pairs map[string]*filePair
				if minted != nil {
					pairs = f.columnPairsFor(ctx, keysOf, rows[:n], &layout, colNames, minted)
				} else {
					pairs = f.pairsFor(ctx, keysOf, rows[:n], &layout)
				}
				for i := range scratch {
					scratch[i].arena = &b.cells[i]
				}
				fatal := parallel(n, workers, func(w, i int) error {
					outcomes[i] = f.reencryptRow(ctx, &layout, rows[i], &scratch[w], pairs, colNames)
					return outcomes[i].fatal
				})
				if fatal != nil {
					rr.Close()
					return res, fatal
				}
				at := now()
				for i := 0; i < n; i++ {
					o := &outcomes[i]
					l := schemas.LedgerRow{RunID: spec.RunID, Mode: spec.Mode, Unit: schemas.UnitRecord, Source: srcPath, Target: dstPath,
						RecordID: o.id, DEKID: o.dekID, SourceKEK: f.src.URI(), TargetKEK: f.dst.URI(), At: at}
					if m := f.maps[o.dekID]; m != nil {
						l.NewDEKID = m.NewID
						l.SourceKEK = m.SourceKEK
					} else if layout.keyCol && o.dekID != "" {
						l.DEKID = keyName(o.dekID)
						if p := pairs[o.dekID]; p != nil {
							l.NewDEKID = p.newID
							if o.ok {
								minted.used[p.newID] = true
							}
						}
					}
					if o.ok {
						l.Status, l.Bytes, l.Checksum = schemas.StatusMigrated, o.bytes, o.sum
						// The reader reuses its pages for the next batch:
						// the values that still point into them are copied
						// into the batch (new cells are already its own).
						b.detachRow(rows[i], &layout)
						b.keep = append(b.keep, rows[i])
					} else {
						l.Status, l.Error, l.NewDEKID = schemas.StatusFailed, o.err, ""
						if o.id == "" {
							// No record id to find it by: say where it is.
							l.Error += fmt.Sprintf(" (row %d of %s, counting from 0)", rowBase+int64(i), srcPath)
						}
					}
					res.add(&l)
					b.ledger = append(b.ledger, l)
				}
				rowBase += int64(n)
				// The writer goroutine writes the batch's rows, then its
				// ledger rows (an error names the file it was writing).
				if err := w.write(b, false); err != nil {
					rr.Close()
					return res, outputErr(dstPath, err)
				}
				Progress.Records.Add(int64(n))
				Progress.Bytes.Add(sumBytes(outcomes[:n]))
				cntRecords.Inc(ctx, int64(n))
				cntBytes.Inc(ctx, sumBytes(outcomes[:n]))
			}
			if errors.Is(rerr, io.EOF) {
				break
			}
			if rerr != nil {
				rr.Close()
				return res, fmt.Errorf("read %s: %w (truncated or corrupt file?)", srcPath, rerr)
			}
		}
		rr.Close()
		// Keep the source's row group boundaries (and bound the writer's
		// buffered row group to the source's).
		if err := w.flush(); err != nil {
			return res, outputErr(dstPath, err)
		}
	}
	if err := w.stop(); err != nil {
		return res, outputErr(dstPath, err)
	}
	// The batches go to the garbage collector now, not when the file has
	// committed: what stays until then is the writer's footer and the
	// ledger part's last page.
	pool.drop()
	release()
	if res.Totals.Failed > 0 {
		// Records were left out: an incremental run must redo this file.
		pw.SetKeyValueMetadata(MetaSourceFingerprint, "partial")
	}
	for i := range scratch {
		clear(scratch[i].pt[:cap(scratch[i].pt)])
		clear(scratch[i].back[:cap(scratch[i].back)])
	}
	if minted != nil {
		// The new DEKs are committed before the records that need them.
		if err := minted.commit(ctx, spec); err != nil {
			return res, err
		}
		// The ledger names every DEK minted for the file (unit dek), as
		// for DEKs minted from a table.
		dekRows := make([]schemas.LedgerRow, 0, len(minted.rows))
		for _, d := range minted.rows {
			l := schemas.LedgerRow{RunID: spec.RunID, Mode: spec.Mode, Unit: schemas.UnitDEK, Source: srcPath, Target: minted.path(spec),
				DEKID: minted.source[d.DEKID], NewDEKID: d.DEKID, SourceKEK: f.src.URI(), TargetKEK: f.dst.URI(),
				Status: schemas.StatusMigrated, Bytes: int64(len(d.Wrapped)), Checksum: checksum(d.Wrapped), Proof: schemas.ProofCell, At: now()}
			res.add(&l)
			dekRows = append(dekRows, l)
		}
		if err := led.Write(dekRows); err != nil {
			return res, err
		}
		Progress.DEKs.Add(int64(len(dekRows)))
	}
	kept.closing()
	if err := pw.Close(); err != nil {
		return res, outputErr(dstPath, err)
	}
	if err := kept.Commit(); err != nil {
		return res, outputErr(dstPath, err)
	}
	committed = true
	if err := led.Commit(); err != nil {
		return res, err
	}
	ledgerDone = true
	Progress.Failed.Add(res.Totals.Failed)
	cntFailed.Inc(ctx, res.Totals.Failed)
	return res, nil
}

// largestRowGroup is the uncompressed size of pf's largest row group.
func largestRowGroup(pf *parquet.File) int64 {
	var n int64
	for _, rg := range pf.Metadata().RowGroups {
		n = max(n, rg.TotalByteSize)
	}
	return n
}

func sumBytes(o []rowOutcome) int64 {
	var n int64
	for i := range o {
		if o[i].ok {
			n += o[i].bytes
		}
	}
	return n
}

// reencryptRow rewrites row in place. A fatal key error (the HSM refuses
// us) is reported in o.fatal so the pool stops the run.
func (f *ReencryptFn) reencryptRow(ctx context.Context, l *recordLayout, row parquet.Row, sc *cellScratch, pairs map[string]*filePair, names []string) (o rowOutcome) {
	defer func() {
		if r := recover(); r != nil {
			o.ok, o.err = false, fmt.Sprintf("record %q: internal error (panic): %v", o.id, r)
		}
	}()
	fail := func(format string, a ...any) rowOutcome {
		o.ok, o.err = false, fmt.Sprintf(format, a...)
		return o
	}
	iv := findValue(row, l.id)
	dv := findValue(row, l.dek)
	if iv < 0 || dv < 0 {
		return fail("row has no value for the record id or dek_id column")
	}
	id, err := sc.strs.recordID(row[iv])
	if err != nil {
		return fail("%v", err)
	}
	o.id = id
	if row[dv].IsNull() {
		if l.keyCol {
			return fail("record %q has a null wrapped key in column %q", id, names[l.dek])
		}
		return fail("record %q has a null dek_id", id)
	}
	nameOf := func(c int) string { return names[c] }
	if sc.fields, err = rowFields(sc.fields, row, l.needs, l.needsNull, nameOf); err != nil {
		return fail("record %q: %v", id, err)
	}
	if sc.tfields, err = rowFields(sc.tfields, row, l.tneeds, l.tneedsNull, nameOf); err != nil {
		return fail("record %q: %v", id, err)
	}
	if l.keyCol {
		key, _, _, err := f.rowKey(row[dv].ByteArray(), sc.fields)
		if err != nil {
			return fail("record %q: column %q: %v (is key_encoding right?)", id, names[l.dek], err)
		}
		o.dekID = key
	} else if p := pairs[string(row[dv].ByteArray())]; p != nil && p.dekID != "" {
		o.dekID = p.dekID // the map's own string: no copy per row
	} else {
		o.dekID = sc.strs.copyString(row[dv].ByteArray())
	}
	p := pairs[o.dekID]
	if p == nil || p.err != "" {
		why := "its DEK was not resolved"
		if p != nil {
			why, o.fatal = p.err, p.fatal
		}
		return fail("record %q: %s", id, why)
	}
	if sc.hash == nil {
		sc.hash = sha256.New()
	}
	h := sc.hash
	h.Reset()
	if cap(sc.cells) < len(l.enc) {
		sc.cells = make([][]byte, len(l.enc))
	}
	newCells := sc.cells[:len(l.enc)]
	clear(newCells)
	maxCell := f.Spec.maxCell()
	srcDEKID := o.dekID
	if l.keyCol {
		srcDEKID = ""
	}
	sc.cell = format.Cell{Column: "", RecordID: id, DEKID: srcDEKID, Fields: sc.fields, AAD: sc.cell.AAD}
	sc.cell2 = format.Cell{Column: "", RecordID: id, DEKID: p.newID, Fields: sc.tfields, AAD: sc.cell2.AAD}
	var newTag []byte // the new tag's column value (a target tag_column)
	for k, col := range l.enc {
		vi := findValue(row, col)
		if vi < 0 || row[vi].IsNull() {
			continue // nulls stay null
		}
		cell := row[vi].ByteArray()
		if f.sf.MaxPlaintext(len(cell)) > maxCell {
			return fail("record %q column %q: cell is %d bytes, over the %d-byte limit (raise max_cell_bytes if this is expected)", id, l.encName[k], len(cell), maxCell)
		}
		sc.cell.Column, sc.cell2.Column = l.encName[k], l.encName[k]
		pt, err := f.sf.Open(sc.pt[:0], p.srcAEAD, cell, &sc.cell)
		sc.pt = pt
		if err != nil {
			return fail("record %q column %q: %v", id, l.encName[k], err)
		}
		ct, err := f.tf.Seal(sc.alloc(f.tf.CellLen(len(pt))), p.dstAEAD, sc.nonces, pt, &sc.cell2)
		if err != nil {
			clear(pt)
			return fail("record %q column %q: encrypt: %v", id, l.encName[k], err)
		}
		if l.ttag >= 0 {
			// The tag goes into its column (one encrypted column: one
			// tag a row); the check below reads it from there.
			newTag = f.tf.(tagColumnFormat).TagValue(sc.cell2.Tag)
			sc.cell2.Fields[l.ttagField] = string(newTag)
		}
		if !f.Spec.SkipVerify {
			back, err := f.tf.Open(sc.back[:0], p.dstAEAD, ct, &sc.cell2)
			sc.back = back
			same := err == nil && bytes.Equal(back, pt)
			clear(back)
			if !same {
				clear(pt)
				return fail("record %q column %q: verify before commit failed: the new ciphertext does not decrypt to the source plaintext", id, l.encName[k])
			}
		}
		clear(pt)
		newCells[k] = ct
		// The checksum identifies the ciphertext by its length and AEAD
		// tag (the tag authenticates every byte of it under the new DEK),
		// not by hashing every byte again: docs/FORMAT.md section 3.
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(ct)))
		h.Write(n[:])
		h.Write(sc.cell2.Tag)
		o.bytes += int64(len(ct))
	}
	for k, col := range l.enc {
		if newCells[k] == nil {
			continue
		}
		vi := findValue(row, col)
		v := row[vi]
		row[vi] = parquet.ByteArrayValue(newCells[k]).Level(v.RepetitionLevel(), v.DefinitionLevel(), v.Column())
	}
	if newTag != nil {
		ti := findValue(row, l.ttag)
		if ti < 0 {
			return fail("record %q: no value for tag column %d", id, l.ttag)
		}
		row[ti] = parquet.ByteArrayValue(newTag).Level(row[ti].RepetitionLevel(), l.ttagDef, l.ttag)
	}
	v := row[dv]
	row[dv] = parquet.ByteArrayValue(p.newIDBytes).Level(v.RepetitionLevel(), v.DefinitionLevel(), v.Column())
	o.ok = true
	o.sum = sc.strs.hexString(schemas.RecordChecksumPrefix, h.Sum(sc.sum[:0]))
	return o
}

// filePair is a source DEK and its replacement, resolved once per file (one
// cache lookup per DEK, not per row).
type filePair struct {
	src, dst   *cachedKey
	srcAEAD    cipher.AEAD // the cell ciphers of the source and target formats
	dstAEAD    cipher.AEAD
	srcName    string // keys in a column: the source key's name in the ledger
	dekID      string // keys in a table: the dek_id it is found by
	newID      string
	newIDBytes []byte
	err        string
	fatal      error
}

// pairsFor resolves the DEKs the rows name that this file has not met yet,
// in parallel (a cold cache means HSM unwraps). It runs on the bundle
// goroutine; the map is only read while the pool works.
func (f *ReencryptFn) pairsFor(ctx context.Context, known map[string]*filePair, rows []parquet.Row, l *recordLayout) map[string]*filePair {
	missing := newDEKIDs(known, rows, l.dek)
	resolved := make([]*filePair, len(missing))
	_ = parallel(len(missing), f.Spec.KeyWorkers(), func(_, i int) error {
		resolved[i] = f.resolve(ctx, missing[i])
		return nil
	})
	for i, id := range missing {
		resolved[i].dekID = id
		known[id] = resolved[i]
	}
	return known
}

func (f *ReencryptFn) resolve(ctx context.Context, dekID string) *filePair {
	m := f.maps[dekID]
	if m == nil {
		return &filePair{err: fmt.Sprintf("names dek_id %q, which is not in the source DEK table", dekID)}
	}
	if m.Err != "" {
		return &filePair{err: fmt.Sprintf("its DEK %q could not be migrated: %s", dekID, m.Err)}
	}
	src, err := unwrapCached(ctx, f.cache, f.src, TableBinding(format.TableOf(f.sf), m.SourceID), m.SourceWrap, m.SourceWrapped)
	if err != nil {
		p := &filePair{err: fmt.Sprintf("unwrap source DEK %q: %v", dekID, err)}
		if isFatalKeyErr(err) {
			p.fatal = err
		}
		return p
	}
	dst, err := unwrapCached(ctx, f.cache, f.dst, TableBinding(format.TableOf(f.tf), m.NewID), f.dst.Mechanism(), m.NewWrapped)
	if err != nil {
		p := &filePair{err: fmt.Sprintf("unwrap new DEK %q: %v", m.NewID, err)}
		if isFatalKeyErr(err) {
			p.fatal = err
		}
		return p
	}
	if len(m.NewKCV) > 0 {
		// The target custodian must give back the key that was minted:
		// a wrong key would seal cells that verify-before-commit (using
		// the same wrong key) cannot catch.
		if err := schemas.CheckKCV(dst.dek.Bytes(), m.NewID, m.NewKCV); err != nil {
			return &filePair{err: fmt.Sprintf("new DEK %q: the target custodian %s returned a key that does not match its key check value (%v); its records are left for a --resume", m.NewID, redactKEK(f.dst.URI()), err)}
		}
	}
	p := &filePair{src: src, dst: dst, newID: m.NewID, newIDBytes: []byte(m.NewID)}
	if err := f.ciphers(p); err != nil {
		return &filePair{err: err.Error()}
	}
	return p
}

// ciphers builds p's cell ciphers for the two formats (rekey-v1 reuses the
// DEK's own AES-256-GCM instance).
func (f *ReencryptFn) ciphers(p *filePair) error {
	var err error
	if p.srcAEAD, err = cellCipher(f.sf, p.src); err != nil {
		return fmt.Errorf("source DEK: %w", err)
	}
	if p.dstAEAD, err = cellCipher(f.tf, p.dst); err != nil {
		return fmt.Errorf("new DEK: %w", err)
	}
	return nil
}

func cellCipher(fm format.Format, k *cachedKey) (cipher.AEAD, error) {
	if _, v1 := fm.(format.RekeyV1); v1 && k.aead != nil && k.dek.Len() == keys.DEKSize {
		return k.aead, nil
	}
	return fm.Cipher(k.dek.Bytes())
}

// Reencrypt is the record stage of a re-encrypt run.
func Reencrypt(s beam.Scope, spec Spec, files, maps beam.PCollection) beam.PCollection {
	s = s.Scope("Reencrypt")
	return beam.ParDo(s, &ReencryptFn{Spec: spec}, files, beam.SideInput{Input: maps})
}

// batchWriter encodes batches on its own goroutine, one batch behind the
// reader: a batch's rows into the record file, then its ledger rows into
// the file's ledger part (off the reading goroutine: at 256 B cells the
// ledger was a quarter of the CPU). At most one batch waits, so memory stays
// bounded. A batch goes back to its pool once encoded (or skipped after an
// error).
type batchWriter struct {
	pw    *parquet.Writer
	led   *ledger.Writer // nil: no ledger rows to write
	pool  *batchPool
	in    chan writeReq
	done  chan struct{}
	err   error
	once  sync.Once
	errMu sync.Mutex
}

type writeReq struct {
	batch *recordBatch // nil: flush only
	flush bool
}

func startBatchWriter(pw *parquet.Writer, led *ledger.Writer, pool *batchPool) *batchWriter {
	w := &batchWriter{pw: pw, led: led, pool: pool, in: make(chan writeReq, 1), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for req := range w.in {
			w.do(req)
			if req.batch != nil {
				w.pool.put(req.batch)
			}
		}
	}()
	return w
}

func (w *batchWriter) do(req writeReq) {
	if w.failed() != nil {
		return
	}
	var err error
	defer func() {
		// A panic here would end the process (this is the writer's own
		// goroutine): it becomes the write's error and stops the file.
		if r := recover(); r != nil {
			log.Printf("rekey: recovered panic in a file's writer: %v\n%s", r, debug.Stack())
			w.errMu.Lock()
			w.err = fmt.Errorf("internal error (panic) writing the file or its ledger part: %v", r)
			w.errMu.Unlock()
		}
	}()
	if req.batch != nil && len(req.batch.keep) > 0 {
		_, err = w.pw.WriteRows(req.batch.keep)
	}
	if err == nil && req.batch != nil && len(req.batch.ledger) > 0 && w.led != nil {
		err = w.led.Write(req.batch.ledger)
	}
	if err == nil && req.flush {
		err = w.pw.Flush()
	}
	if err != nil {
		w.errMu.Lock()
		w.err = err
		w.errMu.Unlock()
	}
}

func (w *batchWriter) failed() error {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.err
}

// write queues b's rows to write; b belongs to the writer from here on.
func (w *batchWriter) write(b *recordBatch, flush bool) error {
	if err := w.failed(); err != nil {
		w.pool.put(b)
		return err
	}
	w.in <- writeReq{batch: b, flush: flush}
	return nil
}

// flush ends the row group once the batches queued before are written.
func (w *batchWriter) flush() error {
	if err := w.failed(); err != nil {
		return err
	}
	w.in <- writeReq{flush: true}
	return nil
}

// stop waits for every queued batch and returns the first write error.
func (w *batchWriter) stop() error {
	w.once.Do(func() { close(w.in) })
	<-w.done
	return w.failed()
}
