// Package oss is the storage backend for oss:// locations (Alibaba Cloud
// Object Storage Service), on github.com/aliyun/aliyun-oss-go-sdk. It
// registers itself for the "oss" scheme when imported.
//
// Configuration is the OSS tools' usual one: credentials from
// OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET and, for STS tokens,
// OSS_SESSION_TOKEN (read at every request, so a rotated token is picked
// up); region from OSS_REGION (e.g. cn-hangzhou); endpoint from
// OSS_ENDPOINT, defaulting to https://oss-<region>.aliyuncs.com. Requests
// are signed with V4 (OSS4-HMAC-SHA256), which needs the region; it is
// derived from a standard endpoint when not given.
//
// Region and endpoint can also ride in the location, which is what reaches
// Beam workers on a remote runner (they get the job's locations, not the
// launcher's environment):
//
//	oss://bucket/prefix?region=cn-shanghai&endpoint=https://oss-cn-shanghai-internal.aliyuncs.com
//
// Credentials are never accepted in a location.
//
// Limits: path_style (REKEY_OSS_PATH_STYLE=1) exists for OSS-compatible
// test servers; real OSS serves new buckets virtual-hosted only. This
// backend is tested only against an S3 server behind a header-translating
// fake (no OSS server runs locally); see oss_test.go.
package oss

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/aliyun/aliyun-oss-go-sdk/oss"

	"rekey/providers/objstore"
	"rekey/providers/storage"
)

// Scheme is the URI scheme this package registers.
const Scheme = "oss"

// Params are the location parameters oss:// accepts.
var Params = []string{"endpoint", "region", "path_style"}

func init() { storage.Register(Scheme, New(Config{})) }

// Config is a backend's defaults; a location's parameters override them
// and the environment fills in what both leave empty.
type Config struct {
	Endpoint  string
	Region    string
	PathStyle bool
	// Credentials replaces the OSS_* environment variables (tests,
	// embedding).
	Credentials oss.CredentialsProvider
	HTTPClient  *http.Client
	Options     objstore.Options
}

// Validate checks the fields that can be checked without a network.
func (c Config) Validate() error {
	return objstore.CheckEndpoint("oss", c.Endpoint)
}

// Hints say what to check, per kind of failure.
var Hints = map[objstore.Kind]string{
	objstore.KindDenied: "check OSS_ACCESS_KEY_ID/OSS_ACCESS_KEY_SECRET (and OSS_SESSION_TOKEN for STS), the RAM policy, " +
		"the system clock, and that region and endpoint are the bucket's",
	objstore.KindNoBucket:  "check the bucket name, and that the endpoint and region (OSS_ENDPOINT, OSS_REGION or ?endpoint=, ?region=) are the bucket's",
	objstore.KindNotFound:  "check the key",
	objstore.KindConfig:    "check OSS_ENDPOINT/OSS_REGION (or ?endpoint=, ?region=)",
	objstore.KindTransient: "OSS is throttling or unreachable; retried with backoff and gave up: lower --workers or try again",
}

// New returns an oss backend with its own client cache.
func New(c Config) *objstore.Backend {
	f := &factory{cfg: c, clients: map[string]*oss.Client{}}
	return &objstore.Backend{Scheme: Scheme, Params: Params, Hints: Hints, Options: c.Options, Bucket: f.bucket}
}

type factory struct {
	cfg     Config
	mu      sync.Mutex
	clients map[string]*oss.Client
}

func configErr(format string, a ...any) error {
	return objstore.Classified(objstore.KindConfig, fmt.Errorf(format, a...))
}

// RegionOf derives the region from a standard endpoint
// (oss-cn-hangzhou[-internal].aliyuncs.com), or "".
func RegionOf(endpoint string) string {
	h := endpoint
	if i := strings.Index(h, "://"); i >= 0 {
		h = h[i+3:]
	}
	h, _, _ = strings.Cut(h, "/")
	h, ok := strings.CutSuffix(h, ".aliyuncs.com")
	if !ok {
		return ""
	}
	h, ok = strings.CutPrefix(h, "oss-")
	if !ok || strings.Contains(h, ".") {
		return ""
	}
	return strings.TrimSuffix(h, "-internal")
}

