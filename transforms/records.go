package transforms

import (
	"fmt"
	"strconv"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress"
	"github.com/parquet-go/parquet-go/deprecated"
	"github.com/parquet-go/parquet-go/encoding"
	pqformat "github.com/parquet-go/parquet-go/format"

	"rekey/schemas/format"
)

// recordLayout locates rekey's columns in a record file's schema.
type recordLayout struct {
	enc     []int    // leaf column indexes of the encrypted columns
	encName []string // their names, for the AAD
	dek     int      // the dek_id column, or the wrapped-key column (keyCol)
	id      int
	keyCol  bool  // dek is a wrapped-key column (format keys: column)
	needs   []int // columns the source format's templates read (format.Needs)
	// needsNull marks the needs that may be null: a tag column (aes-gcm
	// tag_column) is null where the cell is; the cell's Open decides.
	needsNull []bool
	tneeds    []int // the same for the target format
	// ttag is the leaf column a target format with a tag column
	// (aes-gcm tag_column) writes each new tag into, -1 without one;
	// ttagField its index in tneeds, ttagDef its definition level when
	// not null.
	ttag, ttagField, ttagDef int
	tneedsNull               []bool
}

// tagColumnFormat is a format that keeps each cell's tag in a column of
// its own (aes-gcm tag_column).
type tagColumnFormat interface {
	TagColumn() string
	TagFieldIndex() int
	TagValue(tag []byte) []byte
}

// tagColumnOf is f's tag column, "" when its tags are in the cells.
func tagColumnOf(f format.Format) string {
	if t, ok := f.(tagColumnFormat); ok {
		return t.TagColumn()
	}
	return ""
}

// layoutFor locates the columns of a record file for source format sf and
// target format tf (tf nil: no target).
func layoutFor(schema *parquet.Schema, spec *Spec, sf, tf format.Format) (recordLayout, error) {
	dekCol := spec.DEKColumn
	switch sf.Keys() {
	case format.KeyColumn:
		dekCol = sf.KeyColumn()
	case format.KeyCell:
		dekCol = "" // each cell carries its wrapped DEK
	}
	l, err := layoutOf(schema, spec.Encrypted, dekCol, spec.IDColumn)
	if err != nil {
		return l, err
	}
	l.keyCol = sf.Keys() == format.KeyColumn
	if l.keyCol && tf != nil && tf.Keys() == format.KeyTable {
		if _, clash := schema.Lookup(spec.DEKColumn); clash {
			return l, fmt.Errorf("the target's dek_id column %q replaces wrapped-key column %q, but the file already has a column %q: set columns.dek_id to a new name", spec.DEKColumn, dekCol, spec.DEKColumn)
		}
	}
	lookup := func(f format.Format, side string) ([]int, error) {
		var out []int
		for _, name := range f.Needs() {
			c, ok := schema.Lookup(name)
			if !ok {
				return nil, fmt.Errorf("%s.format reads column %q (in its aad or binding), which this file does not have: fix the template in %s.format_options", side, name, side)
			}
			if c.MaxRepetitionLevel > 0 || !idKinds[c.Node.Type().Kind()] {
				return nil, fmt.Errorf("%s.format reads column %q, which is %s: templates read flat INT32, INT64, BYTE_ARRAY or FIXED_LEN_BYTE_ARRAY columns", side, name, c.Node.Type())
			}
			if l.keyCol && c.ColumnIndex == l.dek {
				return nil, fmt.Errorf("%s.format reads the wrapped-key column %q in a template", side, name)
			}
			out = append(out, c.ColumnIndex)
		}
		return out, nil
	}
	if l.needs, err = lookup(sf, "source"); err != nil {
		return l, err
	}
	if t, ok := sf.(interface{ TagColumn() string }); ok && t.TagColumn() != "" {
		l.needsNull = make([]bool, len(l.needs))
		for k, name := range sf.Needs() {
			l.needsNull[k] = name == t.TagColumn()
		}
	}
	l.ttag = -1
	if tf != nil {
		if name := tagColumnOf(tf); name != "" {
			// The target's tags go into a column of the file: it must be
			// there (rekey adds no column for them), flat BYTE_ARRAY, and
			// none of rekey's own.
			c, ok := schema.Lookup(name)
			switch {
			case !ok:
				return l, fmt.Errorf("target.format_options tag_column %q: the file has no such column to write the new tags into (rekey does not add one): add the column to the source files, or drop tag_column and name tag in the target layout", name)
			case c.MaxRepetitionLevel > 0 || c.Node.Type().Kind() != parquet.ByteArray:
				return l, fmt.Errorf("target.format_options tag_column %q is %s: the tags need a flat BYTE_ARRAY (string or binary) column", name, c.Node.Type())
			case l.isEnc(c.ColumnIndex) || c.ColumnIndex == l.id || c.ColumnIndex == l.dek:
				return l, fmt.Errorf("target.format_options tag_column %q is an encrypted, record id or key column", name)
			case !tf.Text() && isStringColumn(c.Node):
				return l, fmt.Errorf("target.format_options tag_column %q is a STRING column, and raw tags are not text: set the target encoding to base64 or hex, or keep the tags in a binary column", name)
			}
			l.ttag, l.ttagDef = c.ColumnIndex, c.MaxDefinitionLevel
			l.ttagField = tf.(tagColumnFormat).TagFieldIndex()
		}
		if l.tneeds, err = lookup(tf, "target"); err != nil {
			return l, err
		}
		if l.ttag >= 0 {
			// The old tag is read for the template only: null is fine.
			l.tneedsNull = make([]bool, len(l.tneeds))
			l.tneedsNull[l.ttagField] = true
		}
	}
	return l, nil
}

