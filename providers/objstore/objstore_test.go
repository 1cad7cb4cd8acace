package objstore

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	allowed := []string{"endpoint", "region"}
	for _, tc := range []struct {
		in, bucket, key, err string
	}{
		{in: "s3://b/a b/c+d%.parquet", bucket: "b", key: "a b/c+d%.parquet"},
		{in: "s3://b", bucket: "b"},
		{in: "s3://b/p?endpoint=http://127.0.0.1:9000&region=x", bucket: "b", key: "p"},
		{in: "s3:///p", err: "no bucket"},
		{in: "s3://b/p?secret=1", err: "unknown parameter"},
		{in: "s3://b/p?region=x/run_id=1/_manifest.json", err: "storage.Join"},
		{in: "s3://b/p?endpoint=http://h:9/run_id=1/_m.json", err: "storage.Join"},
		{in: "s3://b/p?region=a&region=b", err: "2 times"},
		{in: "oss://b/p", err: "not a s3://"},
	} {
		l, err := Parse("s3", tc.in, allowed...)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Parse(%q): %v, want error containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || l.Bucket != tc.bucket || l.Key != tc.key {
			t.Errorf("Parse(%q) = %+v, %v", tc.in, l, err)
		}
	}
}

func TestHidden(t *testing.T) {
	for rel, want := range map[string]bool{"a/b.parquet": false, "_manifest.json": true, "a/.tmp": true, "_x/y": true, "a_b/c.d": false} {
		if hidden(rel) != want {
			t.Errorf("hidden(%q) = %v", rel, !want)
		}
	}
}

// FuzzParse: any location either parses to a bucket without separators
// and a key, or fails; it never panics.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"s3://b/k", "s3://b/k?endpoint=http://x:1&region=r", "s3://", "s3://b?", "s3://b/%zz?region=%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := Parse("s3", s, "endpoint", "region")
		if err != nil {
			return
		}
		if l.Bucket == "" || strings.ContainsAny(l.Bucket, "/?") || strings.Contains(l.Key, "?") {
			t.Fatalf("Parse(%q) = %+v", s, l)
		}
	})
}