func (f *factory) bucket(_ context.Context, l objstore.Location) (objstore.Bucket, error) {
	if err := f.cfg.Validate(); err != nil {
		return nil, objstore.Classified(objstore.KindConfig, err)
	}
	endpoint := firstOf(l.Params.Get("endpoint"), f.cfg.Endpoint, os.Getenv("OSS_ENDPOINT"))
	region := firstOf(l.Params.Get("region"), f.cfg.Region, os.Getenv("OSS_REGION"))
	pathStyle := f.cfg.PathStyle
	if v, _ := strconv.ParseBool(os.Getenv("REKEY_OSS_PATH_STYLE")); v {
		pathStyle = true
	}
	if v := l.Params.Get("path_style"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, configErr("path_style=%q: want true or false", v)
		}
		pathStyle = b
	}
	if region == "" {
		region = RegionOf(endpoint)
	}
	if region == "" {
		return nil, configErr("no OSS region (set OSS_REGION, e.g. cn-hangzhou, or ?region=): V4 signing needs it")
	}
	if endpoint == "" {
		endpoint = "https://oss-" + region + ".aliyuncs.com"
	}
	creds := f.cfg.Credentials
	if creds == nil {
		if os.Getenv("OSS_ACCESS_KEY_ID") == "" || os.Getenv("OSS_ACCESS_KEY_SECRET") == "" {
			return nil, objstore.Classified(objstore.KindDenied, errors.New("no OSS credentials: OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET are not both set"))
		}
		creds = &oss.EnvironmentVariableCredentialsProvider{}
	}
	key := strings.Join([]string{endpoint, region, strconv.FormatBool(pathStyle)}, "\x00")
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.clients[key]
	if c == nil {
		opts := []oss.ClientOption{oss.SetCredentialsProvider(creds), oss.AuthVersion(oss.AuthV4), oss.Region(region)}
		if pathStyle {
			opts = append(opts, oss.ForcePathStyle(true))
		}
		if f.cfg.HTTPClient != nil {
			opts = append(opts, oss.HTTPClient(f.cfg.HTTPClient))
		}
		var err error
		c, err = oss.New(endpoint, "", "", opts...)
		if err != nil {
			return nil, configErr("OSS endpoint %q: %v", endpoint, err)
		}
		f.clients[key] = c
	}
	bk, err := c.Bucket(l.Bucket)
	if err != nil {
		return nil, configErr("bucket %q: %v", l.Bucket, err)
	}
	return &bucket{b: bk}, nil
}

func firstOf(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

type bucket struct{ b *oss.Bucket }

func (b *bucket) Head(ctx context.Context, key string) (int64, string, error) {
	h, err := b.b.GetObjectDetailedMeta(key, oss.WithContext(ctx))
	if err != nil {
		return 0, "", convert(err)
	}
	size, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64)
	if err != nil {
		return 0, "", fmt.Errorf("HEAD %s: bad Content-Length %q", key, h.Get("Content-Length"))
	}
	return size, h.Get("ETag"), nil
}

func (b *bucket) GetRange(ctx context.Context, key, etag string, off, n int64) (io.ReadCloser, error) {
	opts := []oss.Option{oss.WithContext(ctx), oss.Range(off, off+n-1), oss.RangeBehavior("standard")}
	if etag != "" {
		opts = append(opts, oss.IfMatch(etag))
	}
	body, err := b.b.GetObject(key, opts...)
	if err != nil {
		return nil, convert(err)
	}
	return body, nil
}

func (b *bucket) Put(ctx context.Context, key string, body []byte) error {
	var r io.Reader = bytes.NewReader(body)
	if len(body) == 0 {
		// A non-nil empty body goes out chunked, without the
		// Content-Length the server requires.
		r = nil
	}
	return convert(b.b.PutObject(key, r, oss.WithContext(ctx)))
}