// isEnc reports whether leaf column c is one of the encrypted columns.
func (l *recordLayout) isEnc(c int) bool {
	for _, e := range l.enc {
		if e == c {
			return true
		}
	}
	return false
}

// rowFields renders the values of columns cols of row for a format's
// templates, into dst. A null value is an error, unless nullOK (nil, or
// one flag per column) allows it: it is then "".
func rowFields(dst []string, row parquet.Row, cols []int, nullOK []bool, schema func(int) string) ([]string, error) {
	dst = dst[:0]
	for k, c := range cols {
		vi := findValue(row, c)
		if vi < 0 || row[vi].IsNull() {
			if k < len(nullOK) && nullOK[k] {
				dst = append(dst, "")
				continue
			}
			return dst, fmt.Errorf("column %q is null, and the format's aad or binding template reads it", schema(c))
		}
		s, err := recordID(row[vi])
		if err != nil {
			return dst, err
		}
		dst = append(dst, s)
	}
	return dst, nil
}

func layoutOf(schema *parquet.Schema, encrypted []string, dekCol, idCol string) (recordLayout, error) {
	var l recordLayout
	leaf := func(name string, wantBytes bool) (int, error) {
		c, ok := schema.Lookup(name)
		if !ok {
			return 0, fmt.Errorf("no column %q (columns are configured with columns.encrypted / dek_id / record_id)", name)
		}
		if c.MaxRepetitionLevel > 0 {
			return 0, fmt.Errorf("column %q is repeated; rekey handles flat columns only", name)
		}
		if wantBytes && c.Node.Type().Kind() != parquet.ByteArray {
			return 0, fmt.Errorf("column %q is %s, want BYTE_ARRAY (binary or string)", name, c.Node.Type())
		}
		return c.ColumnIndex, nil
	}
	var err error
	l.dek = -1
	if dekCol != "" {
		if l.dek, err = leaf(dekCol, true); err != nil {
			return l, err
		}
	}
	if l.id, err = leaf(idCol, false); err != nil {
		return l, err
	}
	if c, _ := schema.Lookup(idCol); !idKinds[c.Node.Type().Kind()] {
		return l, fmt.Errorf("record id column %q is %s; rekey takes INT32, INT64, BYTE_ARRAY or FIXED_LEN_BYTE_ARRAY ids (see docs/FORMAT.md)", idCol, c.Node.Type())
	}
	for _, name := range encrypted {
		i, err := leaf(name, true)
		if err != nil {
			return l, err
		}
		if i == l.dek || i == l.id {
			return l, fmt.Errorf("column %q cannot be both encrypted and the dek_id or record id column", name)
		}
		l.enc = append(l.enc, i)
		l.encName = append(l.encName, name)
	}
	return l, nil
}

var idKinds = map[parquet.Kind]bool{parquet.Int32: true, parquet.Int64: true, parquet.ByteArray: true, parquet.FixedLenByteArray: true}

