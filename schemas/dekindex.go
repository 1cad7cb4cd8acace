package schemas

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

// DEKIndex is the one place that decides what a dek_id met again in a DEK
// table means; plan, rewrap, mint and verify all ask it. A dek_id names one
// DEK. Met again in the same file with the same wrapped key, it is a
// repeat: harmless, skipped (nothing new is written for it). With another
// wrapped key, or in another file of the table, it is a conflict: which row
// is right cannot be decided here, and two files would each produce a
// target row for it; the table must be fixed. A table rekey wrote has
// neither (verify counts both as problems of the target).
//
// Exact, and small in memory, so that a table of millions of DEKs can be
// indexed while it is streamed (the preflight indexes the whole source
// table: keyed by the dek_id strings it was ~150 bytes a DEK, 821 MiB of
// peak RSS for a 4M-DEK rewrap; by a 64-bit hash in a map, 476 MiB).
//
//   - Each distinct dek_id is one record, appended in the order met: the
//     file, the dek_id itself and the first 16 bytes of SHA-256 of its
//     wrapped key. The records are the truth every answer is checked
//     against. Past spillAt bytes they go to a temporary file (unlinked as
//     soon as it is made: nothing is left behind, even by a crash), so what
//     stays in memory does not grow with the length of the dek_ids.
//   - Finding a dek_id's record is an open-addressing table of one 8-byte
//     slot per record (at most 3/4 full): 24 bits of a 64-bit hash of the
//     dek_id (seeded per index) and the record's offset. About 11-21 bytes
//     of memory a DEK, mapped outside the Go heap (slotTable): a table in
//     the heap would let the garbage collector grow the heap by as much
//     again before it collects (GOGC=100), and keep the old table's memory
//     when it doubles; this one is unmapped before the next is made, and
//     when the index is closed or collected.
//
// A slot whose hash bits match is only a candidate: its record is read and
// the dek_ids compared, so two dek_ids whose hashes collide stay two DEKs
// (no false conflict), and a repeat needs the same dek_id, file and wrapped
// key (16 bytes of SHA-256: no false repeat either). Hash matches are rare
// (a real repeat or conflict, or about one 24-bit tag match in 16M
// probes), so records are read back from the file almost never.
//
// Not safe for concurrent use. Close releases the temporary file at once;
// an index dropped without Close releases it when it is collected.
type DEKIndex struct {
	seed  maphash.Seed
	slots []uint64 // 0: empty; else tag<<offBits | (record offset + 1); in mem
	mem   *slotTable
	n     int
	recs  dekRecords

	hash func(string) uint64 // tests force collisions; nil: maphash
}

// Slot layout: the record offset (+1, so that 0 is an empty slot) in the
// low offBits bits, the top tagBits bits of the dek_id's hash above it.
// The slot's position is the hash's low bits, so tag and position are
// different bits of it until the table has 2^40 slots.
const (
	offBits  = 40
	tagBits  = 64 - offBits
	offMask  = 1<<offBits - 1
	minSlots = 64
)

// spillAt is how many bytes of records are kept in memory before they go
// to the temporary file (a per-file index of ~100,000 DEKs stays in memory).
var spillAt = 4 << 20

// wrappedSum is how much of SHA-256 of the wrapped key a record keeps.
const wrappedSum = 16

// DEKIDStatus is what DEKIndex.Add found.
type DEKIDStatus int

const (
	DEKIDNew      DEKIDStatus = iota // first time this dek_id is met
	DEKIDRepeat                      // same file, same wrapped key
	DEKIDConflict                    // another wrapped key, or another file
)

// NewDEKIndex returns an empty index.
func NewDEKIndex() *DEKIndex { return &DEKIndex{seed: maphash.MakeSeed()} }

func (x *DEKIndex) hashOf(id string) uint64 {
	if x.hash != nil {
		return x.hash(id)
	}
	return maphash.String(x.seed, id)
}

func (x *DEKIndex) hashOfBytes(id []byte) uint64 {
	if x.hash != nil {
		return x.hash(string(id))
	}
	return maphash.Bytes(x.seed, id) // = maphash.String of the same bytes
}

