package s3_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/parquet-go/parquet-go"

	"rekey/providers/internal/testserver"
	"rekey/providers/objstore"
	"rekey/providers/s3"
)

type row struct {
	ID      int64  `parquet:"id"`
	Tenant  string `parquet:"tenant"`
	DEKID   string `parquet:"dek_id"`
	Payload []byte `parquet:"payload"`
}

// TestParquetReadRequests reads a Parquet file the way the pipeline does
// and counts ranged GETs with and without the read-ahead cache.
func TestParquetReadRequests(t *testing.T) {
	srv := testserver.GoFakeS3(t, nil, "rekey")
	ctx := context.Background()
	newB := func(block int) *objstore.Backend {
		return s3.New(s3.Config{Endpoint: srv.Endpoint, Region: "us-east-1", PathStyle: true,
			Credentials: credentials.NewStaticCredentialsProvider("fake", "fake", ""),
			Options:     objstore.Options{BlockSize: block}})
	}
	const n = 20000
	w, err := newB(0).Create(ctx, "s3://rekey/data/part-00000.parquet")
	if err != nil {
		t.Fatal(err)
	}
	pw := parquet.NewGenericWriter[row](w, parquet.MaxRowsPerRowGroup(2000))
	r := rand.New(rand.NewPCG(1, 2))
	for i := range n {
		p := make([]byte, 300)
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		if _, err := pw.Write([]row{{ID: int64(i), Tenant: fmt.Sprint("t", i%13), DEKID: fmt.Sprint("dek-", i%97), Payload: p}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := pw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	read := func(b *objstore.Backend) (gets int, size int64) {
		srv.Requests.Reset()
		f, err := b.Open(ctx, "s3://rekey/data/part-00000.parquet")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		pf, err := parquet.OpenFile(f, f.Size(), parquet.SkipPageIndex(true), parquet.SkipBloomFilters(true))
		if err != nil {
			t.Fatal(err)
		}
		rd := parquet.NewGenericReader[row](pf)
		buf := make([]row, 500)
		total := 0
		for {
			k, err := rd.Read(buf)
			total += k
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if total != n {
			t.Fatalf("read %d rows, want %d", total, n)
		}
		return srv.Requests.Take(http.MethodGet), f.Size()
	}
	cached, size := read(newB(0))
	direct, _ := read(newB(1))
	t.Logf("Parquet file of %d bytes, 10 row groups x 4 columns: %d ranged GETs with 1 MiB read-ahead, %d without", size, cached, direct)
	if maxGets := int(size>>20) + 2 + 4; cached > maxGets {
		t.Errorf("%d GETs with read-ahead for a %d-byte file, want at most %d (about one per MiB)", cached, size, maxGets)
	}
	if cached*5 > direct {
		t.Errorf("read-ahead saves too little: %d vs %d GETs", cached, direct)
	}
}

// stream is size bytes of deterministic data, made on the fly.
type stream struct {
	r    *rand.ChaCha8
	left int64
}

func (s *stream) Read(p []byte) (int, error) {
	if s.left == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), s.left)]
	s.r.Read(p)
	s.left -= int64(len(p))
	return len(p), nil
}

// peakHeap samples HeapInuse until stop is called and returns the peak.
func peakHeap() (stop func() uint64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	sample := func() {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		for {
			p := peak.Load()
			if m.HeapInuse <= p || peak.CompareAndSwap(p, m.HeapInuse) {
				return
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(2 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
				sample()
			}
		}
	}()
	return func() uint64 { sample(); close(done); wg.Wait(); return peak.Load() }
}

func heapNow() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestMemoryBounded writes and reads objects of growing size through a
// real S3 server (versitygw, another process, so its buffers are not
// counted) and checks that the heap's peak growth does not grow with the
// object: it stays under (Concurrency+1) x PartSize plus slack.
func TestMemoryBounded(t *testing.T) {
	srv := testserver.Versitygw(t)
	srv.CreateBucket(t, "rekey")
	opts := objstore.Options{PartSize: 5 << 20, Concurrency: 3}
	b := s3.New(s3.Config{Endpoint: srv.Endpoint, Region: "us-east-1", PathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(srv.Access, srv.Secret, ""), Options: opts})
	ctx := context.Background()
	const slack = 12 << 20
	bound := uint64((opts.Concurrency+1)*opts.PartSize + slack)
	for _, size := range []int64{8 << 20, 160 << 20} {
		key := fmt.Sprintf("s3://rekey/mem/%d.bin", size)
		base := heapNow()
		stop := peakHeap()
		w, err := b.Create(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		src := &stream{r: rand.NewChaCha8([32]byte{byte(size)}), left: size}
		if _, err := io.CopyBuffer(io.MultiWriter(w, h), src, make([]byte, 256<<10)); err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		wpeak := stop()
		wpeak -= min(base, wpeak)
		want := h.Sum(nil)

		base = heapNow()
		stop = peakHeap()
		f, err := b.Open(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		h.Reset()
		if _, err := io.CopyBuffer(h, io.NewSectionReader(f, 0, f.Size()), make([]byte, 64<<10)); err != nil {
			t.Fatal(err)
		}
		f.Close()
		rpeak := stop()
		rpeak -= min(base, rpeak)
		if got := h.Sum(nil); string(got) != string(want) {
			t.Fatalf("%d-byte object read back differently", size)
		}
		t.Logf("%4d MiB object: peak heap growth writing %.1f MiB, reading %.1f MiB (bound %.0f MiB)",
			size>>20, float64(wpeak)/(1<<20), float64(rpeak)/(1<<20), float64(bound)/(1<<20))
		if wpeak > bound || rpeak > bound {
			t.Errorf("%d MiB object: peak heap growth %d (write) / %d (read) bytes exceeds %d", size>>20, wpeak, rpeak, bound)
		}
	}
}
