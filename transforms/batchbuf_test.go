package transforms

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
)

type batchTestRow struct {
	ID      int64  `parquet:"id"`
	DEKID   string `parquet:"dek_id"`
	Tenant  string `parquet:"tenant"`
	Payload []byte `parquet:"payload"`
	Note    []byte `parquet:"note,optional"`
}

// TestRecycledBatchesReachTheWriterIntact runs the re-encrypt loop's memory
// cycle as reencryptFile does (batches from a pool of batchesInUse, values
// detached into the batch's arena, new cells carved from its worker arenas,
// the rows handed to the batch writer) with a reader that overwrites
// everything in a batch it gets back. A batch handed out again while the
// writer still held it would be written with a later batch's values: the
// file read back would not be the rows written.
func TestRecycledBatchesReachTheWriterIntact(t *testing.T) {
	const rowsPerBatch, batches, workers = 7, 60, 2
	schema := parquet.SchemaOf(batchTestRow{})
	var buf bytes.Buffer
	pw := parquet.NewWriter(&buf, schema)
	pool := newBatchPool(rowsPerBatch, workers)
	w := startBatchWriter(pw, nil, pool)
	l := recordLayout{enc: []int{col(t, schema, "payload")}, dek: col(t, schema, "dek_id")}

	// The reader's pages: one buffer reused for every batch, as parquet-go
	// reuses its pages.
	page := make([]byte, 0, 4096)
	var want []batchTestRow
	for k := 0; k < batches; k++ {
		b := pool.get()
		if b.bytes.cur != 0 || len(b.keep) != 0 {
			t.Fatalf("batch %d: the pool handed out a batch that was not emptied", k)
		}
		// Scribble over what the batch held, as a reader and the crypto
		// pool reusing it would.
		for _, c := range b.bytes.chunks {
			clear(c[:cap(c)])
		}
		page = page[:0]
		for i := 0; i < rowsPerBatch; i++ {
			id := int64(k*rowsPerBatch + i)
			r := batchTestRow{ID: id, DEKID: "dek-" + strconv.Itoa(int(id%3)), Tenant: fmt.Sprintf("tenant-%d-%d", k, i),
				Payload: []byte(fmt.Sprintf("cipher-%d", id)), Note: []byte(fmt.Sprintf("note %d", id))}
			want = append(want, r)
			// Values aliasing the page, like the reader's.
			page = append(page, r.Tenant...)
			tenant := page[len(page)-len(r.Tenant):]
			page = append(page, r.Note...)
			note := page[len(page)-len(r.Note):]
			row := b.rows[i][:0]
			row = append(row,
				parquet.Int64Value(id).Level(0, 0, 0),
				parquet.ByteArrayValue([]byte("placeholder")).Level(0, 0, 1),
				parquet.ByteArrayValue(tenant).Level(0, 0, 2),
				parquet.ByteArrayValue([]byte("old cell")).Level(0, 0, 3),
				parquet.ByteArrayValue(note).Level(0, 1, 4))
			// What reencryptRow does: new cells from the worker's arena.
			cell := append(b.cells[i%workers].alloc(len(r.Payload)), r.Payload...)
			row[3] = parquet.ByteArrayValue(cell).Level(0, 0, 3)
			row[1] = parquet.ByteArrayValue([]byte(r.DEKID)).Level(0, 0, 1)
			b.rows[i] = row
			b.detachRow(row, &l)
			b.keep = append(b.keep, row)
		}
		clear(page[:cap(page)]) // the reader moves on to its next page
		if err := w.write(b, k%10 == 9); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.stop(); err != nil {
		t.Fatal(err)
	}
	if err := pw.Close(); err != nil {
		t.Fatal(err)
	}
	r := parquet.NewGenericReader[batchTestRow](bytes.NewReader(buf.Bytes()))
	got := make([]batchTestRow, len(want)+1)
	n, err := r.Read(got)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if n != len(want) {
		t.Fatalf("read %d rows back, wrote %d", n, len(want))
	}
	for i := range want {
		g, x := got[i], want[i]
		if g.ID != x.ID || g.DEKID != x.DEKID || g.Tenant != x.Tenant || !bytes.Equal(g.Payload, x.Payload) || !bytes.Equal(g.Note, x.Note) {
			t.Fatalf("row %d: wrote %+v, read back %+v", i, x, g)
		}
	}
	if pool.made > batchesInUse {
		t.Fatalf("%d batches made, the pool allows %d", pool.made, batchesInUse)
	}
}

func col(t *testing.T, s *parquet.Schema, name string) int {
	c, ok := s.Lookup(name)
	if !ok {
		t.Fatalf("no column %q", name)
	}
	return c.ColumnIndex
}

// TestDetachRowCopiesOnlyReaderValues: detachRow copies what aliases the
// reader (and keeps the value's kind and levels), and leaves the new cells
// and dek_id, and values without bytes, as they are.
func TestDetachRowCopiesOnlyReaderValues(t *testing.T) {
	page := []byte("tenant-a" + "fixed-16-bytes!!")
	cell := []byte("new cell")
	dek := []byte("dek-1")
	row := parquet.Row{
		parquet.Int64Value(7).Level(0, 0, 0),
		parquet.ByteArrayValue(dek).Level(0, 0, 1),
		parquet.ByteArrayValue(page[:8]).Level(0, 0, 2),
		parquet.ByteArrayValue(cell).Level(0, 0, 3),
		parquet.FixedLenByteArrayValue(page[8:]).Level(0, 1, 4),
		parquet.NullValue().Level(0, 0, 5),
	}
	b := &recordBatch{}
	b.detachRow(row, &recordLayout{enc: []int{3}, dek: 1})
	clear(page)
	if got := string(row[2].ByteArray()); got != "tenant-a" {
		t.Errorf("byte array column: %q after the reader's page changed", got)
	}
	if got := string(row[4].ByteArray()); got != "fixed-16-bytes!!" || row[4].Kind() != parquet.FixedLenByteArray || row[4].DefinitionLevel() != 1 || row[4].Column() != 4 {
		t.Errorf("fixed-length column: %q kind %v def %d col %d", got, row[4].Kind(), row[4].DefinitionLevel(), row[4].Column())
	}
	if &row[3].ByteArray()[0] != &cell[0] || &row[1].ByteArray()[0] != &dek[0] {
		t.Error("the new cell or dek_id was copied: they are the batch's already")
	}
	if row[0].Int64() != 7 || !row[5].IsNull() || row[5].Column() != 5 {
		t.Errorf("values without bytes changed: %v %v", row[0], row[5])
	}
}

// TestArena: slices never overlap until reset, a cell larger than a chunk
// gets its own, and reset reuses the chunks instead of allocating.
func TestArena(t *testing.T) {
	var a arena
	var got [][]byte
	sizes := []int{100, arenaChunk - 50, 200, 3 * arenaChunk, 10}
	for i, n := range sizes {
		s := a.alloc(n)
		if len(s) != 0 || cap(s) != n {
			t.Fatalf("alloc(%d): len %d cap %d", n, len(s), cap(s))
		}
		s = append(s, bytes.Repeat([]byte{byte(i + 1)}, n)...)
		got = append(got, s)
	}
	for i, s := range got {
		if !bytes.Equal(s, bytes.Repeat([]byte{byte(i + 1)}, sizes[i])) {
			t.Fatalf("slice %d was overwritten by a later alloc", i)
		}
	}
	chunks := len(a.chunks)
	if allocs := testing.AllocsPerRun(5, func() {
		a.reset()
		for _, n := range sizes {
			a.alloc(n)
		}
	}); allocs != 0 {
		t.Fatalf("%v allocations a batch after reset", allocs)
	}
	if len(a.chunks) != chunks {
		t.Fatalf("%d chunks after resets, %d before", len(a.chunks), chunks)
	}
}

// TestStrArena: strings stay intact however many follow (the arena never
// writes over what it handed out).
func TestStrArena(t *testing.T) {
	var s strArena
	var got []string
	for i := 0; i < 3*strChunk/8; i++ {
		got = append(got, s.copyString([]byte(strconv.Itoa(i))))
	}
	sum := s.hexString("p:", []byte{0xde, 0xad})
	for i, g := range got {
		if g != strconv.Itoa(i) {
			t.Fatalf("string %d is %q", i, g)
		}
	}
	if sum != "p:dead" {
		t.Fatalf("hexString: %q", sum)
	}
	for _, v := range []parquet.Value{parquet.Int32Value(-5), parquet.Int64Value(1 << 40), parquet.ByteArrayValue([]byte("r-1"))} {
		a, err1 := s.recordID(v)
		b, err2 := recordID(v)
		if a != b || err1 != nil || err2 != nil {
			t.Fatalf("recordID(%v): arena %q %v, plain %q %v", v, a, err1, b, err2)
		}
	}
	if _, err := s.recordID(parquet.NullValue()); err == nil {
		t.Fatal("a null record id gave no error")
	}
}

// panicWriter panics on every write, as a bug under the Parquet writer
// would.
type panicWriter struct{}

func (panicWriter) Write([]byte) (int, error) { panic("bug under the writer") }

// TestBatchWriterPanicIsTheFileError: a panic while the writer goroutine
// writes a batch becomes the error stop returns, instead of ending the
// process.
func TestBatchWriterPanicIsTheFileError(t *testing.T) {
	schema := parquet.SchemaOf(batchTestRow{})
	pw := parquet.NewWriter(panicWriter{}, schema)
	pool := newBatchPool(1, 1)
	w := startBatchWriter(pw, nil, pool)
	b := pool.get()
	b.keep = append(b.keep, schema.Deconstruct(nil, batchTestRow{ID: 1, DEKID: "d", Tenant: "t", Payload: make([]byte, 1<<20)}))
	if err := w.write(b, true); err != nil {
		t.Fatal(err)
	}
	err := w.stop()
	if err == nil || !strings.Contains(err.Error(), "panic") {
		t.Fatalf("stop: %v, want the writer's panic as the error", err)
	}
}

// TestDoUnitPanicFailsTheFile: a panic while a file is migrated (a corrupt
// file can make the Parquet reader panic) is that file's error, naming it,
// and does not stop the run.
func TestDoUnitPanicFailsTheFile(t *testing.T) {
	_, err := doUnit(func(string, string, string) (UnitResult, error) { panic("index out of range") }, "data/part-7.parquet", "out/part-7.parquet", "ledger/part")
	if err == nil || !strings.Contains(err.Error(), "data/part-7.parquet") || !strings.Contains(err.Error(), "index out of range") {
		t.Fatalf("doUnit: %v, want the panic naming the file", err)
	}
	if stops(err) {
		t.Fatalf("a panic of one file stops the run: %v", err)
	}
}
