package transforms

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/schemas/format"
)

// Keys kept in a column. When the source format keeps each row's wrapped
// key in the row (format keys: column), there is no DEK table to mint
// from: the record stage resolves each distinct wrapped key of a file (by
// binding and blob) once, unwraps it, mints its replacement, and commits
// the file's new DEK table rows before the file's records.

// leafNames is the name of each leaf column of schema, by column index.
func leafNames(schema *parquet.Schema) []string {
	var names []string
	for _, path := range schema.Columns() {
		names = append(names, path[len(path)-1])
	}
	return names
}

// rowKey is a row's wrapped key: its name in this file (binding and blob),
// the blob and the binding.
func (f *ReencryptFn) rowKey(v []byte, fields []string) (string, []byte, keys.Binding, error) {
	return columnKey(f.sf, v, fields)
}

// columnKey decodes a wrapped-key column value for format fm, with the
// binding the row's fields give.
func columnKey(fm format.Format, v []byte, fields []string) (string, []byte, keys.Binding, error) {
	blob, err := fm.DecodeKey(v)
	if err != nil {
		return "", nil, keys.Binding{}, err
	}
	fb, err := fm.Binding(&format.Cell{Fields: fields})
	if err != nil {
		return "", nil, keys.Binding{}, err
	}
	b := keys.Binding{DEKID: fb.DEKID, Context: fb.Context}
	return b.String() + "\x00" + string(blob), blob, b, nil
}

// keyName is how the ledger names a wrapped key kept in a column: a digest
// of its binding and blob (the blob itself is not logged).
func keyName(key string) string {
	h := sha256.Sum256([]byte(key))
	return "wrapped:" + hex.EncodeToString(h[:8])
}

// fileDEKs are the DEKs minted for one record file whose keys are in a
// column: written to target.deks as one DEK table file per record file.
type fileDEKs struct {
	rel  string
	rows []schemas.DEKRow
	used map[string]bool // new dek_ids a committed record is sealed under
	// source names the source key (keyName) each new dek_id replaces.
	source map[string]string
}

func (m *fileDEKs) path(spec *Spec) string {
	return storage.Join(spec.TargetDEKs, "data-"+unitName(m.rel)+".parquet")
}

// commit writes the file's DEK table (also when empty, so a resume finds
// the unit's outputs in one state).
func (m *fileDEKs) commit(ctx context.Context, spec *Spec) error {
	_, tf, err := spec.Formats()
	if err != nil {
		return err
	}
	w, err := createDEKOut(ctx, format.TableOf(tf), m.path(spec), nil)
	if err != nil {
		return outputErr(m.path(spec), err)
	}
	// A DEK whose every record failed is not kept: nothing depends on it.
	keep := m.rows[:0]
	for _, r := range m.rows {
		if m.used[r.DEKID] {
			keep = append(keep, r)
		}
	}
	m.rows = keep
	if err := w.write(m.rows, nil); err != nil {
		w.abort()
		return outputErr(m.path(spec), err)
	}
	if err := w.commit(); err != nil {
		return outputErr(m.path(spec), err)
	}
	return nil
}

// columnPairsFor resolves the wrapped keys of rows this file has not met
// yet: unwrap with the source, mint a replacement under the target, prove
// the wrap round-trips, and record the new DEK table row.
func (f *ReencryptFn) columnPairsFor(ctx context.Context, known map[string]*filePair, rows []parquet.Row, l *recordLayout, names []string, minted *fileDEKs) map[string]*filePair {
	type want struct {
		key  string
		blob []byte
		b    keys.Binding
	}
	var missing []want
	var fields []string
	for _, row := range rows {
		dv := findValue(row, l.dek)
		if dv < 0 || row[dv].IsNull() {
			continue
		}
		var err error
		if fields, err = rowFields(fields, row, l.needs, l.needsNull, func(c int) string { return names[c] }); err != nil {
			continue // the row fails with this error itself
		}
		key, blob, b, err := f.rowKey(row[dv].ByteArray(), fields)
		if err != nil {
			continue
		}
		if _, ok := known[key]; ok {
			continue
		}
		known[key] = nil // claimed; resolved below
		missing = append(missing, want{key, blob, b})
	}
	resolved := make([]*filePair, len(missing))
	rowsOut := make([]*schemas.DEKRow, len(missing))
	_ = parallel(len(missing), f.Spec.KeyWorkers(), func(_, i int) error {
		resolved[i], rowsOut[i] = f.resolveColumn(ctx, minted.rel, missing[i].key, missing[i].blob, missing[i].b)
		return nil
	})
	for i, w := range missing {
		known[w.key] = resolved[i]
		if rowsOut[i] != nil {
			minted.rows = append(minted.rows, *rowsOut[i])
			if minted.source == nil {
				minted.source = map[string]string{}
			}
			minted.source[rowsOut[i].DEKID] = keyName(w.key)
		}
	}
	return known
}

