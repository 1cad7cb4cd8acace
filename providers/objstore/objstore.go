// Package objstore turns an object store's handful of bucket calls into a
// storage.Backend: ranged reads with a small read-ahead cache, multipart
// writes with bounded memory, paginated listing, retries with backoff and
// jitter, and errors that name the bucket, the key and what to check.
// providers/s3 and providers/oss implement Bucket on their SDKs; everything
// else lives here once.
//
// Locations look like scheme://bucket/prefix/key, optionally followed by
// ?name=value parameters that configure the client (endpoint, region, ...;
// each backend says which it accepts). Keys are used as written: no
// percent-decoding, so spaces, '+', '%' and unicode need no escaping.
//
// Limits: a key cannot contain '?' (it starts the parameters); an object
// larger than MaxParts x PartSize cannot be written; an upload abandoned by
// a killed worker stays as an incomplete multipart upload until a bucket
// lifecycle rule (AbortIncompleteMultipartUpload) removes it.
package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"sync"

	"rekey/providers/storage"
)

// Bucket is what a backend implements on its SDK, for one bucket. Errors
// from a server are returned as *ServiceError (so no SDK message, which may
// echo signing material, reaches a log); anything else is taken as a
// transport error.
type Bucket interface {
	// Head returns an object's size and ETag.
	Head(ctx context.Context, key string) (size int64, etag string, err error)
	// GetRange returns n bytes from off of the object version etag.
	GetRange(ctx context.Context, key, etag string, off, n int64) (io.ReadCloser, error)
	Put(ctx context.Context, key string, body []byte) error
	CreateMultipart(ctx context.Context, key string) (uploadID string, err error)
	UploadPart(ctx context.Context, key, uploadID string, num int, body []byte) (etag string, err error)
	CompleteMultipart(ctx context.Context, key, uploadID string, parts []Part) error
	AbortMultipart(ctx context.Context, key, uploadID string) error
	// List returns up to max keys under prefix after the page token
	// ("" for the first page) and the next token ("" at the end).
	List(ctx context.Context, prefix, token string, max int) (keys []string, next string, err error)
}

// Part is one uploaded part of a multipart upload.
type Part struct {
	Num  int
	ETag string
}

// Location is a parsed object-store location.
type Location struct {
	Scheme, Bucket, Key string
	Params              url.Values
}

// String prints the location without its parameters.
func (l Location) String() string {
	return l.Scheme + "://" + l.Bucket + "/" + l.Key
}

// Parse splits scheme://bucket/key?params. Only the parameter names in
// allowed are accepted, so a misspelt one, or a path joined after the
// parameters by string concatenation, is an error rather than a silent
// write somewhere else.
func Parse(scheme, loc string, allowed ...string) (Location, error) {
	rest, ok := strings.CutPrefix(loc, scheme+"://")
	if !ok {
		return Location{}, fmt.Errorf("%q is not a %s:// location", loc, scheme)
	}
	var l Location
	l.Scheme = scheme
	if i := strings.IndexByte(rest, '?'); i >= 0 {
		q, err := url.ParseQuery(rest[i+1:])
		if err != nil {
			return Location{}, fmt.Errorf("%s: bad parameters: %v", loc, err)
		}
		for k, v := range q {
			if !contains(allowed, k) {
				return Location{}, fmt.Errorf("%s: unknown parameter %q (%s:// accepts %s; credentials are never given in a location)", loc, k, scheme, strings.Join(allowed, ", "))
			}
			if len(v) != 1 {
				return Location{}, fmt.Errorf("%s: parameter %q given %d times", loc, k, len(v))
			}
			if strings.Contains(v[0], "/") && k != "endpoint" || k == "endpoint" && hasPath(v[0]) {
				return Location{}, fmt.Errorf("%s: parameter %q has a path in it (%q): paths go before the '?'; join locations with storage.Join", loc, k, v[0])
			}
		}
		l.Params = q
		rest = rest[:i]
	}
	l.Bucket, l.Key, _ = strings.Cut(rest, "/")
	if l.Bucket == "" {
		return Location{}, fmt.Errorf("%s: no bucket (write %s://bucket/prefix)", loc, scheme)
	}
	if strings.ContainsAny(l.Bucket, " \\%+") {
		return Location{}, fmt.Errorf("%s: %q is not a valid bucket name", loc, l.Bucket)
	}
	return l, nil
}

