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
	"rekey/schemas/format"
	"rekey/transforms/ledger"
)

func init() {
	register.DoFn3x1[context.Context, string, func(UnitResult), error](&RewrapKeyColumnFn{})
}

// RewrapKeyColumnFn rewraps the wrapped keys a record file keeps in a
// column (format keys: column): each distinct wrapped key of the file is
// unwrapped by the source, proven by opening a cell of a row that uses it,
// wrapped by the target with the same binding, unwrapped again and
// compared; the file is written to target.data with only that column
// changed (every other value as read, cells untouched). Rows whose key
// fails are left out of the output with a failed ledger row.
type RewrapKeyColumnFn struct {
	Spec Spec

	src, dst keys.KEK
	sf       format.Format
}

// Setup opens both KEKs (once per process).
func (f *RewrapKeyColumnFn) Setup(ctx context.Context) (err error) {
	defer noteStop(&err)
	if f.src, f.dst, err = f.Spec.openPair(ctx); err != nil {
		return err
	}
	f.sf, _, err = f.Spec.Formats()
	return err
}

// ProcessElement rewraps the key column of record file rel.
func (f *RewrapKeyColumnFn) ProcessElement(ctx context.Context, rel string, emit func(UnitResult)) (err error) {
	defer noteStop(&err)
	markStarted()
	return recordUnit(ctx, &f.Spec, rel, emit, func(srcPath, dstPath, part string) (UnitResult, error) {
		return f.rewrapFile(ctx, srcPath, dstPath, part)
	})
}

// colRewrap is one distinct wrapped key of a file and what became of it.
type colRewrap struct {
	name    string // keyName of the source key
	blob    []byte
	b       keys.Binding
	proof   []cellRef         // cells under this key (up to maxProofCells), to prove the unwrapped key
	bad     map[string]string // records whose tried cell did not open with it: why
	value   []byte            // the new column value (encoded)
	newName string            // keyName of the new wrapped key
	sum     string
	proofs  string // schemas.Proof*
	err     string
	fatal   error
}

type cellRef struct {
	column, recordID string
	fields           []string
	cell             []byte
}

