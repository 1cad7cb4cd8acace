// Package testserver starts the object-store servers the provider tests
// run against, on 127.0.0.1: versitygw (a real S3 gateway that checks
// SigV4 signatures, run as a child process from a cached binary) and
// gofakes3 (in-process, ignores authentication; a fake). Only tests
// import it.
//
// Limits: versitygw is not built here; `make versitygw` (or the
// go install line in Versitygw's error) puts it where Binary finds it.
package testserver

import (
	"context"

	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// VersitygwVersion is the release the tests are written against.
const VersitygwVersion = "v1.8.0"

// Binary returns the versitygw binary's path, looking at $REKEY_VERSITYGW,
// $PATH, ~/.cache/rekey/versitygw-<version>/ and $GOPATH/bin.
func Binary() (string, bool) {
	if p := os.Getenv("REKEY_VERSITYGW"); p != "" {
		_, err := os.Stat(p)
		return p, err == nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, true
	}
	var cands []string
	if home, err := os.UserHomeDir(); err == nil {
		cands = append(cands, filepath.Join(home, ".cache", "rekey", "versitygw-"+VersitygwVersion, "versitygw"))
	}
	if gp := os.Getenv("GOPATH"); gp != "" {
		cands = append(cands, filepath.Join(strings.Split(gp, string(os.PathListSeparator))[0], "bin", "versitygw"))
	} else if home, err := os.UserHomeDir(); err == nil {
		cands = append(cands, filepath.Join(home, "go", "bin", "versitygw"))
	}
	for _, c := range cands {
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return c, true
		}
	}
	return "", false
}

// Missing skips the test, or fails it when CI is set: CI must run every
// test.
func Missing(t testing.TB, what, install string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is missing and CI is set, so this test may not skip: %s", what, install)
	}
	t.Skipf("%s is missing (%s); skipping", what, install)
}

// S3 is a running S3 server.
type S3 struct {
	Endpoint       string
	Access, Secret string
	// Requests counts requests by method (gofakes3 only).
	Requests *Counter
}

// Client returns an SDK client for setting up fixtures.
func (s *S3) Client() *s3.Client {
	return s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(s.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(s.Access, s.Secret, "")})
}

// CreateBucket makes a bucket.
func (s *S3) CreateBucket(t testing.TB, name string) {
	t.Helper()
	if _, err := s.Client().CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: &name}); err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
}

// Versitygw starts versitygw's posix backend in a temporary folder.
func Versitygw(t testing.TB) *S3 {
	t.Helper()
	bin, ok := Binary()
	if !ok {
		Missing(t, "versitygw", "run `make versitygw`, or GOBIN=$HOME/.cache/rekey/versitygw-"+VersitygwVersion+
			" go install github.com/versity/versitygw/cmd/versitygw@"+VersitygwVersion)
	}
	root := t.TempDir()
	port := freePort(t)
	s := &S3{Endpoint: "http://" + port, Access: "rekeytestaccess", Secret: "rekey-test-secret-do-not-log"}
	cmd := exec.Command(bin, "--access", s.Access, "--secret", s.Secret, "--port", port, "--quiet", "posix", root)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID=", "ROOT_SECRET_ACCESS_KEY=")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start versitygw: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	for i := 0; ; i++ {
		select {
		case <-done:
			t.Fatalf("versitygw exited at start: %s", out.String())
		default:
		}
		c, err := net.Dial("tcp", port)
		if err == nil {
			c.Close()
			break
		}
		if i == 300 {
			t.Fatalf("versitygw did not listen on %s: %s", port, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s
}

// GoFakeS3 starts an in-process gofakes3 (a fake: it ignores signatures)
// with the given buckets. wrap, if not nil, sits in front of it.
func GoFakeS3(t testing.TB, wrap func(http.Handler) http.Handler, buckets ...string) *S3 {
	t.Helper()
	be := s3mem.New()
	for _, b := range buckets {
		if err := be.CreateBucket(b); err != nil {
			t.Fatal(err)
		}
	}
	var h http.Handler = gofakes3.New(be, gofakes3.WithLogger(gofakes3.DiscardLog())).Server()
	if wrap != nil {
		h = wrap(h)
	}
	c := &Counter{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.add(r.Method)
		if f := strings.Fields(r.Header.Get("Authorization")); len(f) > 1 {
			c.add("auth " + f[0])
			if i := strings.Index(f[1], "/"); i >= 0 {
				if scope := strings.Split(f[1][i+1:], "/"); len(scope) > 2 {
					c.add("scope " + scope[1] + "/" + scope[2])
				}
			}
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return &S3{Endpoint: srv.URL, Access: "fake", Secret: "fake-secret", Requests: c}
}

// Counter counts requests by method, and by "auth <scheme>" and
// "scope <region>/<service>" of their signatures.
type Counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *Counter) add(method string) {
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[method]++
	c.mu.Unlock()
}

// Take returns the count for a method and resets it.
func (c *Counter) Take(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n[method]
	delete(c.n, method)
	return n
}

// Reset zeroes every count.
func (c *Counter) Reset() {
	c.mu.Lock()
	c.n = nil
	c.mu.Unlock()
}

func freePort(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
