package transforms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/schemas/format"
)

// PlanSample is one cell `rekey plan` opens with the source keys before a
// run: a layout, encoding, AAD or key-location mistake shows here as a
// refused plan instead of a run whose every record fails.
type PlanSample struct {
	File     string // relative to source.data
	Column   string
	RecordID string
	DEKID    string // keys in a table: the row's dek_id
	Fields   []string
	Cell     []byte
	Key      []byte // keys in a column: the wrapped-key column's value
	Problem  string // a row that cannot even be sampled (a null or missing value)
}

// ErrUnreadableFile is returned by SampleRecords for a file that does not
// open as Parquet: the run fails it as a whole file (the plan predicts that
// from the footers, not from samples).
var ErrUnreadableFile = errors.New("record file does not open")

// SampleRecords takes up to n rows of record file rel that have an
// encrypted cell, from its first row groups.
func SampleRecords(ctx context.Context, spec *Spec, rel string, n int) ([]PlanSample, error) {
	sf, _, err := spec.Formats()
	if err != nil {
		return nil, err
	}
	pf, in, err := openParquet(ctx, storage.Join(spec.SourceData, rel))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreadableFile, err)
	}
	defer in.Close()
	l, err := layoutFor(pf.Schema(), spec, sf, nil)
	if err != nil {
		return nil, err
	}
	names := leafNames(pf.Schema())
	var out []PlanSample
	rows := make([]parquet.Row, 64)
	for _, rg := range pf.RowGroups() {
		rr := rg.Rows()
		for len(out) < n {
			k, rerr := rr.ReadRows(rows)
			for i := 0; i < k && len(out) < n; i++ {
				row := rows[i]
				s := PlanSample{File: rel}
				iv, dv := findValue(row, l.id), findValue(row, l.dek)
				if iv < 0 || l.dek >= 0 && dv < 0 || row[iv].IsNull() {
					continue
				}
				if s.RecordID, err = recordID(row[iv]); err != nil {
					continue
				}
				for c, col := range l.enc {
					if vi := findValue(row, col); vi >= 0 && !row[vi].IsNull() {
						s.Column, s.Cell = l.encName[c], bytes.Clone(row[vi].ByteArray())
						break
					}
				}
				if s.Cell == nil {
					continue
				}
				if l.dek < 0 {
					s.Key = s.Cell // the cell carries its wrapped DEK
				} else if row[dv].IsNull() {
					s.Problem = fmt.Sprintf("record %q has a null %s", s.RecordID, map[bool]string{true: "wrapped key in column " + names[l.dek], false: "dek_id"}[l.keyCol])
				} else if l.keyCol {
					s.Key = bytes.Clone(row[dv].ByteArray())
				} else {
					s.DEKID = string(row[dv].ByteArray())
				}
				if f, err := rowFields(nil, row, l.needs, l.needsNull, func(c int) string { return names[c] }); err != nil {
					s.Problem = fmt.Sprintf("record %q: %v", s.RecordID, err)
				} else {
					s.Fields = f
				}
				out = append(out, s)
			}
			if errors.Is(rerr, io.EOF) || k == 0 {
				break
			}
			if rerr != nil {
				rr.Close()
				return out, fmt.Errorf("%w: %w", ErrUnreadableFile, rerr)
			}
		}
		rr.Close()
		if len(out) >= n {
			break
		}
	}
	return out, nil
}

// OpenSample opens s with the source KEK (and the DEK table row of its
// dek_id, for keys in a table) as the run would. The error names the
// likely cause and what to change in the job.
func OpenSample(ctx context.Context, spec *Spec, src keys.KEK, s *PlanSample, row *schemas.DEKRow) error {
	sf, _, err := spec.Formats()
	if err != nil {
		return err
	}
	if s.Problem != "" {
		return errors.New(s.Problem)
	}
	var dek *keys.DEK
	switch {
	case s.Key != nil:
		_, blob, b, err := columnKey(sf, s.Key, s.Fields)
		if err != nil {
			if sf.Keys() == format.KeyCell {
				return fmt.Errorf("the cell holds no wrapped DEK: %v; check source.format and format_options (prefix, encoding)", err)
			}
			return fmt.Errorf("the wrapped key in column %q does not decode: %v; check format_options.key_encoding", sf.KeyColumn(), err)
		}
		mech := spec.SourceWrap
		if mech == "" {
			mech = src.Mechanism()
		}
		if dek, err = src.Unwrap(ctx, b, mech, blob); err != nil && sf.Keys() == format.KeyCell {
			return fmt.Errorf("the wrapped DEK in a cell of column %q does not unwrap with source.kek (%s): %v; check source.kek and source.wrap", s.Column, mech, err)
		} else if err != nil {
			return fmt.Errorf("the wrapped key in column %q does not unwrap with source.kek (%s, binding: %s): %v; check source.kek, source.wrap and format_options.binding", sf.KeyColumn(), mech, b, err)
		}
	case row == nil:
		return fmt.Errorf("dek_id %q is not in the source DEK table; check columns.dek_id and source.deks", s.DEKID)
	default:
		t := format.TableOf(sf)
		if dek, err = src.Unwrap(ctx, TableBinding(t, row.DEKID), row.Wrap, row.Wrapped); err != nil && t.App() {
			return fmt.Errorf("DEK %q does not unwrap with source.kek (%s, binding: %s): %v; check source.kek, source.wrap, format_options.binding and table_key_encoding", row.DEKID, row.Wrap, map[bool]string{true: "none", false: "dek_id"}[t.Unbound], err)
		} else if err != nil {
			return fmt.Errorf("DEK %q does not unwrap with source.kek: %v", row.DEKID, err)
		}
	}
	defer dek.Zero()
	aead, err := sf.Cipher(dek.Bytes())
	if err != nil {
		return fmt.Errorf("%v; check source.format", err)
	}
	pt, err := sf.Open(nil, aead, s.Cell, &format.Cell{Column: s.Column, RecordID: s.RecordID, DEKID: s.DEKID, Fields: s.Fields})
	clear(pt)
	if err != nil {
		return fmt.Errorf("%v; likely cause: %s", err, likelyCause(sf, err))
	}
	return nil
}

// likelyCause turns a cell error into what to change in the job.
func likelyCause(sf format.Format, err error) string {
	switch {
	case errors.Is(err, schemas.ErrEnvelopeVersion), errors.Is(err, schemas.ErrEnvelopeTooShort):
		return "the cells are not rekey-v1 envelopes: set source.format (e.g. aes-gcm) and its format_options to the layout the application wrote"
	case errors.Is(err, format.ErrCellEncoding):
		return "the column is not in the configured encoding: set format_options.encoding (raw, base64, base64-raw, base64url, base64url-raw, hex)"
	case errors.Is(err, format.ErrCellPrefix):
		return "the cells do not start with the configured prefix: fix format_options.prefix or prefix_hex"
	case errors.Is(err, format.ErrCellShort):
		return "the cells are shorter than nonce + tag: check format_options.nonce_size, tag_size, prefix and encoding"
	case errors.Is(err, format.ErrCellAuth), errors.Is(err, schemas.ErrAuthFailed):
		if sf.Name() == format.Default {
			return "the key is not this cell's, or the cell was moved or changed: check source.deks and columns.dek_id"
		}
		return "the cell did not authenticate: check format_options.layout (where nonce and tag sit), nonce_size, tag_size, encoding and aad (the AAD the application used), and that the keys are the right ones"
	}
	return "check source.format and its format_options"
}
