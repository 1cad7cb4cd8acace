// Package s3 is the storage backend for s3:// locations, on aws-sdk-go-v2.
// It registers itself for the "s3" scheme when imported, and works with
// Amazon S3 and S3-compatible stores (MinIO, Ceph, versitygw).
//
// Configuration is the AWS SDK's own: credentials from the default chain
// (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE
// and the shared config files, web identity, ECS and EC2 instance roles),
// region from AWS_REGION or the profile, endpoint from AWS_ENDPOINT_URL_S3
// or AWS_ENDPOINT_URL. Path-style addressing, which most S3-compatible
// stores need, is REKEY_S3_PATH_STYLE=1.
//
// Any of the non-secret settings can instead ride in the location, which is
// what reaches Beam workers on a remote runner (they do not share the
// launcher's environment, but they do get the job's locations):
//
//	s3://bucket/prefix?endpoint=http://127.0.0.1:7070&path_style=true&region=us-east-1&profile=prod
//
// A parameter overrides the environment. Credentials are never accepted in
// a location; they come from the worker's own credential chain.
//
// Reads are ranged GETs with a small read-ahead cache, writes are a single
// PUT up to 8 MiB and a multipart upload above (see providers/objstore).
// The SDK's own retryer is off: objstore retries transient errors (503
// SlowDown, throttling, 5xx, dropped connections) with backoff and jitter,
// including a connection dropped in the middle of a body, which the SDK
// cannot retry.
//
// Limits: request checksums are sent only where S3 requires them (many
// S3-compatible stores reject the SDK's newer default trailers), so
// integrity rests on SigV4's payload hash over plain HTTP and on TLS
// otherwise; keys cannot contain '?'; S3 Express directory buckets and
// SSE-C are not supported.
package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"rekey/providers/objstore"
	"rekey/providers/storage"
)

// Scheme is the URI scheme this package registers.
const Scheme = "s3"

// Params are the location parameters s3:// accepts.
var Params = []string{"endpoint", "region", "profile", "path_style"}

func init() { storage.Register(Scheme, New(Config{})) }

// Config is a backend's defaults; a location's parameters override them,
// and the SDK's environment fills in what both leave empty.
type Config struct {
	Endpoint string
	Region   string
	Profile  string
	// PathStyle addresses buckets as endpoint/bucket rather than
	// bucket.endpoint; REKEY_S3_PATH_STYLE=1 turns it on too.
	PathStyle bool
	// Credentials replaces the default chain (tests, embedding).
	Credentials aws.CredentialsProvider
	// HTTPClient replaces the SDK's (tests count requests with it).
	HTTPClient *http.Client
	Options    objstore.Options
}

// Validate checks the fields that can be checked without a network.
func (c Config) Validate() error {
	return objstore.CheckEndpoint("s3", c.Endpoint)
}

// Hints say what to check, per kind of failure.
var Hints = map[objstore.Kind]string{
	objstore.KindDenied: "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role), " +
		"the bucket policy, the system clock, and that region and endpoint are the bucket's",
	objstore.KindNoBucket: "check the bucket name, and that the endpoint and region point at the store that holds it",
	objstore.KindNotFound: "check the key",
	objstore.KindConfig: "check the endpoint (AWS_ENDPOINT_URL_S3 or ?endpoint=), the region (AWS_REGION or ?region=) " +
		"and path-style addressing (REKEY_S3_PATH_STYLE=1 or ?path_style=true for MinIO, Ceph, versitygw)",
	objstore.KindTransient: "the store is throttling or unreachable; retried with backoff and gave up: lower --workers or try again",
}

// New returns an s3 backend with its own client cache.
func New(c Config) *objstore.Backend {
	f := &factory{cfg: c, clients: map[string]*s3.Client{}}
	return &objstore.Backend{Scheme: Scheme, Params: Params, Hints: Hints, Options: c.Options, Bucket: f.bucket}
}

