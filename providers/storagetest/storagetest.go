// Package storagetest is the conformance suite every storage backend
// passes: the local filesystem, S3 and OSS run the same checks, so a new
// backend costs a few lines of test:
//
//	func TestConformance(t *testing.T) {
//		storagetest.Run(t, mybackend.New(...), "myscheme://bucket/prefix", storagetest.Config{})
//	}
//
// Limits: it checks behaviour one process can see (atomic visibility,
// overwrite, listing, ranged reads); crash atomicity and memory bounds are
// each backend's own tests.
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"

	"rekey/providers/storage"
)

// Config sizes the suite for a backend.
type Config struct {
	// Large is the size of the object written in small odd-sized writes
	// (default 3 MiB); make it several part sizes to cover multipart.
	Large int
	// Many is how many objects the listing test writes (default 40);
	// pagination is covered when the backend's page is smaller.
	Many int
}

// Run runs the suite under root, which must be empty or missing.
func Run(t *testing.T, b storage.Backend, root string, c Config) {
	if c.Large <= 0 {
		c.Large = 3 << 20
	}
	if c.Many <= 0 {
		c.Many = 40
	}
	ctx := context.Background()
	at := func(rel string) string { return storage.Join(root, rel) }

	t.Run("Missing", func(t *testing.T) {
		if _, err := b.Open(ctx, at("missing/none.parquet")); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Open of a missing object: got %v, want ErrNotFound", err)
		}
		if ok, err := b.Exists(ctx, at("missing/none.parquet")); ok || err != nil {
			t.Errorf("Exists of a missing object: got %v, %v; want false, nil", ok, err)
		}
		if got, err := b.List(ctx, at("missing")); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("List of a missing root: got %q, %v; want ErrNotFound", got, err)
		}
	})

	// _SUCCESS markers depend on this: a stale one is removed before a run
	// that may not succeed.
	t.Run("Remove", func(t *testing.T) {
		r, ok := b.(storage.Remover)
		if !ok {
			t.Fatalf("%T does not implement storage.Remover", b)
		}
		p := at("remove/_SUCCESS")
		w, err := b.Create(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		if err := r.Remove(ctx, p); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		if ok, err := b.Exists(ctx, p); ok || err != nil {
			t.Errorf("after Remove: Exists %v, %v", ok, err)
		}
		if err := r.Remove(ctx, p); err != nil {
			t.Errorf("Remove of a missing object: %v, want nil", err)
		}
	})

	// Leases depend on this: of several creators of one name, exactly one
	// wins, and the loser is told so (not overwritten, not an error of
	// another kind).
	t.Run("CreateExclusive", func(t *testing.T) {
		c, ok := b.(storage.ExclusiveCreator)
		if !ok {
			t.Fatalf("%T does not implement storage.ExclusiveCreator: rekey cannot take a lease on it", b)
		}
		p := at("lease/_rekey.lease.1.json")
		const n = 6
		errs := make(chan error, n)
		for i := 0; i < n; i++ {
			go func(i int) { errs <- c.CreateExclusive(ctx, p, []byte(fmt.Sprintf("creator %d", i))) }(i)
		}
		wins := 0
		for i := 0; i < n; i++ {
			err := <-errs
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, storage.ErrExists):
				t.Errorf("losing CreateExclusive: %v, want ErrExists", err)
			}
		}
		if wins != 1 {
			t.Fatalf("%d of %d concurrent CreateExclusive calls won, want exactly 1", wins, n)
		}
		f, err := b.Open(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
		f.Close()
		if !bytes.HasPrefix(got, []byte("creator ")) {
			t.Fatalf("content %q, want one creator's whole body", got)
		}
		if err := c.CreateExclusive(ctx, p, []byte("late")); !errors.Is(err, storage.ErrExists) {
			t.Fatalf("CreateExclusive over an existing object: %v, want ErrExists", err)
		}
		checkContent(t, b, p, got)
	})

	t.Run("CommitThenVisible", func(t *testing.T) {
		p := at("commit/a.bin")
		data := random(1, 100_000)
		w, err := b.Create(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		write(t, w, data, 777)
		if ok, err := b.Exists(ctx, p); ok || err != nil {
			t.Fatalf("object visible before Commit (exists=%v, err=%v)", ok, err)
		}
		if got, err := b.List(ctx, at("commit")); err == nil && len(got) > 0 {
			t.Fatalf("List shows %q before Commit", got)
		}
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte("x")); err == nil {
			t.Error("Write after Commit succeeded")
		}
		if err := w.Commit(); err == nil {
			t.Error("second Commit succeeded")
		}
		if ok, err := b.Exists(ctx, p); !ok || err != nil {
			t.Fatalf("Exists after Commit: %v, %v", ok, err)
		}
		checkContent(t, b, p, data)
	})

	t.Run("Abort", func(t *testing.T) {
		p := at("abort/a.bin")
		w, err := b.Create(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		write(t, w, random(2, c.Large), 100_003)
		if err := w.Abort(); err != nil {
			t.Fatal(err)
		}
		if ok, err := b.Exists(ctx, p); ok || err != nil {
			t.Fatalf("aborted object exists=%v err=%v", ok, err)
		}
		if got, err := b.List(ctx, at("abort")); err == nil && len(got) > 0 {
			t.Fatalf("List shows %q after Abort", got)
		}
	})

	t.Run("OverwriteLeavesOne", func(t *testing.T) {
		// A retried bundle writes the same final name again.
		p := at("over/part-00000.parquet")
		for i, d := range [][]byte{random(3, 5000), random(4, 1234)} {
			w, err := b.Create(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			write(t, w, d, 1000)
			if err := w.Commit(); err != nil {
				t.Fatalf("commit %d: %v", i, err)
			}
		}
		got, err := b.List(ctx, at("over"))
		if err != nil || !slices.Equal(got, []string{"part-00000.parquet"}) {
			t.Fatalf("List after overwrite: %q, %v", got, err)
		}
		checkContent(t, b, p, random(4, 1234))
	})

	t.Run("Empty", func(t *testing.T) {
		p := at("empty/zero.bin")
		w, err := b.Create(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		checkContent(t, b, p, nil)
	})

	t.Run("Large", func(t *testing.T) {
		p := at("large/big.bin")
		data := random(5, c.Large)
		w, err := b.Create(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		write(t, w, data, 65_537)
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		checkContent(t, b, p, data)
	})

	t.Run("NamesAndHidden", func(t *testing.T) {
		want := []string{
			"a b/c d.parquet", "plus+sign.parquet", "pct%20not-escaped%.parquet", "ünïcødé/日本語.parquet",
			"deep/er/still/x.parquet", "tilde~and=eq&amp;.parquet",
		}
		hidden := []string{"_manifest.json", ".tmp-x", "_staging/x.parquet", "d/.part.tmp", "d/_SUCCESS"}
		for _, rel := range append(slices.Clone(want), hidden...) {
			put(t, b, at("names/"+rel), []byte(rel))
		}
		got, err := b.List(ctx, at("names"))
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(want)
		if !slices.Equal(got, want) {
			t.Fatalf("List:\n got %q\nwant %q", got, want)
		}
		for _, rel := range want {
			checkContent(t, b, at("names/"+rel), []byte(rel))
		}
		// A root given with a trailing slash lists the same.
		if got2, err := b.List(ctx, at("names")+"/"); err != nil || !slices.Equal(got2, got) {
			t.Errorf("List with trailing slash: %q, %v", got2, err)
		}
	})

	t.Run("ListMany", func(t *testing.T) {
		var want []string
		var wg sync.WaitGroup
		sem := make(chan struct{}, 8)
		for i := range c.Many {
			rel := fmt.Sprintf("f/%03d/part-%05d.parquet", i%7, i)
			want = append(want, rel)
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				put(t, b, at("many/"+rel), []byte{byte(i)})
			}()
		}
		wg.Wait()
		sort.Strings(want)
		got, err := b.List(ctx, at("many"))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("List returned %d names, want %d (first %q)", len(got), len(want), got[:min(3, len(got))])
		}
		// A sibling whose name extends the root is not inside it.
		put(t, b, at("many-not/x.parquet"), []byte("x"))
		if got, _ := b.List(ctx, at("many")); len(got) != len(want) {
			t.Fatalf("List of %q picked up a sibling prefix: %d names", at("many"), len(got))
		}
	})

	t.Run("ReadAt", func(t *testing.T) {
		p := at("readat/r.bin")
		data := random(6, 300_001)
		put(t, b, p, data)
		f, err := b.Open(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if f.Size() != int64(len(data)) {
			t.Fatalf("Size %d, want %d", f.Size(), len(data))
		}
		buf := make([]byte, 10)
		n, err := f.ReadAt(buf, int64(len(data))-4)
		if n != 4 || err != io.EOF || !bytes.Equal(buf[:4], data[len(data)-4:]) {
			t.Errorf("ReadAt across the end: n=%d err=%v", n, err)
		}
		if n, err := f.ReadAt(buf, int64(len(data))+5); n != 0 || err != io.EOF {
			t.Errorf("ReadAt past the end: n=%d err=%v", n, err)
		}
		// Concurrent random reads, as Parquet column readers do.
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(g), 9))
				for range 50 {
					off := r.IntN(len(data))
					n := min(r.IntN(20_000)+1, len(data)-off)
					got := make([]byte, n)
					if k, err := f.ReadAt(got, int64(off)); k != n || (err != nil && err != io.EOF) {
						errs <- fmt.Errorf("ReadAt(%d, %d) = %d, %v", n, off, k, err)
						return
					}
					if !bytes.Equal(got, data[off:off+n]) {
						errs <- fmt.Errorf("ReadAt(%d, %d) returned wrong bytes", n, off)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 42))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func write(t *testing.T, w storage.Writer, data []byte, chunk int) {
	t.Helper()
	for len(data) > 0 {
		n := min(chunk, len(data))
		if k, err := w.Write(data[:n]); k != n || err != nil {
			t.Fatalf("Write: %d, %v", k, err)
		}
		data = data[n:]
	}
}

func put(t *testing.T, b storage.Backend, p string, data []byte) {
	t.Helper()
	w, err := b.Create(context.Background(), p)
	if err != nil {
		t.Error(err)
		return
	}
	if _, err := w.Write(data); err != nil {
		t.Error(err)
		_ = w.Abort()
		return
	}
	if err := w.Commit(); err != nil {
		t.Errorf("commit %s: %v", p, err)
	}
}

func checkContent(t *testing.T, b storage.Backend, p string, want []byte) {
	t.Helper()
	f, err := b.Open(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Size() != int64(len(want)) {
		t.Fatalf("%s: Size %d, want %d", p, f.Size(), len(want))
	}
	got, err := io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: content differs (%d bytes read, %d written)", p, len(got), len(want))
	}
}