// PutIfAbsent implements objstore.ConditionalPutter
// (x-oss-forbid-overwrite: true; a taken key is 409 FileAlreadyExists).
func (b *bucket) PutIfAbsent(ctx context.Context, key string, body []byte) error {
	var r io.Reader = bytes.NewReader(body)
	if len(body) == 0 {
		r = nil
	}
	return convert(b.b.PutObject(key, r, oss.WithContext(ctx), oss.ForbidOverWrite(true)))
}

// Delete implements objstore.Deleter.
func (b *bucket) Delete(ctx context.Context, key string) error {
	return convert(b.b.DeleteObject(key, oss.WithContext(ctx)))
}

func (b *bucket) imur(key, id string) oss.InitiateMultipartUploadResult {
	return oss.InitiateMultipartUploadResult{Bucket: b.b.BucketName, Key: key, UploadID: id}
}

func (b *bucket) CreateMultipart(ctx context.Context, key string) (string, error) {
	r, err := b.b.InitiateMultipartUpload(key, oss.WithContext(ctx))
	if err != nil {
		return "", convert(err)
	}
	return r.UploadID, nil
}

func (b *bucket) UploadPart(ctx context.Context, key, id string, num int, body []byte) (string, error) {
	p, err := b.b.UploadPart(b.imur(key, id), bytes.NewReader(body), int64(len(body)), num, oss.WithContext(ctx))
	if err != nil {
		return "", convert(err)
	}
	return p.ETag, nil
}

func (b *bucket) CompleteMultipart(ctx context.Context, key, id string, parts []objstore.Part) error {
	up := make([]oss.UploadPart, len(parts))
	for i, p := range parts {
		up[i] = oss.UploadPart{PartNumber: p.Num, ETag: p.ETag}
	}
	_, err := b.b.CompleteMultipartUpload(b.imur(key, id), up, oss.WithContext(ctx))
	return convert(err)
}

func (b *bucket) AbortMultipart(ctx context.Context, key, id string) error {
	return convert(b.b.AbortMultipartUpload(b.imur(key, id), oss.WithContext(ctx)))
}

func (b *bucket) List(ctx context.Context, prefix, token string, max int) ([]string, string, error) {
	opts := []oss.Option{oss.WithContext(ctx), oss.Prefix(prefix), oss.MaxKeys(max)}
	if token != "" {
		opts = append(opts, oss.ContinuationToken(token))
	}
	r, err := b.b.ListObjectsV2(opts...)
	if err != nil {
		return nil, "", convert(err)
	}
	keys := make([]string, 0, len(r.Objects))
	for _, o := range r.Objects {
		keys = append(keys, o.Key)
	}
	next := ""
	if r.IsTruncated {
		if next = r.NextContinuationToken; next == "" {
			return nil, "", fmt.Errorf("list oss://%s/%s: truncated page without a continuation token", b.b.BucketName, prefix)
		}
	}
	return keys, next, nil
}

// convert reduces an SDK error to an objstore.ServiceError (status, code,
// request ID): OSS's message for a signature mismatch echoes the string
// to sign and the access key ID, so it is never printed.
func convert(err error) error {
	if err == nil {
		return nil
	}
	var se oss.ServiceError
	if errors.As(err, &se) {
		return &objstore.ServiceError{Kind: objstore.KindOfStatus(se.StatusCode, se.Code), Status: se.StatusCode, Code: se.Code, RequestID: se.RequestID}
	}
	var sep *oss.ServiceError
	if errors.As(err, &sep) {
		return &objstore.ServiceError{Kind: objstore.KindOfStatus(sep.StatusCode, sep.Code), Status: sep.StatusCode, Code: sep.Code, RequestID: sep.RequestID}
	}
	var crc oss.CRCCheckError
	if errors.As(err, &crc) {
		// The bytes were damaged in transit: sending them again is right.
		return objstore.Classified(objstore.KindTransient, errors.New("CRC64 of the bytes sent and stored differ"))
	}
	return err
}