func (f *RewrapKeyColumnFn) rewrapFile(ctx context.Context, srcPath, dstPath, part string) (UnitResult, error) {
	spec := &f.Spec
	res := UnitResult{Unit: srcPath}
	res.Totals.Files = 1
	pf, in, err := openParquet(ctx, srcPath)
	if err != nil {
		return res, err
	}
	defer in.Close()
	l, err := layoutFor(pf.Schema(), spec, f.sf, nil)
	if err != nil {
		return res, fmt.Errorf("%s: %w", srcPath, err)
	}
	names := leafNames(pf.Schema())
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
	pw := parquet.NewWriter(kept, recordWriterOptions(spec, pf, outputSchema(pf.Schema(), nil), fp)...)
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
	known := map[string]*colRewrap{}
	rows := make([]parquet.Row, spec.rowBatch())
	keyOf := make([]string, len(rows))
	whyNot := make([]string, len(rows))
	ids := make([]string, len(rows))
	nameOf := func(c int) string { return names[c] }
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
				var fresh []*colRewrap
				var fields []string
				for i := 0; i < n; i++ {
					keyOf[i], whyNot[i], ids[i] = "", "", ""
					row := rows[i]
					iv, dv := findValue(row, l.id), findValue(row, l.dek)
					if iv < 0 || dv < 0 {
						whyNot[i] = "row has no value for the record id or wrapped-key column"
						continue
					}
					if ids[i], err = recordID(row[iv]); err != nil {
						whyNot[i] = err.Error()
						continue
					}
					if row[dv].IsNull() {
						whyNot[i] = fmt.Sprintf("record %q has a null wrapped key in column %q", ids[i], names[l.dek])
						continue
					}
					if fields, err = rowFields(fields, row, l.needs, l.needsNull, nameOf); err != nil {
						whyNot[i] = fmt.Sprintf("record %q: %v", ids[i], err)
						continue
					}
					key, blob, b, err := columnKey(f.sf, row[dv].ByteArray(), fields)
					if err != nil {
						whyNot[i] = fmt.Sprintf("record %q: column %q: %v (is key_encoding right?)", ids[i], names[l.dek], err)
						continue
					}
					keyOf[i] = key
					k := known[key]
					if k == nil {
						k = &colRewrap{name: keyName(key), blob: blob, b: b}
						known[key] = k
						fresh = append(fresh, k)
					}
					if k.value == nil && k.err == "" && len(k.proof) < maxProofCells {
						for c, col := range l.enc {
							vi := findValue(row, col)
							if vi >= 0 && !row[vi].IsNull() {
								k.proof = append(k.proof, cellRef{column: l.encName[c], recordID: ids[i], fields: append([]string(nil), fields...), cell: bytes.Clone(row[vi].ByteArray())})
								break
							}
						}
					}
				}
				fatal := parallel(len(fresh), spec.KeyWorkers(), func(_, i int) error {
					f.rewrapKey(ctx, fresh[i])
					return fresh[i].fatal
				})
				if fatal != nil {
					rr.Close()
					return res, fatal
				}
				keep := make([]parquet.Row, 0, n)
				ledger := make([]schemas.LedgerRow, 0, n)
				at := now()
				for i := 0; i < n; i++ {
					lr := schemas.LedgerRow{RunID: spec.RunID, Mode: spec.Mode, Unit: schemas.UnitRecord, Source: srcPath, Target: dstPath,
						RecordID: ids[i], SourceKEK: f.src.URI(), TargetKEK: f.dst.URI(), At: at}
					k := known[keyOf[i]]
					switch {
					case whyNot[i] != "":
						lr.Status, lr.Error = schemas.StatusFailed, whyNot[i]
					case k.err != "":
						lr.DEKID, lr.Status, lr.Error, lr.Proof = k.name, schemas.StatusFailed, fmt.Sprintf("record %q: %s", ids[i], k.err), k.proofs
					case k.bad[ids[i]] != "":
						lr.DEKID, lr.Status, lr.Error, lr.Proof = k.name, schemas.StatusFailed, k.bad[ids[i]], k.proofs
					default:
						lr.DEKID, lr.NewDEKID, lr.Status, lr.Proof = k.name, k.newName, schemas.StatusMigrated, k.proofs
						lr.Bytes, lr.Checksum = int64(len(k.value)), k.sum
						keep = append(keep, withKey(rows[i], l.dek, k.value))
					}
					if lr.Status == schemas.StatusFailed && ids[i] == "" {
						// No record id to find it by: say where it is.
						lr.Error += fmt.Sprintf(" (row %d of %s, counting from 0)", rowBase+int64(i), srcPath)
					}
					res.add(&lr)
					ledger = append(ledger, lr)
				}
				if err := led.Write(ledger); err != nil {
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
	Progress.DEKs.Add(int64(len(known)))
	cntDEKs.Inc(ctx, int64(len(known)))
	if res.Totals.Failed > 0 {
		pw.SetKeyValueMetadata(MetaSourceFingerprint, "partial")
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

// maxProofCells is how many cells a key of a key column is tried on.
const maxProofCells = 4

// withKey is a copy of row (its values no longer alias the reader's
// buffers) with the value of column col replaced by v.
func withKey(row parquet.Row, col int, v []byte) parquet.Row {
	out := make(parquet.Row, len(row))
	for i, x := range row {
		if x.Column() == col {
			out[i] = parquet.ByteArrayValue(v).Level(x.RepetitionLevel(), x.DefinitionLevel(), col)
		} else {
			out[i] = x.Clone()
		}
	}
	return out
}

// rewrapKey unwraps k with the source, proves it on its cell, wraps it with
// the target under the same binding and checks the target gives it back.
func (f *RewrapKeyColumnFn) rewrapKey(ctx context.Context, k *colRewrap) {
	defer func() {
		if r := recover(); r != nil {
			k.err = fmt.Sprintf("internal error (panic): %v", r)
		}
	}()
	fail := func(err error, format string, a ...any) {
		k.err = fmt.Sprintf(format, a...) + ": " + err.Error()
		if isFatalKeyErr(err) {
			k.fatal = err
		}
	}
	mech := f.Spec.SourceWrap
	if mech == "" {
		mech = f.src.Mechanism()
	}
	dek, err := f.src.Unwrap(ctx, k.b, mech, k.blob)
	if err != nil {
		fail(err, "column %q: unwrap %s (%s) with %s (is it wrapped by source.kek, with the configured key_encoding and binding?)", f.sf.KeyColumn(), k.name, k.b, redactKEK(f.src.URI()))
		return
	}
	defer dek.Zero()
	k.proofs = schemas.ProofNone
	if len(k.proof) > 0 {
		// The key is proven when a cell under it opens; the records whose
		// tried cell does not open fail on their own (a corrupt cell
		// must not fail the other records of its key).
		k.proofs = schemas.ProofCell
		aead, err := f.sf.Cipher(dek.Bytes())
		if err != nil {
			fail(err, "column %q: %s", f.sf.KeyColumn(), k.name)
			return
		}
		opened := false
		var firstErr error
		for _, c := range k.proof {
			pt, err := f.sf.Open(nil, aead, c.cell, &format.Cell{Column: c.column, RecordID: c.recordID, Fields: c.fields})
			clear(pt)
			if err == nil {
				opened = true
				continue
			}
			if firstErr == nil {
				firstErr = err
			}
			if k.bad == nil {
				k.bad = map[string]string{}
			}
			k.bad[c.recordID] = fmt.Sprintf("record %q column %q: %v (check format_options: layout, nonce_size, tag_size, encoding, aad); the record is left out", c.recordID, c.column, err)
		}
		if !opened {
			r := k.proof[0]
			k.err = fmt.Sprintf("column %q: the key %s unwrapped by %s opens none of the %d cells tried (first: record %q, column %q: %v). Either the format options (layout, nonce_size, tag_size, encoding, aad) do not match the data, the cells are corrupt, or the custodian returned a wrong key; nothing was committed for it",
				f.sf.KeyColumn(), k.name, redactKEK(f.src.URI()), len(k.proof), r.recordID, r.column, firstErr)
			return
		}
	}
	w, err := f.dst.Wrap(ctx, k.b, dek)
	if err != nil {
		fail(err, "wrap %s with %s", k.name, redactKEK(f.dst.URI()))
		return
	}
	if !f.Spec.SkipVerify {
		back, err := f.dst.Unwrap(ctx, k.b, f.dst.Mechanism(), w)
		if err != nil {
			fail(err, "verify before commit: unwrap the new wrap of %s", k.name)
			return
		}
		same := bytes.Equal(back.Bytes(), dek.Bytes())
		back.Zero()
		if !same {
			k.err = fmt.Sprintf("verify before commit: the target returned another key for %s", k.name)
			return
		}
	}
	k.value = f.sf.EncodeKey(w)
	k.newName = keyName(k.b.String() + "\x00" + string(w))
	k.sum = checksum(k.value)
}

// RewrapKeyColumn is the rewrap of a dataset whose wrapped keys are in a
// column of its record files.
func RewrapKeyColumn(s beam.Scope, spec Spec, files beam.PCollection) beam.PCollection {
	s = s.Scope("RewrapKeyColumn")
	return beam.ParDo(s, &RewrapKeyColumnFn{Spec: spec}, files)
}
