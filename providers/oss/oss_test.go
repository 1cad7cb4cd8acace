package oss_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/aliyun/aliyun-oss-go-sdk/oss"

	"rekey/providers/internal/testserver"
	"rekey/providers/objstore"
	rekeyoss "rekey/providers/oss"
	"rekey/providers/storage"
	"rekey/providers/storagetest"
)

// These tests run the real OSS SDK against gofakes3 behind
// testserver.OSSFake, a header-translating FAKE: no OSS server runs here,
// and the fake does not check OSS signatures.

type creds struct{ id, secret string }

func (c creds) GetCredentials() oss.Credentials { return c }
func (c creds) GetAccessKeyID() string          { return c.id }
func (c creds) GetAccessKeySecret() string      { return c.secret }
func (c creds) GetSecurityToken() string        { return "" }

func backend(srv *testserver.S3) *objstore.Backend {
	return rekeyoss.New(rekeyoss.Config{Endpoint: srv.Endpoint, Region: "cn-hangzhou", PathStyle: true,
		Credentials: creds{"LTAIfakeaccesskey", "fake-oss-secret"},
		Options:     objstore.Options{PartSize: 5 << 20, ListPage: 7}})
}

func TestConformanceOSSFake(t *testing.T) {
	srv := testserver.OSSFake(t, "rekey")
	storagetest.Run(t, backend(srv), "oss://rekey/conformance", storagetest.Config{Large: 12 << 20})
	if srv.Requests.Take("auth OSS4-HMAC-SHA256") == 0 || srv.Requests.Take("scope cn-hangzhou/oss") == 0 {
		t.Error("requests were not signed with OSS V4 for cn-hangzhou")
	}
}

func TestMissingBucket(t *testing.T) {
	srv := testserver.OSSFake(t)
	_, err := backend(srv).Open(context.Background(), "oss://nobucket/a/b.parquet")
	if !errors.Is(err, objstore.ErrNoBucket) || !strings.Contains(err.Error(), `bucket "nobucket"`) || !strings.Contains(err.Error(), "OSS_ENDPOINT") {
		t.Fatalf("missing bucket: %v", err)
	}
}

func TestEnvironmentAndParameters(t *testing.T) {
	srv := testserver.OSSFake(t, "rekey")
	ctx := context.Background()
	for _, k := range []string{"OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN", "OSS_REGION", "OSS_ENDPOINT"} {
		t.Setenv(k, "")
	}
	loc := "oss://rekey/env?endpoint=" + srv.Endpoint + "&path_style=true&region=cn-shanghai"
	_, err := storage.List(ctx, loc)
	if !errors.Is(err, objstore.ErrAccessDenied) || !strings.Contains(err.Error(), "OSS_ACCESS_KEY_ID") {
		t.Fatalf("without credentials: %v", err)
	}
	t.Setenv("OSS_ACCESS_KEY_ID", "LTAIenvkey")
	t.Setenv("OSS_ACCESS_KEY_SECRET", "env-secret-never-printed")
	t.Setenv("OSS_SESSION_TOKEN", "sts-token-never-printed")
	w, err := storage.Create(ctx, storage.Join(loc, "x y+z%.parquet"))
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("data"))
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	got, err := storage.List(ctx, loc)
	if err != nil || len(got) != 1 || got[0] != "x y+z%.parquet" {
		t.Fatalf("List = %q, %v", got, err)
	}
	if srv.Requests.Take("scope cn-shanghai/oss") == 0 {
		t.Error("region parameter not used for V4 signing")
	}
	_, err = storage.Open(ctx, "oss://rekey/env/missing?endpoint="+srv.Endpoint+"&path_style=true")
	if err == nil || !strings.Contains(err.Error(), "OSS_REGION") {
		t.Errorf("no region: %v", err)
	}
	for _, s := range []string{"env-secret-never-printed", "sts-token-never-printed"} {
		if err != nil && strings.Contains(err.Error(), s) {
			t.Errorf("error leaks %q", s)
		}
	}
}

func TestRegionOf(t *testing.T) {
	for in, want := range map[string]string{
		"https://oss-cn-hangzhou.aliyuncs.com":          "cn-hangzhou",
		"oss-ap-southeast-1-internal.aliyuncs.com":      "ap-southeast-1",
		"https://bucket.oss-cn-beijing.aliyuncs.com":    "",
		"http://127.0.0.1:9000":                         "",
		"https://oss-eu-central-1.aliyuncs.com/ignored": "eu-central-1",
	} {
		if got := rekeyoss.RegionOf(in); got != want {
			t.Errorf("RegionOf(%q) = %q, want %q", in, got, want)
		}
	}
}
