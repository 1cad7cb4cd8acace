package schemas

import (
	"crypto/sha256"
	"fmt"
	"hash/maphash"
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
// It keeps a 20-byte summary per dek_id: a 64-bit hash of the dek_id (not
// the string), 8 bytes of SHA-256 of the wrapped key and the file, so a
// table of millions of DEKs can be indexed while it is streamed (about 30
// bytes a DEK with the map's own overhead; keyed by the dek_id strings it
// was ~150, 821 MiB of peak RSS for a 4M-DEK rewrap). Two dek_ids whose
// hashes collide (about 4e-7 for a table of 4M, with a seed of its own per
// index) are taken for one: the second is reported as a conflict, a false
// failure, never a false success (a repeat would also need their wrapped
// keys' hashes to collide).
type DEKIndex struct {
	seed maphash.Seed
	seen map[uint64]dekSeen
}

type dekSeen struct {
	h    [8]byte // first bytes of SHA-256 of the wrapped key
	file int32
}

// DEKIDStatus is what DEKIndex.Add found.
type DEKIDStatus int

const (
	DEKIDNew      DEKIDStatus = iota // first time this dek_id is met
	DEKIDRepeat                      // same file, same wrapped key
	DEKIDConflict                    // another wrapped key, or another file
)

// NewDEKIndex returns an empty index.
func NewDEKIndex() *DEKIndex { return &DEKIndex{seed: maphash.MakeSeed(), seen: map[uint64]dekSeen{}} }

// Add records row r of file (any stable number per file of the table) and
// says whether its dek_id is new, a repeat or a conflict. A conflict does
// not replace what the index holds: the first row met stays the reference.
func (x *DEKIndex) Add(file int, r *DEKRow) DEKIDStatus {
	h := sha256.Sum256(r.Wrapped)
	now := dekSeen{h: [8]byte(h[:8]), file: int32(file)}
	id := maphash.String(x.seed, r.DEKID)
	prev, ok := x.seen[id]
	switch {
	case !ok:
		x.seen[id] = now
		return DEKIDNew
	case prev == now:
		return DEKIDRepeat
	default:
		return DEKIDConflict
	}
}

// Len is the number of distinct dek_ids met.
func (x *DEKIndex) Len() int { return len(x.seen) }

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
