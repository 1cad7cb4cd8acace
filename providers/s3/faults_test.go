package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"rekey/providers/internal/testserver"
	"rekey/providers/keys"
	"rekey/providers/objstore"
	"rekey/providers/s3"
)

// faults sits in front of gofakes3 and injects what real stores do under
// load: 503 SlowDown, connections dropped in the middle of a body, 403.
type faults struct {
	mu       sync.Mutex
	slowdown int // next N GET/PUT requests answer 503 SlowDown
	cut      int // next N ranged GETs drop the connection half way
	deny     bool
}

func (f *faults) take(n *int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if *n > 0 {
		*n--
		return true
	}
	return false
}

func (f *faults) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		deny := f.deny
		f.mu.Unlock()
		switch {
		case deny:
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message><RequestId>DENY1</RequestId></Error>`)
		case (r.Method == http.MethodGet || r.Method == http.MethodPut) && f.take(&f.slowdown):
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>SLOW1</RequestId></Error>`)
		case r.Method == http.MethodGet && r.Header.Get("Range") != "" && f.take(&f.cut):
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			body := rec.Body.Bytes()
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.WriteHeader(rec.Code)
			w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // drops the connection
		default:
			h.ServeHTTP(w, r)
		}
	})
}

func TestRetriesTransientFailFastPermanent(t *testing.T) {
	f := &faults{}
	srv := testserver.GoFakeS3(t, f.wrap, "rekey")
	var sleeps atomic.Int64
	b := s3.New(s3.Config{Endpoint: srv.Endpoint, Region: "us-east-1", PathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider("fake", "fake", ""),
		Options: objstore.Options{PartSize: 5 << 20, BlockSize: 64 << 10, Retry: objstore.Retry{
			Sleep: func(context.Context, time.Duration) error { sleeps.Add(1); return nil }}}})
	ctx := context.Background()
	data := bytes.Repeat([]byte("0123456789abcdef"), (11<<20)/16)

	f.slowdown = 3
	w, err := b.Create(ctx, "s3://rekey/x/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if err := w.Commit(); err != nil {
		t.Fatalf("commit through 3 SlowDowns: %v", err)
	}
	if n := sleeps.Swap(0); n != 3 {
		t.Errorf("%d backoffs for 3 SlowDowns", n)
	}

	f.cut = 2
	fl, err := b.Open(ctx, "s3://rekey/x/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.NewSectionReader(fl, 0, fl.Size()))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read through 2 dropped connections: %d bytes, %v", len(got), err)
	}
	if n := sleeps.Swap(0); n != 2 {
		t.Errorf("%d backoffs for 2 dropped connections", n)
	}

	f.deny = true
	srv.Requests.Reset()
	_, err = b.Open(ctx, "s3://rekey/x/big.bin")
	if !errors.Is(err, objstore.ErrAccessDenied) || keys.IsRetryable(err) {
		t.Fatalf("403: %v", err)
	}
	if n := srv.Requests.Take(http.MethodHead); n != 1 || sleeps.Load() != 0 {
		t.Errorf("403 was retried: %d HEADs, %d backoffs", n, sleeps.Load())
	}

	// Throttling that outlasts the retries is reported as retryable, so
	// the runner may retry the bundle later.
	f.deny = false
	fl2, err := b.Open(ctx, "s3://rekey/x/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	f.slowdown = 100
	_, err = fl2.ReadAt(make([]byte, 10), 0)
	if err == nil || !keys.IsRetryable(err) || !strings.Contains(err.Error(), "SlowDown") {
		t.Errorf("exhausted SlowDown: %v, want a retryable error naming SlowDown", err)
	}
	if n := sleeps.Load(); n != 7 {
		t.Errorf("%d backoffs before giving up, want 7 (8 attempts)", n)
	}
}