// Add records row r of file (any stable number per file of the table) and
// says whether its dek_id is new, a repeat or a conflict. A conflict does
// not replace what the index holds: the first row met stays the reference.
func (x *DEKIndex) Add(file int, r *DEKRow) DEKIDStatus {
	if (x.n+1)*4 > len(x.slots)*3 {
		x.grow()
	}
	h := x.hashOf(r.DEKID)
	tag := h >> offBits
	mask := uint64(len(x.slots) - 1)
	var sum [wrappedSum]byte
	summed := false
	for i := h & mask; ; i = (i + 1) & mask {
		s := x.slots[i]
		if s == 0 {
			if !summed {
				sum = wrappedSumOf(r.Wrapped)
			}
			off := x.recs.add(file, r.DEKID, &sum)
			if off >= offMask {
				panic(fmt.Sprintf("DEK index: more than %d bytes of dek_ids", int64(offMask)))
			}
			x.slots[i] = tag<<offBits | (off + 1)
			x.n++
			return DEKIDNew
		}
		if s>>offBits != tag {
			continue
		}
		rec := x.recs.at(s&offMask - 1)
		if rec.id != r.DEKID {
			continue // a hash collision: another dek_id
		}
		if !summed {
			sum, summed = wrappedSumOf(r.Wrapped), true
		}
		if rec.file == file && rec.sum == sum {
			return DEKIDRepeat
		}
		return DEKIDConflict
	}
}

func wrappedSumOf(wrapped []byte) [wrappedSum]byte {
	h := sha256.Sum256(wrapped)
	return [wrappedSum]byte(h[:wrappedSum])
}

// grow doubles the table, placing every record again from its dek_id: the
// slots keep too few bits of the hash to be moved on their own. The
// records are read in order, sequentially, once per doubling.
func (x *DEKIndex) grow() {
	n := max(len(x.slots)*2, minSlots)
	if x.mem == nil {
		x.mem = &slotTable{}
		runtime.AddCleanup(x, (*slotTable).free, x.mem)
	}
	x.slots = nil
	slots := x.mem.alloc(n) // frees the old table first: it is not needed
	mask := uint64(n - 1)
	x.recs.each(func(off uint64, id []byte) {
		h := x.hashOfBytes(id)
		i := h & mask
		for slots[i] != 0 {
			i = (i + 1) & mask
		}
		slots[i] = h>>offBits<<offBits | (off + 1)
	})
	x.slots = slots
}

// Len is the number of distinct dek_ids met.
func (x *DEKIndex) Len() int { return x.n }

// Close releases the index's temporary file, if it made one, and its
// memory; the index must not be used after.
func (x *DEKIndex) Close() error {
	x.slots, x.n = nil, 0
	if x.mem != nil {
		x.mem.free()
	}
	return x.recs.close()
}

// slotTable holds a DEKIndex's slots: an anonymous private mapping where
// the OS gives one (zeroed pages, touched only as they are used), else a
// Go slice. Held apart from the index so that a cleanup can unmap it when
// an index is dropped without Close (the preflight drops its index).
type slotTable struct {
	mapped []byte
}

// alloc frees the current table and returns a zeroed one of n slots.
func (t *slotTable) alloc(n int) []uint64 {
	t.free()
	b, err := syscall.Mmap(-1, 0, n*8, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]uint64, n)
	}
	t.mapped = b
	return unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), n)
}

func (t *slotTable) free() {
	if t.mapped != nil {
		_ = syscall.Munmap(t.mapped)
		t.mapped = nil
	}
}

// Err explains a repeat or a conflict of dekID for a ledger row or a
// report; nil for DEKIDNew.
func (s DEKIDStatus) Err(dekID string) error {
	switch s {
	case DEKIDRepeat:
		return fmt.Errorf("dek_id %q: duplicate row (same wrapped key, same file) of a dek_id already met", dekID)
	case DEKIDConflict:
		return fmt.Errorf("dek_id %q appears more than once with different wrapped keys or in different files of the DEK table: fix the table (which one is right cannot be decided here)", dekID)
	}
	return nil
}

// dekRecords is the append-only list of a DEKIndex's records, each
// varint(file) | uvarint(len(dek_id)) | dek_id | sum, at a byte offset
// that never changes: [0, base) in the spill file, [base, ...) in mem.
type dekRecords struct {
	mem     []byte
	base    uint64
	spill   *spillFile
	noSpill bool // the spill file could not be made or written: all in memory
	buf     []byte
}

type dekRecord struct {
	file int
	id   string
	sum  [wrappedSum]byte
}

// spillFile is held apart from the index so that a cleanup can close it
// when an index is dropped without Close.
type spillFile struct {
	f       *os.File
	name    string // set when it could not be unlinked at once
	cleanup runtime.Cleanup
}

func (s *spillFile) close() error {
	err := s.f.Close()
	if s.name != "" {
		if rerr := os.Remove(s.name); err == nil {
			err = rerr
		}
	}
	return err
}

func (d *dekRecords) add(file int, id string, sum *[wrappedSum]byte) uint64 {
	off := d.base + uint64(len(d.mem))
	d.mem = binary.AppendVarint(d.mem, int64(file))
	d.mem = binary.AppendUvarint(d.mem, uint64(len(id)))
	d.mem = append(d.mem, id...)
	d.mem = append(d.mem, sum[:]...)
	if len(d.mem) >= spillAt && !d.noSpill {
		d.flush()
	}
	return off
}

