package schemas

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"testing"
)

// dekIndexModel is what DEKIndex must answer, kept the plain way.
type dekIndexModel map[string]struct {
	file    int
	wrapped string
}

func (m dekIndexModel) add(file int, r *DEKRow) DEKIDStatus {
	prev, ok := m[r.DEKID]
	switch {
	case !ok:
		m[r.DEKID] = struct {
			file    int
			wrapped string
		}{file, string(r.Wrapped)}
		return DEKIDNew
	case prev.file == file && prev.wrapped == string(r.Wrapped):
		return DEKIDRepeat
	default:
		return DEKIDConflict
	}
}

// checkAgainstModel adds n random rows (repeats, conflicts by key and by
// file, long and empty dek_ids) to x and to the model and compares every
// answer.
func checkAgainstModel(t *testing.T, x *DEKIndex, n int, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	m := dekIndexModel{}
	var seen []DEKRow
	var files []int
	counts := map[DEKIDStatus]int{}
	for i := 0; i < n; i++ {
		var r DEKRow
		file := rng.IntN(4) - 1 // -1 too: any stable number
		switch k := rng.IntN(20); {
		case k == 0 && len(seen) > 0: // the same row again, maybe in another file
			j := rng.IntN(len(seen))
			r = seen[j]
			if rng.IntN(2) == 0 {
				file = files[j]
			}
		case k == 1 && len(seen) > 0: // the same dek_id, another key
			r = seen[rng.IntN(len(seen))]
			r.Wrapped = []byte(fmt.Sprintf("other-%d", i))
		default:
			id := fmt.Sprintf("dek-%d", i)
			switch rng.IntN(50) {
			case 0:
				id = strings.Repeat("x", 300+rng.IntN(3000)) + id // past MaxDEKIDBytes: dekunit indexes invalid rows too
			case 1:
				id = "" // also an invalid row
			}
			r = DEKRow{DEKID: id, Wrapped: []byte(fmt.Sprintf("wrapped-%d", rng.IntN(1<<30)))}
		}
		want := m.add(file, &r)
		got := x.Add(file, &r)
		if got != want {
			t.Fatalf("row %d: Add(file %d, %.40q) = %v, want %v", i, file, r.DEKID, got, want)
		}
		counts[got]++
		if got == DEKIDNew {
			seen, files = append(seen, r), append(files, file)
		}
	}
	if x.Len() != len(m) {
		t.Fatalf("Len %d, want %d", x.Len(), len(m))
	}
	if counts[DEKIDRepeat] == 0 || counts[DEKIDConflict] == 0 {
		t.Fatalf("the test made no repeats or no conflicts: %v", counts)
	}
}

func withSpillAt(t *testing.T, n int) {
	old := spillAt
	spillAt = n
	t.Cleanup(func() { spillAt = old })
}

// TestDEKIndexExact: the index answers as a map of the dek_ids would, in
// memory and spilled to its temporary file, with a real hash and with one
// that makes every dek_id collide with many others (a collision is never a
// conflict: the dek_ids are compared).
func TestDEKIndexExact(t *testing.T) {
	for _, c := range []struct {
		name    string
		spillAt int
		hash    func(string) uint64
	}{
		{"memory", 1 << 30, nil},
		{"spilled", 512, nil},
		{"collisions", 1 << 30, func(s string) uint64 { return uint64(len(s)%7) * 0x9e3779b97f4a7c15 }},
		{"collisions-spilled", 300, func(s string) uint64 { return uint64(len(s)%7) * 0x9e3779b97f4a7c15 }},
		// The same position, tag bits that differ: found by probing.
		{"same-position", 4096, func(s string) uint64 { return uint64(len(s)) << offBits }},
	} {
		t.Run(c.name, func(t *testing.T) {
			withSpillAt(t, c.spillAt)
			x := NewDEKIndex()
			x.hash = c.hash
			n := 20000
			if c.hash != nil {
				n = 1200 // every lookup probes a long run
			}
			checkAgainstModel(t, x, n, 7)
			if spilled := x.recs.spill != nil; spilled != (c.spillAt < 1<<30) {
				t.Errorf("spilled %v with spillAt %d", spilled, c.spillAt)
			}
			if err := x.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestDEKIndexNoTempDir: without a writable temporary folder the records
// stay in memory, with the same answers.
func TestDEKIndexNoTempDir(t *testing.T) {
	withSpillAt(t, 256)
	t.Setenv("TMPDIR", t.TempDir()+"/missing")
	x := NewDEKIndex()
	checkAgainstModel(t, x, 5000, 3)
	if x.recs.spill != nil || !x.recs.noSpill {
		t.Fatalf("spill %v, noSpill %v", x.recs.spill, x.recs.noSpill)
	}
}

// TestDEKIndexLeavesNothing: the temporary file is unlinked as soon as it
// is made, and its descriptor is closed by Close or, for an index dropped
// without Close, once it is collected.
func TestDEKIndexLeavesNothing(t *testing.T) {
	withSpillAt(t, 64)
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir)
	fds := func() int {
		e, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skip("no /proc/self/fd")
		}
		return len(e)
	}
	before := fds()
	add := func(x *DEKIndex) {
		for i := 0; i < 100; i++ {
			x.Add(0, &DEKRow{DEKID: fmt.Sprint("dek-", i), Wrapped: []byte("w")})
		}
	}
	x := NewDEKIndex()
	add(x)
	if e, _ := os.ReadDir(dir); len(e) != 0 {
		t.Fatalf("left in the temporary folder: %v", e)
	}
	if fds() != before+1 {
		t.Fatalf("%d descriptors open, want %d", fds(), before+1)
	}
	if err := x.Close(); err != nil || fds() != before {
		t.Fatalf("Close: %v; %d descriptors open, want %d", err, fds(), before)
	}
	add(NewDEKIndex())
	for i := 0; i < 50 && fds() != before; i++ {
		runtime.GC()
		runtime.Gosched()
	}
	if fds() != before {
		t.Fatalf("a dropped index keeps its file open: %d descriptors, want %d", fds(), before)
	}
}

// TestDEKIndexMemory: what a large index keeps in memory does not grow
// with the length of the dek_ids (they are in the temporary file).
func TestDEKIndexMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const n = 1 << 20
	prefix := strings.Repeat("p", 64)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	x := NewDEKIndex()
	w := make([]byte, 60)
	for i := 0; i < n; i++ {
		if x.Add(i/100000, &DEKRow{DEKID: fmt.Sprintf("%s-%08d", prefix, i), Wrapped: w}) != DEKIDNew {
			t.Fatal("not new")
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := float64(after.HeapAlloc-before.HeapAlloc) / n
	mapped := float64(len(x.mem.mapped)) / n
	t.Logf("%d DEKs of %d-byte dek_ids: %.1f bytes of heap and %.1f mapped a DEK", n, len(prefix)+9, heap, mapped)
	if heap+mapped > 24 || heap > 8 {
		t.Errorf("%.1f bytes of heap and %.1f mapped a DEK, want at most 8 and 24 in all", heap, mapped)
	}
	runtime.KeepAlive(x)
}

// BenchmarkDEKIndexAdd: new dek_ids, as a scan of a table adds them
// (formatting the dek_id is part of the time).
func BenchmarkDEKIndexAdd(b *testing.B) {
	x := NewDEKIndex()
	defer x.Close()
	w := make([]byte, 60)
	for i := 0; b.Loop(); i++ {
		x.Add(i>>17, &DEKRow{DEKID: fmt.Sprintf("dek-%07d", i), Wrapped: w})
	}
}
