package transforms

import (
	"encoding/hex"
	"strconv"
	"unsafe"

	"github.com/parquet-go/parquet-go"

	"rekey/schemas"
)

// recordBatch is the memory of one batch of records, recycled from batch
// to batch instead of allocated anew (allocation and the zeroing of large
// blocks were 11-19% of a re-encrypt's CPU). The reader reads into rows,
// the crypto pool seals new cells into cells (one arena per worker),
// detachRow copies into bytes what still points into the reader's pages,
// and the writer encodes keep and hands the batch back to its pool.
// parquet-go's writer copies every value it is given into its own column
// buffers (plain pages, dictionaries, statistics), so once WriteRows has
// returned nothing refers to the batch and its memory can be reused.
type recordBatch struct {
	rows []parquet.Row // what the reader read (cap: the batch size)
	keep []parquet.Row // the rows to write (the migrated ones)
	// ledger is the batch's ledger rows (one per row read), written by the
	// writer goroutine after keep.
	ledger []schemas.LedgerRow
	bytes  arena   // copies of values that alias the reader's pages
	cells  []arena // new ciphertexts, one arena per worker
}

// batchPool hands out at most size batches: one being read and
// re-encrypted, one queued for the writer and one being written is what
// batchWriter allows, so with size 3 get never waits longer than the
// writer's queue would have made it wait. Only the reading goroutine calls
// get; put is called by the writer.
type batchPool struct {
	free    chan *recordBatch
	made    int
	rows    int // rows per batch
	workers int
}

const batchesInUse = 3

func newBatchPool(rows, workers int) *batchPool {
	return &batchPool{free: make(chan *recordBatch, batchesInUse), rows: rows, workers: workers}
}

// get returns a batch no one else holds, emptied.
func (p *batchPool) get() *recordBatch {
	var b *recordBatch
	select {
	case b = <-p.free:
	default:
		if p.made < cap(p.free) {
			p.made++
			return &recordBatch{rows: make([]parquet.Row, p.rows), cells: make([]arena, p.workers)}
		}
		b = <-p.free
	}
	b.keep = b.keep[:0]
	clear(b.ledger) // no strings of earlier batches kept alive
	b.ledger = b.ledger[:0]
	b.bytes.reset()
	for i := range b.cells {
		b.cells[i].reset()
	}
	return b
}

// put returns a batch once nothing will read it any more.
func (p *batchPool) put(b *recordBatch) { p.free <- b }

// drop lets go of the batches the pool holds, once no one will get one.
func (p *batchPool) drop() {
	for {
		select {
		case <-p.free:
		default:
			return
		}
	}
}

// detachRow makes row independent of the reader, in place: the byte
// arrays of every column but the re-encrypted ones and the dek_id (whose
// new values the crypto pool put in the batch's cell arenas) are copied
// into the batch's own arena, since the reader reuses its pages for the
// next batch.
func (b *recordBatch) detachRow(row parquet.Row, l *recordLayout) {
	for i, v := range row {
		switch v.Kind() {
		case parquet.ByteArray, parquet.FixedLenByteArray:
		default:
			continue // held in the value itself (or null)
		}
		if v.IsNull() {
			continue
		}
		c := v.Column()
		if c == l.dek || l.isEnc(c) {
			continue
		}
		src := v.ByteArray()
		dst := append(b.bytes.alloc(len(src)), src...)
		var nv parquet.Value
		if v.Kind() == parquet.ByteArray {
			nv = parquet.ByteArrayValue(dst)
		} else {
			nv = parquet.FixedLenByteArrayValue(dst)
		}
		row[i] = nv.Level(v.RepetitionLevel(), v.DefinitionLevel(), c)
	}
}

// arena hands out byte slices carved from large chunks, which reset makes
// reusable: one allocation per arenaChunk of cells the first time, none
// after. A slice handed out stays valid until reset.
type arena struct {
	chunks [][]byte
	cur    int // the chunk being carved
}

// arenaChunk is the smallest chunk an arena allocates.
const arenaChunk = 256 << 10

// alloc returns an empty slice with room for n bytes.
func (a *arena) alloc(n int) []byte {
	for a.cur < len(a.chunks) {
		c := a.chunks[a.cur]
		if cap(c)-len(c) >= n {
			start := len(c)
			a.chunks[a.cur] = c[:start+n]
			return c[start : start : start+n]
		}
		if len(c) == 0 && cap(c) < n {
			break // a cell larger than the chunk: replace it
		}
		a.cur++
	}
	c := make([]byte, n, max(n, arenaChunk))
	if a.cur < len(a.chunks) {
		a.chunks[a.cur] = c
	} else {
		a.chunks = append(a.chunks, c)
	}
	return c[:0:n]
}

// reset makes every chunk reusable; slices handed out before must no
// longer be read.
func (a *arena) reset() {
	for i := range a.chunks {
		a.chunks[i] = a.chunks[i][:0]
	}
	a.cur = 0
}

// strArena makes strings out of bytes with one allocation per few hundred
// strings instead of one each: the record ids and checksums of the ledger
// rows. Its chunks are append-only and never reused, so a string it
// returned is immutable, as a string must be, for as long as it lives.
type strArena struct{ buf []byte }

const strChunk = 16 << 10

// reserve returns n bytes of the arena to fill before asString.
func (s *strArena) reserve(n int) []byte {
	if cap(s.buf)-len(s.buf) < n {
		s.buf = make([]byte, 0, max(n, strChunk))
	}
	start := len(s.buf)
	s.buf = s.buf[:start+n]
	return s.buf[start : start+n : start+n]
}

// asString is b, filled, as a string; b must come from reserve.
func asString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// copyString returns b as a string.
func (s *strArena) copyString(b []byte) string {
	out := s.reserve(len(b))
	copy(out, b)
	return asString(out)
}

// hexString returns prefix followed by the hex of b.
func (s *strArena) hexString(prefix string, b []byte) string {
	out := s.reserve(len(prefix) + hex.EncodedLen(len(b)))
	n := copy(out, prefix)
	hex.Encode(out[n:], b)
	return asString(out)
}

// recordID is transforms.recordID, its string in the arena.
func (s *strArena) recordID(v parquet.Value) (string, error) {
	if v.IsNull() {
		return recordID(v)
	}
	switch v.Kind() {
	case parquet.ByteArray, parquet.FixedLenByteArray:
		return s.copyString(v.ByteArray()), nil
	case parquet.Int32:
		var tmp [20]byte
		return s.copyString(strconv.AppendInt(tmp[:0], int64(v.Int32()), 10)), nil
	case parquet.Int64:
		var tmp [20]byte
		return s.copyString(strconv.AppendInt(tmp[:0], v.Int64(), 10)), nil
	}
	return recordID(v)
}