func (f *ReencryptFn) resolveColumn(ctx context.Context, rel, key string, blob []byte, b keys.Binding) (p *filePair, row *schemas.DEKRow) {
	name := keyName(key)
	failed := func(err error, what string) *filePair {
		p := &filePair{srcName: name, err: fmt.Sprintf("column %q: %s %s: %v (is it wrapped by source.kek, with the configured key_encoding and binding?)", f.sf.KeyColumn(), what, name, err)}
		if isFatalKeyErr(err) {
			p.fatal = err
		}
		return p
	}
	defer func() {
		if r := recover(); r != nil {
			p, row = &filePair{srcName: name, err: fmt.Sprintf("internal error (panic): %v", r)}, nil
		}
	}()
	mech := f.Spec.SourceWrap
	if mech == "" {
		mech = f.src.Mechanism()
	}
	src, err := cachedAEAD(f.cache.Get(keys.CacheKey(f.src.URI(), b, mech, blob), func() (*keys.DEK, error) {
		return f.src.Unwrap(ctx, b, mech, blob)
	}))
	if err != nil {
		return failed(err, "unwrap source key"), nil
	}
	// The new dek_id is derived from the file and the source key, so a
	// redone file names its DEKs the same way.
	h := sha256.Sum256([]byte(rel + "\x00" + key))
	newID := f.Spec.RunID + "-" + hex.EncodeToString(h[:12])
	dek, err := f.freshDEK(ctx)
	if err != nil {
		return failed(err, "new DEK for"), nil
	}
	w, err := f.dst.Wrap(ctx, TableBinding(format.TableOf(f.tf), newID), dek)
	if err != nil {
		dek.Zero()
		return failed(err, "wrap the new DEK of"), nil
	}
	if !f.Spec.SkipVerify {
		back, err := f.dst.Unwrap(ctx, TableBinding(format.TableOf(f.tf), newID), f.dst.Mechanism(), w)
		if err != nil {
			dek.Zero()
			return failed(fmt.Errorf("verify before commit: %w", err), "new DEK of"), nil
		}
		same := back.Len() == dek.Len() && string(back.Bytes()) == string(dek.Bytes())
		back.Zero()
		if !same {
			dek.Zero()
			return failed(fmt.Errorf("verify before commit: the target returned another key"), "new DEK of"), nil
		}
	}
	kcv := schemas.KCV(dek.Bytes(), newID)
	ck := keys.CacheKey(f.dst.URI(), TableBinding(format.TableOf(f.tf), newID), f.dst.Mechanism(), w)
	f.cache.Put(ck, dek) // the cache owns dek from here
	dst, err := cachedAEAD(f.cache.Get(ck, func() (*keys.DEK, error) {
		return f.dst.Unwrap(ctx, TableBinding(format.TableOf(f.tf), newID), f.dst.Mechanism(), w)
	}))
	if err != nil {
		return failed(err, "new DEK of"), nil
	}
	p = &filePair{src: src, dst: dst, srcName: name, newID: newID, newIDBytes: []byte(newID)}
	if err := f.ciphers(p); err != nil {
		return &filePair{srcName: name, err: fmt.Sprintf("column %q: %s: %v", f.sf.KeyColumn(), name, err)}, nil
	}
	return p, &schemas.DEKRow{DEKID: newID, KEK: f.dst.URI(), Wrap: f.dst.Mechanism(), Wrapped: w, Created: now(), KCV: kcv}
}

// freshDEK is a new 256-bit DEK from the target custodian's generator
// (dek_source: hsm, when it has one) or crypto/rand.
func (f *ReencryptFn) freshDEK(ctx context.Context) (*keys.DEK, error) {
	return freshDEK(ctx, &f.Spec, f.dst)
}

// freshDEK is a new 256-bit key from dst's generator (dek_source: hsm,
// when it has one) or crypto/rand: every stage that mints keys.
func freshDEK(ctx context.Context, spec *Spec, dst keys.KEK) (*keys.DEK, error) {
	if spec.DEKSource != "crypto-rand" && keys.CanGenerate(dst) {
		return keys.Generate(ctx, dst)
	}
	b := make([]byte, keys.DEKSize)
	defer clear(b)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return keys.NewDEK(b)
}

// wrapVerified wraps secret with dst under b and, unless verify is off,
// unwraps the result again and compares (verify before commit).
func wrapVerified(ctx context.Context, spec *Spec, dst keys.KEK, b keys.Binding, secret *keys.DEK) ([]byte, error) {
	w, err := dst.Wrap(ctx, b, secret)
	if err != nil {
		return nil, fmt.Errorf("wrap with %s: %w", redactKEK(dst.URI()), err)
	}
	if !spec.SkipVerify {
		back, err := dst.Unwrap(ctx, b, dst.Mechanism(), w)
		if err != nil {
			return nil, fmt.Errorf("verify before commit: unwrap the new wrap: %w", err)
		}
		same := bytes.Equal(back.Bytes(), secret.Bytes())
		back.Zero()
		if !same {
			return nil, errors.New("verify before commit: the target returned another key")
		}
	}
	return w, nil
}