func hasPath(endpoint string) bool {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return strings.Contains(endpoint, "/")
	}
	return strings.Trim(u.Path, "/") != "" || u.RawQuery != ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Backend is a storage.Backend over a Bucket.
type Backend struct {
	Scheme string
	// Bucket returns the (cached) client for a location's bucket and
	// parameters.
	Bucket func(ctx context.Context, l Location) (Bucket, error)
	// Params are the location parameters this backend accepts.
	Params []string
	// Hints says what to check, per error kind, in this cloud's words.
	Hints map[Kind]string
	Options

	mu      sync.Mutex
	buckets map[string]bool // buckets seen to exist
}

// Options tune transfers. Zero fields take the defaults.
type Options struct {
	// PartSize is the multipart part size and the largest object written
	// with one PUT (default 8 MiB, at least 5 MiB on real stores).
	PartSize int
	// Concurrency is how many parts of one object upload at once (default
	// 4). A writer holds at most Concurrency+1 parts in memory.
	Concurrency int
	// BlockSize and Blocks size the read-ahead cache of an open object:
	// reads smaller than BlockSize fetch the aligned block around them
	// (default 1 MiB x 4 blocks per open object).
	BlockSize int
	Blocks    int
	// MaxParts caps the parts of one upload (S3 and OSS allow 10000).
	MaxParts int
	Retry    Retry
	// ListPage is the page size asked for when listing (default 1000).
	ListPage int
}

func (o *Options) defaults() Options {
	d := *o
	if d.PartSize <= 0 {
		d.PartSize = 8 << 20
	}
	if d.Concurrency <= 0 {
		d.Concurrency = 4
	}
	if d.BlockSize <= 0 {
		d.BlockSize = 1 << 20
	}
	if d.Blocks <= 0 {
		d.Blocks = 4
	}
	if d.MaxParts <= 0 {
		d.MaxParts = 10000
	}
	if d.ListPage <= 0 {
		d.ListPage = 1000
	}
	d.Retry = d.Retry.defaults()
	return d
}

func (b *Backend) resolve(ctx context.Context, op, loc string) (Location, Bucket, error) {
	l, err := Parse(b.Scheme, loc, b.Params...)
	if err != nil {
		return Location{}, nil, &Error{Op: op, Loc: loc, Kind: KindConfig, Err: err}
	}
	bk, err := b.Bucket(ctx, l)
	if err != nil {
		return l, nil, b.wrap(op, l, err)
	}
	return l, bk, nil
}

// List implements storage.Backend. An empty prefix is ErrNotFound, as a
// missing folder is on local disk.
func (b *Backend) List(ctx context.Context, root string) ([]string, error) {
	o := b.Options.defaults()
	l, bk, err := b.resolve(ctx, "list", root)
	if err != nil {
		return nil, err
	}
	prefix := l.Key
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	var out []string
	seen := 0
	token := ""
	for {
		var keys []string
		var next string
		err := o.Retry.do(ctx, func() (err error) {
			keys, next, err = bk.List(ctx, prefix, token, o.ListPage)
			return err
		})
		if err != nil {
			return nil, b.wrap("list", l, err)
		}
		seen += len(keys)
		for _, k := range keys {
			rel, ok := strings.CutPrefix(k, prefix)
			if !ok || rel == "" || strings.HasSuffix(rel, "/") || hidden(rel) {
				continue
			}
			out = append(out, rel)
		}
		if next == "" {
			break
		}
		if next == token {
			return nil, b.wrap("list", l, fmt.Errorf("server returned the same page token twice (%q)", next))
		}
		token = next
	}
	if seen == 0 {
		b.noteBucket(l.Bucket)
		return nil, &Error{Op: "list", Loc: l.String(), Bucket: l.Bucket, Key: prefix, Kind: KindNotFound,
			Hint: "nothing under this prefix: check the bucket and prefix"}
	}
	b.noteBucket(l.Bucket)
	sort.Strings(out)
	return out, nil
}

