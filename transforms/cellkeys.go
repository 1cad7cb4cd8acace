package transforms

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"reflect"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/schemas/format"
	"rekey/transforms/ledger"
)

func init() {
	register.DoFn3x1[context.Context, string, func(UnitResult), error](&CellKeysFn{})
}

// CellKeysFn migrates a record file whose cells carry their own wrapped
// DEK (format keys: cell, Tink's envelope): every cell's DEK is unwrapped
// by the source and proven by opening that cell. A rewrap wraps it with
// the target, unwraps it again and compares, and splices the new wrapped
// DEK in front of the untouched payload; a reencrypt seals the plaintext
// under a fresh DEK wrapped by the target (proven the same way, and the
// new cell opened again). The file is written to target.data with only the
// encrypted columns changed; a record any of whose cells fails is left
// out, with a failed ledger row naming the cell and the reason.
type CellKeysFn struct {
	Spec Spec

	src, dst keys.KEK
	sf, tf   format.Format
}

// Setup opens both KEKs (once per process).
func (f *CellKeysFn) Setup(ctx context.Context) (err error) {
	defer noteStop(&err)
	if f.src, f.dst, err = f.Spec.openPair(ctx); err != nil {
		return err
	}
	f.sf, f.tf, err = f.Spec.Formats()
	if err == nil && f.Spec.Mode == schemas.ModeRewrap {
		f.tf = f.sf
	}
	return err
}

// ProcessElement migrates record file rel.
func (f *CellKeysFn) ProcessElement(ctx context.Context, rel string, emit func(UnitResult)) (err error) {
	defer noteStop(&err)
	markStarted()
	return recordUnit(ctx, &f.Spec, rel, emit, func(srcPath, dstPath, part string) (UnitResult, error) {
		return f.migrateFile(ctx, rel, srcPath, dstPath, part)
	})
}

// fileKey is the one fresh DEK a record file gets when cells that carried
// their own DEKs are re-encrypted into a format whose keys are in a DEK
// table (rekey-v1, aes-gcm keys: table): a row of the file's DEK table.
type fileKey struct {
	id   string
	aead cipher.AEAD
	row  schemas.DEKRow
}

// intoTable reports whether the target keeps its keys in a DEK table.
func (f *CellKeysFn) intoTable() bool {
	return f.Spec.Mode == schemas.ModeReencrypt && f.tf.Keys() == format.KeyTable
}

// newFileKey mints, wraps (and checks) the DEK of record file rel.
func (f *CellKeysFn) newFileKey(ctx context.Context, rel string) (*fileKey, error) {
	h := sha256.Sum256([]byte(rel))
	id := f.Spec.RunID + "-" + hex.EncodeToString(h[:12])
	dek, err := f.freshSecret(ctx)
	if err != nil {
		return nil, fmt.Errorf("a new DEK for %s: %w", rel, err)
	}
	defer dek.Zero()
	w, err := wrapVerified(ctx, &f.Spec, f.dst, TableBinding(format.TableOf(f.tf), id), dek)
	if err != nil {
		return nil, fmt.Errorf("the new DEK of %s: %w", rel, err)
	}
	aead, err := f.tf.Cipher(dek.Bytes())
	if err != nil {
		return nil, err
	}
	return &fileKey{id: id, aead: aead, row: schemas.DEKRow{DEKID: id, KEK: f.dst.URI(), Wrap: f.dst.Mechanism(), Wrapped: w,
		Created: now(), KCV: schemas.KCV(dek.Bytes(), id)}}, nil
}

// dekIDField is the dek_id column a record file gains when its cells move
// from carrying their DEKs to a DEK table.
type dekIDField struct {
	parquet.Node
	name string
}

func (d dekIDField) Name() string                           { return d.name }
func (d dekIDField) Value(base reflect.Value) reflect.Value { return reflect.Value{} }

