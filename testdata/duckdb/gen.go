//go:build ignore

// Command gen writes records.parquet: a small rekey record file whose schema
// has the shape DuckDB gives its Parquet files, which parquet-go would not
// write by itself. DuckDB annotates columns with converted types only (no
// logicalType), sets type_length only on FIXED_LEN_BYTE_ARRAY columns, writes
// every column OPTIONAL, names the root "duckdb_schema", and writes field ids
// when asked to. DuckDB cannot be installed here, so the file is written with
// parquet-go and its footer's schema elements are then rewritten to that
// shape (the data pages do not depend on them).
//
// The payload column holds rekey cells (docs/FORMAT.md) sealed under fixed
// DEKs: DEK(id) = SHA-256("rekey testdata/duckdb DEK " + id). A test wraps
// these DEKs with its own source KEK to build the DEK table. Payload
// plaintexts are Plaintext(id) below; nonces come from a fixed ChaCha8
// stream, so the file is the same on every run.
//
//	go run ./testdata/duckdb/gen.go
package main

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"log"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"runtime"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/snappy"
	"github.com/parquet-go/parquet-go/deprecated"
	"github.com/parquet-go/parquet-go/encoding/thrift"
	"github.com/parquet-go/parquet-go/format"

	"rekey/schemas"
)

const (
	records = 40
	perRG   = 16 // rows per row group: three row groups
	numDEKs = 3
)

// DEKID is the dek_id of record id.
func DEKID(id int64) string { return fmt.Sprintf("duck-%d", id%numDEKs) }

// DEK is the fixed test key of a dek_id.
func DEK(dekID string) []byte {
	h := sha256.Sum256([]byte("rekey testdata/duckdb DEK " + dekID))
	return h[:]
}

// Plaintext is the payload of record id.
func Plaintext(id int64) []byte {
	return []byte(fmt.Sprintf("record %d of the DuckDB-shaped fixture", id))
}

// column is one column: how parquet-go writes it, and the annotations
// DuckDB gives it.
type column struct {
	name      string
	node      parquet.Node
	converted *deprecated.ConvertedType
	scale     int32 // DECIMAL only
	precision int32
	fieldID   int
}

func ct(c deprecated.ConvertedType) *deprecated.ConvertedType { return &c }

var columns = []column{
	{name: "id", node: parquet.Leaf(parquet.Int64Type), fieldID: 1},
	{name: "dek_id", node: parquet.String(), converted: ct(deprecated.UTF8), fieldID: 2},
	{name: "payload", node: parquet.Leaf(parquet.ByteArrayType), fieldID: 3},
	{name: "name", node: parquet.String(), converted: ct(deprecated.UTF8), fieldID: 4},
	{name: "qty", node: parquet.Int(32), converted: ct(deprecated.Int32)},
	{name: "tiny", node: parquet.Int(8), converted: ct(deprecated.Int8)},
	{name: "u32", node: parquet.Uint(32), converted: ct(deprecated.Uint32)},
	{name: "day", node: parquet.Date(), converted: ct(deprecated.Date)},
	{name: "ts_ms", node: parquet.Timestamp(parquet.Millisecond), converted: ct(deprecated.TimestampMillis)},
	{name: "ts_us", node: parquet.Timestamp(parquet.Microsecond), converted: ct(deprecated.TimestampMicros)},
	{name: "price", node: parquet.Decimal(2, 18, parquet.Int64Type), converted: ct(deprecated.Decimal), scale: 2, precision: 18},
	{name: "rate", node: parquet.Decimal(3, 9, parquet.Int32Type), converted: ct(deprecated.Decimal), scale: 3, precision: 9},
	{name: "big", node: parquet.Decimal(4, 38, parquet.FixedLenByteArrayType(16)), converted: ct(deprecated.Decimal), scale: 4, precision: 38},
	{name: "flag", node: parquet.Leaf(parquet.BooleanType)},
	{name: "score", node: parquet.Leaf(parquet.DoubleType)},
	{name: "ratio", node: parquet.Leaf(parquet.FloatType)},
}