// flush moves the records in memory to the spill file, making it on first
// use. A file that cannot be made or written keeps every record in memory
// from then on: more memory, the same answers.
func (d *dekRecords) flush() {
	if d.spill == nil {
		s, err := newSpill()
		if err != nil {
			d.noSpill = true
			return
		}
		d.spill = s
		s.cleanup = runtime.AddCleanup(d, func(s *spillFile) { _ = s.close() }, s)
	}
	if _, err := d.spill.f.WriteAt(d.mem, int64(d.base)); err != nil {
		d.noSpill = true // what was written before stays valid; mem is kept
		return
	}
	d.base += uint64(len(d.mem))
	d.mem = d.mem[:0]
}

func newSpill() (*spillFile, error) {
	f, err := os.CreateTemp("", "rekey-dekindex-*")
	if err != nil {
		return nil, err
	}
	s := &spillFile{f: f}
	if os.Remove(f.Name()) != nil {
		s.name = f.Name() // removed by close
	}
	return s, nil
}

func (d *dekRecords) close() error {
	d.mem, d.buf = nil, nil
	d.base = 0
	if d.spill == nil {
		return nil
	}
	s := d.spill
	d.spill = nil
	s.cleanup.Stop()
	return s.close()
}

// at reads the record at off.
func (d *dekRecords) at(off uint64) dekRecord {
	var b []byte
	if off >= d.base {
		b = d.mem[off-d.base:]
	} else {
		b = d.read(off)
	}
	rec, n, err := parseRecord(b)
	if err != nil || n == 0 {
		panic(fmt.Sprintf("DEK index: record at %d: %v", off, err))
	}
	return rec
}

// read returns the spilled bytes from off on: at least one whole record.
func (d *dekRecords) read(off uint64) []byte {
	want := min(uint64(2*binary.MaxVarintLen64+MaxDEKIDBytes+wrappedSum), d.base-off)
	for {
		if uint64(cap(d.buf)) < want {
			d.buf = make([]byte, want)
		}
		b := d.buf[:want]
		if _, err := d.spill.f.ReadAt(b, int64(off)); err != nil && !errors.Is(err, io.EOF) {
			panic(fmt.Sprintf("DEK index: read its temporary file: %v", err))
		}
		if _, n, err := parseRecord(b); err == nil && n > 0 {
			return b
		}
		if want == d.base-off {
			panic(fmt.Sprintf("DEK index: record at %d is cut short in its temporary file", off))
		}
		want = min(want*2, d.base-off) // a dek_id longer than MaxDEKIDBytes
	}
}

var errShort = errors.New("short record")

// parseRecord reads the record at the start of b; n is its length.
func parseRecord(b []byte) (rec dekRecord, n int, err error) {
	file, a := binary.Varint(b)
	if a <= 0 {
		return rec, 0, errShort
	}
	l, c := binary.Uvarint(b[a:])
	if c <= 0 || uint64(len(b)-a-c) < l+wrappedSum {
		return rec, 0, errShort
	}
	p := a + c
	rec.file = int(file)
	rec.id = string(b[p : p+int(l)])
	copy(rec.sum[:], b[p+int(l):])
	return rec, p + int(l) + wrappedSum, nil
}

// each calls fn with every record's offset and dek_id, in order (id is
// only valid during the call).
func (d *dekRecords) each(fn func(off uint64, id []byte)) {
	var id []byte
	walk := func(r io.ByteReader, rd io.Reader, start, end uint64) {
		off := start
		for off < end {
			file, err := binary.ReadVarint(r)
			if err != nil {
				panic(fmt.Sprintf("DEK index: read its records: %v", err))
			}
			l, err := binary.ReadUvarint(r)
			if err != nil {
				panic(fmt.Sprintf("DEK index: read its records: %v", err))
			}
			if uint64(cap(id)) < l+wrappedSum {
				id = make([]byte, l+wrappedSum)
			}
			if _, err := io.ReadFull(rd, id[:l+wrappedSum]); err != nil {
				panic(fmt.Sprintf("DEK index: read its records: %v", err))
			}
			fn(off, id[:l])
			off += uint64(varintLen(file)+uvarintLen(l)) + l + wrappedSum
		}
	}
	if d.base > 0 {
		br := bufio.NewReaderSize(io.NewSectionReader(d.spill.f, 0, int64(d.base)), 256<<10)
		walk(br, br, 0, d.base)
	}
	mr := bytes.NewReader(d.mem)
	walk(mr, mr, d.base, d.base+uint64(len(d.mem)))
}

func varintLen(v int64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutVarint(b[:], v)
}

func uvarintLen(v uint64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], v)
}