type factory struct {
	cfg     Config
	mu      sync.Mutex
	clients map[string]*s3.Client
}

func (f *factory) bucket(ctx context.Context, l objstore.Location) (objstore.Bucket, error) {
	if err := f.cfg.Validate(); err != nil {
		return nil, configErr(err)
	}
	endpoint, region, profile := f.cfg.Endpoint, f.cfg.Region, f.cfg.Profile
	pathStyle := f.cfg.PathStyle
	if v, _ := strconv.ParseBool(os.Getenv("REKEY_S3_PATH_STYLE")); v {
		pathStyle = true
	}
	for k, v := range l.Params {
		switch k {
		case "endpoint":
			endpoint = v[0]
		case "region":
			region = v[0]
		case "profile":
			profile = v[0]
		case "path_style":
			b, err := strconv.ParseBool(v[0])
			if err != nil {
				return nil, configErr(fmt.Errorf("path_style=%q: want true or false", v[0]))
			}
			pathStyle = b
		}
	}
	if endpoint != "" && !strings.HasPrefix(endpoint, "http://") && !strings.HasPrefix(endpoint, "https://") {
		return nil, configErr(fmt.Errorf("endpoint %q must start with http:// or https://", endpoint))
	}
	// The SDK's default chain reads the environment: a process that
	// changes it (tests do, between servers) gets a new client.
	env := sha256.New()
	for _, k := range []string{"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
		"AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"} {
		env.Write([]byte(k + "=" + os.Getenv(k) + "\x00"))
	}
	key := strings.Join([]string{endpoint, region, profile, strconv.FormatBool(pathStyle), string(env.Sum(nil))}, "\x00")
	f.mu.Lock()
	defer f.mu.Unlock()
	if c := f.clients[key]; c != nil {
		return &bucket{c: c, name: l.Bucket}, nil
	}
	opts := []func(*config.LoadOptions) error{
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if region != "" {
		opts = append(opts, config.WithRegion(region))
	}
	if profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(profile))
	}
	if f.cfg.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(f.cfg.Credentials))
	}
	if f.cfg.HTTPClient != nil {
		opts = append(opts, config.WithHTTPClient(f.cfg.HTTPClient))
	}
	ac, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, configErr(fmt.Errorf("load AWS configuration: %w", err))
	}
	if ac.Region == "" {
		ac.Region = "us-east-1"
	}
	c := s3.NewFromConfig(ac, func(o *s3.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.UsePathStyle = pathStyle
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	f.clients[key] = c
	return &bucket{c: c, name: l.Bucket}, nil
}

func configErr(err error) error { return objstore.Classified(objstore.KindConfig, err) }

type bucket struct {
	c    *s3.Client
	name string
}

func (b *bucket) Head(ctx context.Context, key string) (int64, string, error) {
	out, err := b.c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &b.name, Key: &key})
	if err != nil {
		return 0, "", convert(err)
	}
	return aws.ToInt64(out.ContentLength), aws.ToString(out.ETag), nil
}

func (b *bucket) GetRange(ctx context.Context, key, etag string, off, n int64) (io.ReadCloser, error) {
	in := &s3.GetObjectInput{Bucket: &b.name, Key: &key, Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1))}
	if etag != "" {
		in.IfMatch = aws.String(etag)
	}
	out, err := b.c.GetObject(ctx, in)
	if err != nil {
		return nil, convert(err)
	}
	return readCloser{out.Body}, nil
}

// readCloser converts errors raised while reading the body.
type readCloser struct{ io.ReadCloser }

func (r readCloser) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		err = convert(err)
	}
	return n, err
}

func (b *bucket) Put(ctx context.Context, key string, body []byte) error {
	_, err := b.c.PutObject(ctx, &s3.PutObjectInput{Bucket: &b.name, Key: &key,
		Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body)))})
	return convert(err)
}