// recordID renders a record id value canonically for the AAD and ledger:
// decimal for integers, the bytes for strings and binary.
func recordID(v parquet.Value) (string, error) {
	if v.IsNull() {
		return "", fmt.Errorf("record id is null")
	}
	switch v.Kind() {
	case parquet.ByteArray, parquet.FixedLenByteArray:
		return string(v.ByteArray()), nil
	case parquet.Int32:
		return strconv.FormatInt(int64(v.Int32()), 10), nil
	case parquet.Int64:
		return strconv.FormatInt(v.Int64(), 10), nil
	default:
		return "", fmt.Errorf("record id of unsupported type %s", v.Kind())
	}
}

// findValue returns the index in row of the value of leaf column col.
func findValue(row parquet.Row, col int) int {
	if col < 0 {
		return -1 // no such column (keys: cell has no key column)
	}
	if col < len(row) && row[col].Column() == col {
		return col
	}
	for i := range row {
		if row[i].Column() == col {
			return i
		}
	}
	return -1
}

// outputSchema is the source schema with the encrypted columns stored
// uncompressed and PLAIN-encoded: ciphertext neither compresses nor
// repeats, so both would only cost CPU. Every other column keeps the
// source's codec and encoding, and the field order is kept.
func outputSchema(src *parquet.Schema, encrypted []string) *parquet.Schema {
	return outputSchemaFor(src, encrypted, nil, "", "")
}

// outputSchemaFor is outputSchema for a target format: text formats store
// their cells in string columns, binary ones in binary columns; and a
// wrapped-key column keyCol becomes the dek_id column dekCol (rekey
// writes a dek_id there).
func outputSchemaFor(src *parquet.Schema, encrypted []string, tf format.Format, keyCol, dekCol string) *parquet.Schema {
	enc := map[string]bool{}
	for _, c := range encrypted {
		enc[c] = true
	}
	fields := src.Fields()
	out := make([]parquet.Field, len(fields))
	for i, f := range fields {
		switch {
		case enc[f.Name()] && f.Leaf():
			cf := ciphertextField{Field: f}
			if tf != nil {
				cf.typ = parquet.ByteArrayType
				if tf.Text() {
					cf.typ = parquet.String().Type()
				}
			}
			out[i] = cf
		case keyCol != "" && f.Name() == keyCol && f.Leaf():
			out[i] = renamedField{Field: f, name: dekCol, typ: parquet.String().Type()}
		default:
			out[i] = f
		}
	}
	return parquet.NewSchema(src.Name(), rootNode{Node: src, fields: out})
}

type ciphertextField struct {
	parquet.Field
	typ parquet.Type // nil: the source's
}

func (ciphertextField) Compression() compress.Codec { return &parquet.Uncompressed }
func (ciphertextField) Encoding() encoding.Encoding { return &parquet.Plain }
func (c ciphertextField) Type() parquet.Type {
	if c.typ != nil {
		return c.typ
	}
	return c.Field.Type()
}

// renamedField is a source column written under another name and type.
type renamedField struct {
	parquet.Field
	name string
	typ  parquet.Type
}

func (r renamedField) Name() string       { return r.name }
func (r renamedField) Type() parquet.Type { return r.typ }

type rootNode struct {
	parquet.Node
	fields []parquet.Field
}

func (r rootNode) Fields() []parquet.Field { return r.fields }

// newDEKIDs returns the dek_ids the rows name that known has no entry for
// yet (each once, in order of appearance), so DEKs are resolved once per
// file, not per record. Null and missing dek_ids are left to the row.
func newDEKIDs[T any](known map[string]T, rows []parquet.Row, dekCol int) []string {
	var missing []string
	seen := map[string]bool{}
	for _, row := range rows {
		dv := findValue(row, dekCol)
		if dv < 0 || row[dv].IsNull() {
			continue
		}
		id := row[dv].ByteArray()
		if _, ok := known[string(id)]; ok || seen[string(id)] {
			continue
		}
		seen[string(id)] = true
		missing = append(missing, string(id))
	}
	return missing
}

// isStringColumn reports whether a leaf is annotated as UTF-8 text.
func isStringColumn(n parquet.Node) bool {
	if lt := n.Type().LogicalType(); lt != nil {
		if _, ok := lt.Value.(*pqformat.StringType); ok {
			return true
		}
	}
	if ct := n.Type().ConvertedType(); ct != nil && *ct == deprecated.UTF8 {
		return true
	}
	return false
}
