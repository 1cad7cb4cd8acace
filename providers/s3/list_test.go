package s3_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"rekey/providers/internal/testserver"
	"rekey/providers/s3"
)

// TestListTensOfThousands lists 12,000 objects with odd names through the
// default 1,000-key pages.
func TestListTensOfThousands(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := testserver.GoFakeS3(t, nil, "rekey")
	b := s3.New(s3.Config{Endpoint: srv.Endpoint, Region: "us-east-1", PathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider("fake", "fake", "")})
	ctx := context.Background()
	const n = 12000
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	var mu sync.Mutex
	var errs []error
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			w, err := b.Create(ctx, fmt.Sprintf("s3://rekey/many/dir %d/ü+%%%05d.parquet", i%10, i))
			if err == nil {
				w.Write([]byte{1})
				err = w.Commit()
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d puts failed, first: %v", len(errs), errs[0])
	}
	srv.Requests.Reset()
	got, err := b.List(ctx, "s3://rekey/many")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("listed %d, want %d", len(got), n)
	}
	if got[0] != "dir 0/ü+%00000.parquet" {
		t.Errorf("first name %q", got[0])
	}
	if pages := srv.Requests.Take("GET"); pages != n/1000 && pages != n/1000+1 {
		t.Errorf("%d list pages for %d objects", pages, n)
	}
}