// PutIfAbsent implements objstore.ConditionalPutter (S3 conditional
// writes: If-None-Match: *).
func (b *bucket) PutIfAbsent(ctx context.Context, key string, body []byte) error {
	_, err := b.c.PutObject(ctx, &s3.PutObjectInput{Bucket: &b.name, Key: &key, IfNoneMatch: aws.String("*"),
		Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body)))})
	return convert(err)
}

// Delete implements objstore.Deleter.
func (b *bucket) Delete(ctx context.Context, key string) error {
	_, err := b.c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &b.name, Key: &key})
	return convert(err)
}

func (b *bucket) CreateMultipart(ctx context.Context, key string) (string, error) {
	out, err := b.c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &b.name, Key: &key})
	if err != nil {
		return "", convert(err)
	}
	return aws.ToString(out.UploadId), nil
}

func (b *bucket) UploadPart(ctx context.Context, key, id string, num int, body []byte) (string, error) {
	out, err := b.c.UploadPart(ctx, &s3.UploadPartInput{Bucket: &b.name, Key: &key, UploadId: &id,
		PartNumber: aws.Int32(int32(num)), Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body)))})
	if err != nil {
		return "", convert(err)
	}
	return aws.ToString(out.ETag), nil
}

func (b *bucket) CompleteMultipart(ctx context.Context, key, id string, parts []objstore.Part) error {
	cp := make([]types.CompletedPart, len(parts))
	for i, p := range parts {
		cp[i] = types.CompletedPart{PartNumber: aws.Int32(int32(p.Num)), ETag: aws.String(p.ETag)}
	}
	_, err := b.c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &b.name, Key: &key, UploadId: &id,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: cp}})
	return convert(err)
}

func (b *bucket) AbortMultipart(ctx context.Context, key, id string) error {
	_, err := b.c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &b.name, Key: &key, UploadId: &id})
	return convert(err)
}

func (b *bucket) List(ctx context.Context, prefix, token string, max int) ([]string, string, error) {
	in := &s3.ListObjectsV2Input{Bucket: &b.name, Prefix: &prefix, MaxKeys: aws.Int32(int32(max))}
	if token != "" {
		in.ContinuationToken = &token
	}
	out, err := b.c.ListObjectsV2(ctx, in)
	if err != nil {
		return nil, "", convert(err)
	}
	keys := make([]string, 0, len(out.Contents))
	for _, o := range out.Contents {
		keys = append(keys, aws.ToString(o.Key))
	}
	next := ""
	if aws.ToBool(out.IsTruncated) {
		next = aws.ToString(out.NextContinuationToken)
		if next == "" {
			return nil, "", fmt.Errorf("list s3://%s/%s: truncated page without a continuation token", b.name, prefix)
		}
	}
	return keys, next, nil
}

// convert reduces an SDK error to an objstore.ServiceError (status, code,
// request ID) so that no server message, which for signature errors
// echoes the string to sign and the access key ID, is ever printed.
// Errors without a server answer pass through for objstore to classify.
func convert(err error) error {
	if err == nil {
		return nil
	}
	var status interface{ HTTPStatusCode() int }
	if !errors.As(err, &status) || status.HTTPStatusCode() == 0 {
		if strings.Contains(err.Error(), "failed to retrieve credentials") || strings.Contains(err.Error(), "static credentials are empty") {
			// The SDK's message names the sources it tried, never a secret.
			return objstore.Classified(objstore.KindDenied, fmt.Errorf("no usable AWS credentials: %w", err))
		}
		return err
	}
	se := &objstore.ServiceError{Status: status.HTTPStatusCode()}
	var api smithy.APIError
	if errors.As(err, &api) {
		se.Code = api.ErrorCode()
	}
	var rid interface{ ServiceRequestID() string }
	if errors.As(err, &rid) {
		se.RequestID = rid.ServiceRequestID()
	}
	se.Kind = objstore.KindOfStatus(se.Status, se.Code)
	return se
}
