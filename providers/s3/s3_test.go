package s3_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"rekey/providers/internal/testserver"
	"rekey/providers/objstore"
	"rekey/providers/s3"
	"rekey/providers/storagetest"
)

// backend returns an s3 backend for srv with small parts, so that the
// suite's objects go through multipart, and small list pages.
func backend(srv *testserver.S3, secret string) *objstore.Backend {
	return s3.New(s3.Config{Endpoint: srv.Endpoint, Region: "us-east-1", PathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(srv.Access, secret, ""),
		Options:     objstore.Options{PartSize: 5 << 20, ListPage: 7}})
}

func TestConformanceVersitygw(t *testing.T) {
	srv := testserver.Versitygw(t)
	srv.CreateBucket(t, "rekey")
	storagetest.Run(t, backend(srv, srv.Secret), "s3://rekey/conformance", storagetest.Config{Large: 12 << 20})
}

func TestConformanceGoFakeS3(t *testing.T) {
	srv := testserver.GoFakeS3(t, nil, "rekey")
	storagetest.Run(t, backend(srv, srv.Secret), "s3://rekey/conformance", storagetest.Config{Large: 12 << 20})
}

func TestWrongSecretIsClearAndSecretFree(t *testing.T) {
	srv := testserver.Versitygw(t)
	srv.CreateBucket(t, "rekey")
	b := backend(srv, "not-the-secret-xyzzy")
	ctx := context.Background()
	_, err := b.List(ctx, "s3://rekey/data")
	if !errors.Is(err, objstore.ErrAccessDenied) {
		t.Fatalf("List with a wrong secret: %v, want ErrAccessDenied", err)
	}
	if keys.IsRetryable(err) {
		t.Errorf("access denied marked retryable: %v", err)
	}
	msg := err.Error()
	for _, want := range []string{`bucket "rekey"`, `key "data"`, "SignatureDoesNotMatch", "AWS_SECRET_ACCESS_KEY"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	for _, secret := range []string{"not-the-secret-xyzzy", srv.Access} {
		if strings.Contains(msg, secret) {
			t.Errorf("error leaks credential material %q: %s", secret, msg)
		}
	}
	if err := b.Check(ctx, "s3://rekey/target", true); !errors.Is(err, objstore.ErrAccessDenied) {
		t.Errorf("Check with a wrong secret: %v", err)
	}
}

func TestMissingBucket(t *testing.T) {
	srv := testserver.Versitygw(t)
	b := backend(srv, srv.Secret)
	ctx := context.Background()
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, objstore.ErrNoBucket) || errors.Is(err, storage.ErrNotFound) {
			t.Errorf("%s on a missing bucket: %v, want ErrNoBucket (and not ErrNotFound)", what, err)
			return
		}
		if !strings.Contains(err.Error(), `bucket "nobucket"`) || !strings.Contains(err.Error(), "check the bucket name") {
			t.Errorf("%s: error does not name the bucket or say what to check: %v", what, err)
		}
	}
	_, err := b.List(ctx, "s3://nobucket/data")
	check("List", err)
	_, err = b.Open(ctx, "s3://nobucket/data/part-00000.parquet")
	check("Open", err)
	_, err = b.Exists(ctx, "s3://nobucket/ledger/_manifest.json")
	check("Exists", err)
	w, err := b.Create(ctx, "s3://nobucket/out/x.parquet")
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("hello"))
	check("Commit", w.Commit())
	check("Check", b.Check(ctx, "s3://nobucket/out", true))
}

// TestLocationParameters uses the registered backend, configured only by
// the location and the SDK's credential environment, as a Beam worker is.
func TestLocationParameters(t *testing.T) {
	srv := testserver.Versitygw(t)
	srv.CreateBucket(t, "rekey")
	t.Setenv("AWS_ACCESS_KEY_ID", srv.Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.Secret)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	ctx := context.Background()
	root := "s3://rekey/params?endpoint=" + srv.Endpoint + "&path_style=true&region=us-east-1"
	p := storage.Join(root, "a b/c+d%.txt")
	if want := "s3://rekey/params/a b/c+d%.txt?endpoint=" + srv.Endpoint + "&path_style=true&region=us-east-1"; p != want {
		t.Fatalf("Join = %q, want %q", p, want)
	}
	w, err := storage.Create(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("hi"))
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	got, err := storage.List(ctx, root)
	if err != nil || len(got) != 1 || got[0] != "a b/c+d%.txt" {
		t.Fatalf("List = %q, %v", got, err)
	}
	// A path glued on after the parameters is refused, not written
	// somewhere else.
	if _, err := storage.Create(ctx, root+"/run_id=r1/_manifest.json"); err == nil || !strings.Contains(err.Error(), "storage.Join") {
		t.Errorf("path after parameters: %v", err)
	}
	if _, err := storage.Open(ctx, "s3://rekey/x?secret_key=abc"); err == nil || strings.Contains(err.Error(), "abc") && !strings.Contains(err.Error(), "unknown parameter") {
		t.Errorf("credential parameter: %v", err)
	}
}