func main() {
	_, self, _, _ := runtime.Caller(0)
	out := filepath.Join(filepath.Dir(self), "records.parquet")
	b, err := generate()
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(out, b, 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("wrote %s (%d bytes)\n", out, len(b))
}

func generate() ([]byte, error) {
	group := parquet.Group{}
	for _, c := range columns {
		n := parquet.Optional(c.node)
		if c.fieldID > 0 {
			n = parquet.FieldID(n, c.fieldID)
		}
		group[c.name] = n
	}
	schema := parquet.NewSchema("duckdb_schema", group)
	col := map[string]int{}
	for _, c := range columns {
		leaf, _ := schema.Lookup(c.name)
		col[c.name] = leaf.ColumnIndex
	}

	nonces := mrand.NewChaCha8([32]byte{'d', 'u', 'c', 'k'})
	var buf bytes.Buffer
	w := parquet.NewWriter(&buf, schema, parquet.MaxRowsPerRowGroup(perRG), parquet.Compression(&snappy.Codec{}),
		parquet.CreatedBy("rekey testdata/duckdb/gen.go", "1", "DuckDB schema shape"))
	for id := int64(1); id <= records; id++ {
		dekID := DEKID(id)
		block, err := aes.NewCipher(DEK(dekID))
		if err != nil {
			return nil, err
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		aad, err := schemas.CellAAD(nil, "payload", fmt.Sprint(id), dekID)
		if err != nil {
			return nil, err
		}
		cell, err := schemas.SealCell(nil, aead, nonces, Plaintext(id), aad)
		if err != nil {
			return nil, err
		}
		big := make([]byte, 16)
		binary.BigEndian.PutUint64(big[8:], uint64(id)*1_000_000_007)
		vals := map[string]parquet.Value{
			"id":      parquet.Int64Value(id),
			"dek_id":  parquet.ByteArrayValue([]byte(dekID)),
			"payload": parquet.ByteArrayValue(cell),
			"name":    parquet.ByteArrayValue([]byte(fmt.Sprintf("name-%02d", id))),
			"qty":     parquet.Int32Value(int32(id * 3)),
			"tiny":    parquet.Int32Value(int32(id%100 - 50)),
			"u32":     parquet.Int32Value(int32(4_000_000_000 - uint32(id))),
			"day":     parquet.Int32Value(int32(19000 + id)),
			"ts_ms":   parquet.Int64Value(1_700_000_000_000 + id*1000),
			"ts_us":   parquet.Int64Value(1_700_000_000_000_000 + id),
			"price":   parquet.Int64Value(id * 12345),
			"rate":    parquet.Int32Value(int32(id * 7)),
			"big":     parquet.FixedLenByteArrayValue(big),
			"flag":    parquet.BooleanValue(id%2 == 0),
			"score":   parquet.DoubleValue(float64(id) / 3),
			"ratio":   parquet.FloatValue(float32(id) / 7),
		}
		if id%7 == 0 {
			delete(vals, "name") // a few nulls, as real data has
			delete(vals, "score")
		}
		row := make(parquet.Row, len(columns))
		for _, c := range columns {
			i := col[c.name]
			if v, ok := vals[c.name]; ok {
				row[i] = v.Level(0, 1, i)
			} else {
				row[i] = parquet.NullValue().Level(0, 0, i)
			}
		}
		if _, err := w.WriteRows([]parquet.Row{row}); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	b, err := duckdbShape(buf.Bytes())
	if err != nil {
		return nil, err
	}
	// The result must still read, with every row.
	f, err := parquet.OpenFile(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return nil, fmt.Errorf("the rewritten file does not open: %w", err)
	}
	if f.NumRows() != records {
		return nil, fmt.Errorf("the rewritten file has %d rows, want %d", f.NumRows(), records)
	}
	return b, nil
}

// duckdbShape rewrites the footer's schema elements of a Parquet file to
// the shape DuckDB writes.
func duckdbShape(file []byte) ([]byte, error) {
	n := int(binary.LittleEndian.Uint32(file[len(file)-8:]))
	start := len(file) - 8 - n
	var proto thrift.CompactProtocol
	var md format.FileMetaData
	if err := thrift.Unmarshal(&proto, file[start:len(file)-8], &md); err != nil {
		return nil, err
	}
	byName := map[string]column{}
	for _, c := range columns {
		byName[c.name] = c
	}
	for i := range md.Schema {
		e := &md.Schema[i]
		if i == 0 {
			e.RepetitionType = format.SchemaElement{}.RepetitionType
			continue
		}
		c, ok := byName[e.Name]
		if !ok {
			return nil, fmt.Errorf("unexpected schema element %q", e.Name)
		}
		e.LogicalType = format.LogicalType{}
		e.ConvertedType = format.SchemaElement{}.ConvertedType
		e.Scale, e.Precision = format.SchemaElement{}.Scale, format.SchemaElement{}.Precision
		if c.converted != nil {
			e.ConvertedType.Set(*c.converted)
		}
		if c.converted != nil && *c.converted == deprecated.Decimal {
			e.Scale.Set(c.scale)
			e.Precision.Set(c.precision)
		}
		if e.Type.V != format.FixedLenByteArray {
			e.TypeLength = format.SchemaElement{}.TypeLength
		}
		e.FieldID = int32(c.fieldID)
	}
	footer, err := thrift.Marshal(&proto, &md)
	if err != nil {
		return nil, err
	}
	out := append(file[:start:start], footer...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(footer)))
	return append(out, "PAR1"...), nil
}