// hidden reports whether any element of a relative path starts with "." or
// "_" (temporaries, manifests), matching the local backend.
func hidden(rel string) bool {
	for _, e := range strings.Split(rel, "/") {
		if strings.HasPrefix(e, ".") || strings.HasPrefix(e, "_") {
			return true
		}
	}
	return false
}

func (b *Backend) noteBucket(name string) {
	b.mu.Lock()
	if b.buckets == nil {
		b.buckets = map[string]bool{}
	}
	b.buckets[name] = true
	b.mu.Unlock()
}

// notFound turns a HEAD 404 (which has no body, so cannot say whether the
// key or the bucket is missing) into the right error, asking the bucket
// once.
func (b *Backend) notFound(ctx context.Context, op string, l Location, bk Bucket, err error) error {
	b.mu.Lock()
	known := b.buckets[l.Bucket]
	b.mu.Unlock()
	if !known {
		o := b.Options.defaults()
		var lerr error
		_ = o.Retry.do(ctx, func() error {
			_, _, lerr = bk.List(ctx, l.Key, "", 1)
			return lerr
		})
		if k := kindOf(lerr); k == KindNoBucket {
			return b.wrap(op, l, lerr)
		}
		if lerr == nil {
			b.noteBucket(l.Bucket)
		}
	}
	return b.wrap(op, l, err)
}

// Exists implements storage.Backend. A missing bucket is an error, not
// false.
func (b *Backend) Exists(ctx context.Context, path string) (bool, error) {
	o := b.Options.defaults()
	l, bk, err := b.resolve(ctx, "exists", path)
	if err != nil {
		return false, err
	}
	err = o.Retry.do(ctx, func() (err error) {
		_, _, err = bk.Head(ctx, l.Key)
		return err
	})
	if err == nil {
		b.noteBucket(l.Bucket)
		return true, nil
	}
	if kindOf(err) == KindNotFound {
		if err := b.notFound(ctx, "exists", l, bk, err); kindOf(err) == KindNoBucket {
			return false, err
		}
		return false, nil
	}
	return false, b.wrap("exists", l, err)
}

// Open implements storage.Backend.
func (b *Backend) Open(ctx context.Context, path string) (storage.File, error) {
	o := b.Options.defaults()
	l, bk, err := b.resolve(ctx, "open", path)
	if err != nil {
		return nil, err
	}
	var size int64
	var etag string
	err = o.Retry.do(ctx, func() (err error) {
		size, etag, err = bk.Head(ctx, l.Key)
		return err
	})
	if err != nil {
		if kindOf(err) == KindNotFound {
			return nil, b.notFound(ctx, "open", l, bk, err)
		}
		return nil, b.wrap("open", l, err)
	}
	b.noteBucket(l.Bucket)
	return newReader(ctx, b, l, bk, size, etag, o), nil
}

// Create implements storage.Backend. Nothing is visible under path until
// Commit; a retried bundle that writes the same path again overwrites it.
func (b *Backend) Create(ctx context.Context, path string) (storage.Writer, error) {
	o := b.Options.defaults()
	l, bk, err := b.resolve(ctx, "create", path)
	if err != nil {
		return nil, err
	}
	if l.Key == "" || strings.HasSuffix(l.Key, "/") {
		return nil, &Error{Op: "create", Loc: l.String(), Bucket: l.Bucket, Key: l.Key, Kind: KindConfig,
			Hint: "an object needs a key that does not end in '/'"}
	}
	return newWriter(ctx, b, l, bk, o), nil
}

// ConditionalPutter is a Bucket that can create an object only if the key
// is free (S3: If-None-Match: *; OSS: x-oss-forbid-overwrite). A refusal
// because the key is taken is reported as a ServiceError for which
// IsAlreadyExists is true.
type ConditionalPutter interface {
	PutIfAbsent(ctx context.Context, key string, body []byte) error
}

// Deleter is a Bucket that can delete an object (a missing key is not an
// error: S3 and OSS answer 204 for it).
type Deleter interface {
	Delete(ctx context.Context, key string) error
}