// cellJob is one cell of a batch and what became of it.
type cellJob struct {
	row, enc int    // row in the batch, index into the encrypted columns
	cell     []byte // aliases the reader's row buffer until the batch is written
	id       string
	fields   []string // source templates' fields
	tfields  []string // target templates' fields
	out      []byte   // the new cell
	tag      []byte   // its AEAD tag (reencrypt)
	oldKey   string   // keyName of the source's wrapped DEK
	newKey   string
	err      string
	fatal    error
	// fk is the record file's new DEK (a reencrypt into a DEK table
	// format), nil otherwise.
	fk *fileKey
}

func (f *CellKeysFn) migrateFile(ctx context.Context, rel, srcPath, dstPath, part string) (UnitResult, error) {
	spec := &f.Spec
	res := UnitResult{Unit: srcPath}
	res.Totals.Files = 1
	pf, in, err := openParquet(ctx, srcPath)
	if err != nil {
		return res, err
	}
	defer in.Close()
	l, err := layoutFor(pf.Schema(), spec, f.sf, f.tf)
	if err != nil {
		return res, fmt.Errorf("%s: %w", srcPath, err)
	}
	names := leafNames(pf.Schema())
	nameOf := func(c int) string { return names[c] }
	fp, err := Fingerprint(in)
	if err != nil {
		return res, err
	}
	out, err := storage.Create(ctx, dstPath)
	if err != nil {
		return res, outputErr(dstPath, err)
	}
	committed := false
	defer func() {
		if !committed {
			_ = out.Abort()
		}
	}()
	kept := keepSchema(out, dstPath, pf)
	if spec.Mode == schemas.ModeReencrypt && f.sf.Text() != f.tf.Text() {
		// Text cells becoming binary (or back): their columns' written
		// types are kept (docs/FORMAT.md, Column types).
		kept.changed = map[string]bool{}
		for _, c := range spec.Encrypted {
			kept.changed[c] = true
		}
	}
	var tf format.Format // a rewrap keeps the columns' types
	if spec.Mode == schemas.ModeReencrypt {
		tf = f.tf
	}
	schema := outputSchemaFor(pf.Schema(), spec.Encrypted, tf, "", "")
	var fk *fileKey
	dekCol := -1
	if f.intoTable() {
		if _, clash := pf.Schema().Lookup(spec.DEKColumn); clash {
			return res, fmt.Errorf("%s: the target's dek_id column %q exists already in this file: set columns.dek_id to a new name", srcPath, spec.DEKColumn)
		}
		if fk, err = f.newFileKey(ctx, rel); err != nil {
			return res, err
		}
		fields := append(append([]parquet.Field(nil), schema.Fields()...), dekIDField{Node: parquet.String(), name: spec.DEKColumn})
		dekCol = len(schema.Columns())
		schema = parquet.NewSchema(schema.Name(), rootNode{Node: schema, fields: fields})
		kept.own = true
	}
	pw := parquet.NewWriter(kept, recordWriterOptions(spec, pf, schema, fp)...)
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
	rows := make([]parquet.Row, spec.rowBatch())
	ids := make([]string, len(rows))
	whyNot := make([]string, len(rows))
	var jobs []cellJob
	deks := int64(0)
	rowBase := int64(0) // the file's row number of rows[0]
	for _, rg := range pf.RowGroups() {
		rr := rg.Rows()
		for {
			if err := checkInterrupt(); err != nil {
				rr.Close()
				return res, err
			}
			n, rerr := rr.ReadRows(rows)
			if n > 0 {
				jobs = jobs[:0]
				for i := 0; i < n; i++ {
					ids[i], whyNot[i] = "", ""
					row := rows[i]
					iv := findValue(row, l.id)
					if iv < 0 {
						whyNot[i] = "row has no value for the record id column"
						continue
					}
					if ids[i], err = recordID(row[iv]); err != nil {
						whyNot[i] = err.Error()
						continue
					}
					fields, err := rowFields(nil, row, l.needs, l.needsNull, nameOf)
					if err != nil {
						whyNot[i] = fmt.Sprintf("record %q: %v", ids[i], err)
						continue
					}
					tfields := fields
					if f.tf != f.sf {
						if tfields, err = rowFields(nil, row, l.tneeds, nil, nameOf); err != nil {
							whyNot[i] = fmt.Sprintf("record %q: %v", ids[i], err)
							continue
						}
					}
					for k, col := range l.enc {
						vi := findValue(row, col)
						if vi < 0 || row[vi].IsNull() {
							continue // a null cell stays null
						}
						jobs = append(jobs, cellJob{row: i, enc: k, cell: row[vi].ByteArray(), id: ids[i], fields: fields, tfields: tfields, fk: fk})
					}
				}
				fatal := parallel(len(jobs), spec.KeyWorkers(), func(_, j int) error {
					f.migrateCell(ctx, &jobs[j], l.encName[jobs[j].enc])
					return jobs[j].fatal
				})
				if fatal != nil {
					rr.Close()
					return res, fatal
				}
				deks += int64(len(jobs))
				// Each row's cells are consecutive in jobs.
				keep := make([]parquet.Row, 0, n)
				lrows := make([]schemas.LedgerRow, 0, n)
				at := now()
				j := 0
				for i := 0; i < n; i++ {
					lr := schemas.LedgerRow{RunID: spec.RunID, Mode: spec.Mode, Unit: schemas.UnitRecord, Source: srcPath, Target: dstPath,
						RecordID: ids[i], SourceKEK: f.src.URI(), TargetKEK: f.dst.URI(), At: at, Proof: schemas.ProofCell}
					first := j
					for j < len(jobs) && jobs[j].row == i {
						j++
					}
					mine := jobs[first:j]
					lr.Status = schemas.StatusMigrated
					switch {
					case whyNot[i] != "":
						lr.Status, lr.Error, lr.Proof = schemas.StatusFailed, whyNot[i], ""
					default:
						for _, c := range mine {
							if c.err != "" {
								lr.Status, lr.Error = schemas.StatusFailed, c.err
								break
							}
						}
					}
					if len(mine) > 0 {
						lr.DEKID, lr.NewDEKID = mine[0].oldKey, mine[0].newKey
						if lr.Status == schemas.StatusFailed {
							lr.NewDEKID = ""
						}
					}
					if lr.Status == schemas.StatusMigrated {
						lr.Bytes, lr.Checksum = f.cellsSum(mine)
						out := withCells(rows[i], l.enc, mine)
						if fk != nil {
							lr.NewDEKID = fk.id
							out = append(out, parquet.ByteArrayValue([]byte(fk.id)).Level(0, 0, dekCol))
						}
						keep = append(keep, out)
					}
					if lr.Status == schemas.StatusFailed && ids[i] == "" {
						// No record id to find it by: say where it is.
						lr.Error += fmt.Sprintf(" (row %d of %s, counting from 0)", rowBase+int64(i), srcPath)
					}
					res.add(&lr)
					lrows = append(lrows, lr)
				}
				if err := led.Write(lrows); err != nil {
					rr.Close()
					return res, err
				}
				if len(keep) > 0 {
					if _, err := pw.WriteRows(keep); err != nil {
						rr.Close()
						return res, outputErr(dstPath, err)
					}
				}
				Progress.Records.Add(int64(n))
				rowBase += int64(n)
				cntRecords.Inc(ctx, int64(n))
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
		if err := pw.Flush(); err != nil {
			return res, outputErr(dstPath, err)
		}
	}
	Progress.DEKs.Add(deks)
	cntDEKs.Inc(ctx, deks)
	if res.Totals.Failed > 0 {
		pw.SetKeyValueMetadata(MetaSourceFingerprint, "partial")
	}
	if fk != nil {
		// The file's DEK table before the file that needs it.
		table := &fileDEKs{rel: rel, rows: []schemas.DEKRow{fk.row},
			used: map[string]bool{fk.id: res.Totals.RecordsMigrated > 0}}
		if err := table.commit(ctx, spec); err != nil {
			return res, err
		}
		if len(table.rows) > 0 {
			dr := schemas.LedgerRow{RunID: spec.RunID, Mode: spec.Mode, Unit: schemas.UnitDEK, Source: srcPath, Target: table.path(spec),
				DEKID: "cells", NewDEKID: fk.id, SourceKEK: f.src.URI(), TargetKEK: f.dst.URI(), Status: schemas.StatusMigrated,
				Bytes: int64(len(fk.row.Wrapped)), Checksum: checksum(fk.row.Wrapped), Proof: schemas.ProofCell, At: now()}
			if err := led.Write([]schemas.LedgerRow{dr}); err != nil {
				return res, err
			}
			res.add(&dr)
		}
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

// cellsSum is a migrated record's bytes and ledger checksum: for a
// reencrypt the tags of its new cells (docs/FORMAT.md section 3), for a
// rewrap (the payload is untouched) a SHA-256 of the new cells.
func (f *CellKeysFn) cellsSum(cells []cellJob) (int64, string) {
	h := sha256.New()
	var n int64
	for _, c := range cells {
		n += int64(len(c.out))
		if f.Spec.Mode == schemas.ModeReencrypt {
			var l [4]byte
			binary.BigEndian.PutUint32(l[:], uint32(len(c.out)))
			h.Write(l[:])
			h.Write(c.tag)
		} else {
			h.Write(c.out)
		}
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if f.Spec.Mode == schemas.ModeReencrypt {
		sum = schemas.RecordChecksumPrefix + sum
	}
	return n, sum
}

// withCells is a copy of row (no longer aliasing the reader's buffers)
// with its migrated cells in place.
func withCells(row parquet.Row, enc []int, cells []cellJob) parquet.Row {
	out := make(parquet.Row, len(row))
	for i, x := range row {
		out[i] = x.Clone()
	}
	for _, c := range cells {
		vi := findValue(out, enc[c.enc])
		v := out[vi]
		out[vi] = parquet.ByteArrayValue(c.out).Level(v.RepetitionLevel(), v.DefinitionLevel(), v.Column())
	}
	return out
}

// migrateCell unwraps a cell's DEK, proves it on the cell, and makes the
// cell's replacement (rewrap: the new wrapped DEK spliced in; reencrypt:
// the plaintext sealed under a fresh DEK).
func (f *CellKeysFn) migrateCell(ctx context.Context, c *cellJob, column string) {
	fail := func(err error, format string, a ...any) {
		c.err = fmt.Sprintf("record %q column %q: ", c.id, column) + fmt.Sprintf(format, a...)
		if err != nil {
			c.err += ": " + err.Error()
			if isFatalKeyErr(err) {
				c.fatal = err
			}
		}
	}
	blob, err := f.sf.DecodeKey(c.cell)
	if err != nil {
		fail(err, "no wrapped DEK in the cell (check format_options)")
		return
	}
	c.oldKey = keyName(string(blob))
	fb, err := f.sf.Binding(&format.Cell{Column: column, RecordID: c.id, Fields: c.fields})
	if err != nil {
		fail(err, "binding")
		return
	}
	b := keys.Binding{DEKID: fb.DEKID, Context: fb.Context}
	mech := f.Spec.SourceWrap
	if mech == "" {
		mech = f.src.Mechanism()
	}
	dek, err := f.src.Unwrap(ctx, b, mech, blob)
	if err != nil {
		fail(err, "unwrap its DEK with %s (is it wrapped by source.kek?)", redactKEK(f.src.URI()))
		return
	}
	defer dek.Zero()
	aead, err := f.sf.Cipher(dek.Bytes())
	if err != nil {
		fail(err, "the unwrapped DEK")
		return
	}
	pt, err := f.sf.Open(nil, aead, c.cell, &format.Cell{Column: column, RecordID: c.id, Fields: c.fields})
	defer clear(pt)
	if err != nil {
		fail(err, "the DEK unwrapped by %s does not open the cell (format_options, a corrupt cell, or a wrong key); the record is left out", redactKEK(f.src.URI()))
		return
	}
	if f.Spec.Mode == schemas.ModeRewrap {
		w, ok := f.wrapProven(ctx, b, dek, fail)
		if !ok {
			return
		}
		if c.out, err = f.sf.ReplaceKey(c.cell, w); err != nil {
			fail(err, "splice the new wrapped DEK")
			return
		}
		c.newKey = keyName(string(w))
		return
	}
	if fk := c.fk; fk != nil {
		cell := &format.Cell{Column: column, RecordID: c.id, DEKID: fk.id, Fields: c.tfields}
		if c.out, err = f.tf.Seal(nil, fk.aead, rand.Reader, pt, cell); err != nil {
			fail(err, "seal")
			return
		}
		c.tag = bytes.Clone(cell.Tag)
		c.newKey = fk.id
		if !f.Spec.SkipVerify {
			back, err := f.tf.Open(nil, fk.aead, c.out, &format.Cell{Column: column, RecordID: c.id, DEKID: fk.id, Fields: c.tfields})
			same := err == nil && bytes.Equal(back, pt)
			clear(back)
			if !same {
				fail(err, "verify before commit: the new cell does not open to the plaintext")
			}
		}
		return
	}
	fresh, err := f.freshSecret(ctx)
	if err != nil {
		fail(err, "a new DEK")
		return
	}
	defer fresh.Zero()
	tb, err := f.tf.Binding(&format.Cell{Column: column, RecordID: c.id, Fields: c.tfields})
	if err != nil {
		fail(err, "target binding")
		return
	}
	b = keys.Binding{DEKID: tb.DEKID, Context: tb.Context}
	w, ok := f.wrapProven(ctx, b, fresh, fail)
	if !ok {
		return
	}
	taead, err := f.tf.Cipher(fresh.Bytes())
	if err != nil {
		fail(err, "the new DEK")
		return
	}
	cell := &format.Cell{Column: column, RecordID: c.id, Fields: c.tfields, Key: w}
	if c.out, err = f.tf.Seal(nil, taead, rand.Reader, pt, cell); err != nil {
		fail(err, "seal")
		return
	}
	c.tag = bytes.Clone(cell.Tag)
	if !f.Spec.SkipVerify {
		back, err := f.tf.Open(nil, taead, c.out, &format.Cell{Column: column, RecordID: c.id, Fields: c.tfields})
		same := err == nil && bytes.Equal(back, pt)
		clear(back)
		if !same {
			fail(err, "verify before commit: the new cell does not open to the plaintext")
			return
		}
	}
	c.newKey = keyName(string(w))
}

// wrapProven wraps dek with the target under b, verified; fail gets why not.
func (f *CellKeysFn) wrapProven(ctx context.Context, b keys.Binding, dek *keys.DEK, fail func(error, string, ...any)) ([]byte, bool) {
	w, err := wrapVerified(ctx, &f.Spec, f.dst, b, dek)
	if err != nil {
		fail(err, "the new wrapped DEK")
		return nil, false
	}
	return w, true
}

// freshSecret is a new DEK in the target format's secret form (a Tink
// serialized AES-GCM key), from the target's generator (dek_source: hsm,
// when it has one) or crypto/rand.
func (f *CellKeysFn) freshSecret(ctx context.Context) (*keys.DEK, error) {
	key, err := freshDEK(ctx, &f.Spec, f.dst)
	if err != nil {
		return nil, err
	}
	enc, ok := f.tf.(format.SecretEncoder)
	if !ok {
		return key, nil
	}
	defer key.Zero()
	s, err := enc.EncodeSecret(key.Bytes())
	if err != nil {
		return nil, err
	}
	defer clear(s)
	return keys.NewDEK(s)
}

// CellKeys is the rewrap or reencrypt of a dataset whose cells carry their
// own wrapped DEKs.
func CellKeys(s beam.Scope, spec Spec, files beam.PCollection) beam.PCollection {
	s = s.Scope("CellKeys")
	return beam.ParDo(s, &CellKeysFn{Spec: spec}, files)
}
