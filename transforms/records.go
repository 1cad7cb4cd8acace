package transforms

import (
	"fmt"
	"strconv"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress"
	"github.com/parquet-go/parquet-go/encoding"
)

// recordLayout locates rekey's columns in a record file's schema.
type recordLayout struct {
	enc     []int    // leaf column indexes of the encrypted columns
	encName []string // their names, for the AAD
	dek     int
	id      int
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
	if l.dek, err = leaf(dekCol, true); err != nil {
		return l, err
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
	enc := map[string]bool{}
	for _, c := range encrypted {
		enc[c] = true
	}
	fields := src.Fields()
	out := make([]parquet.Field, len(fields))
	for i, f := range fields {
		if enc[f.Name()] && f.Leaf() {
			out[i] = ciphertextField{f}
		} else {
			out[i] = f
		}
	}
	return parquet.NewSchema(src.Name(), rootNode{Node: src, fields: out})
}

type ciphertextField struct{ parquet.Field }

func (ciphertextField) Compression() compress.Codec { return &parquet.Uncompressed }
func (ciphertextField) Encoding() encoding.Encoding { return &parquet.Plain }

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