// Remove implements storage.Remover.
func (b *Backend) Remove(ctx context.Context, path string) error {
	o := b.Options.defaults()
	l, bk, err := b.resolve(ctx, "remove", path)
	if err != nil {
		return err
	}
	d, ok := bk.(Deleter)
	if !ok {
		return &Error{Op: "remove", Loc: l.String(), Bucket: l.Bucket, Key: l.Key, Kind: KindConfig, Hint: "this store cannot delete objects"}
	}
	return b.wrap("remove", l, o.Retry.do(ctx, func() error { return d.Delete(ctx, l.Key) }))
}

// IsAlreadyExists reports a conditional PUT refused because the key exists
// (S3: 412 PreconditionFailed; OSS: 409 FileAlreadyExists).
func IsAlreadyExists(err error) bool {
	var se *ServiceError
	return errors.As(err, &se) && (se.Status == 412 || se.Code == "PreconditionFailed" || se.Code == "FileAlreadyExists")
}

// CreateExclusive implements storage.ExclusiveCreator.
func (b *Backend) CreateExclusive(ctx context.Context, path string, body []byte) error {
	o := b.Options.defaults()
	l, bk, err := b.resolve(ctx, "create", path)
	if err != nil {
		return err
	}
	cp, ok := bk.(ConditionalPutter)
	if !ok {
		return &Error{Op: "create", Loc: l.String(), Bucket: l.Bucket, Key: l.Key, Kind: KindConfig,
			Hint: "this store cannot create an object only if it is absent, so rekey cannot take a lease on it"}
	}
	err = o.Retry.do(ctx, func() error { return cp.PutIfAbsent(ctx, l.Key, body) })
	if IsAlreadyExists(err) {
		return fmt.Errorf("create %s: %w", l, storage.ErrExists)
	}
	return b.wrap("create", l, err)
}

// Check reports whether a location is reachable and, with write, whether
// an object can be created under it. The write check starts and aborts a
// multipart upload, so nothing becomes visible.
func (b *Backend) Check(ctx context.Context, loc string, write bool) error {
	o := b.Options.defaults()
	l, bk, err := b.resolve(ctx, "check", loc)
	if err != nil {
		return err
	}
	err = o.Retry.do(ctx, func() error {
		_, _, err := bk.List(ctx, l.Key, "", 1)
		return err
	})
	if err != nil {
		return b.wrap("check", l, err)
	}
	b.noteBucket(l.Bucket)
	if !write {
		return nil
	}
	probe := strings.TrimSuffix(l.Key, "/")
	if probe != "" {
		probe += "/"
	}
	probe += "_rekey-write-check"
	pl := l
	pl.Key = probe
	var id string
	err = o.Retry.do(ctx, func() (err error) {
		id, err = bk.CreateMultipart(ctx, probe)
		return err
	})
	if err != nil {
		return b.wrap("check write", pl, err)
	}
	if err := o.Retry.do(ctx, func() error { return bk.AbortMultipart(ctx, probe, id) }); err != nil && kindOf(err) != KindNotFound {
		return b.wrap("check write", pl, err)
	}
	return nil
}

// wrap attaches operation, location and hint to an error from a Bucket.
func (b *Backend) wrap(op string, l Location, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	e = &Error{Op: op, Loc: l.String(), Bucket: l.Bucket, Key: l.Key, Kind: kindOf(err), Err: err}
	var se *ServiceError
	if errors.As(err, &se) {
		e.Status, e.Code, e.RequestID = se.Status, se.Code, se.RequestID
		e.Err = nil
	}
	e.Hint = b.Hints[e.Kind]
	return e
}

var _ storage.Backend = (*Backend)(nil)

// ctxErr is the context's error if it is done.
func ctxErr(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	default:
		return nil
	}
}

// CheckEndpoint checks a backend's configured endpoint ("" is the default).
func CheckEndpoint(backend, endpoint string) error {
	if endpoint != "" && !strings.HasPrefix(endpoint, "http://") && !strings.HasPrefix(endpoint, "https://") {
		return fmt.Errorf("%s config: Endpoint %q must start with http:// or https://", backend, endpoint)
	}
	return nil
}
