// Package storage is the interface between rekey's pipeline and where
// datasets, DEK tables and ledgers live. A location is a plain path or a
// URI whose scheme picks a backend from a registry (object-store backends
// register themselves from providers/*).
//
// Writes are atomic: a Writer's bytes become visible under their final
// name only on Commit, so a crash never leaves a half file that looks
// complete.
//
// Limits: a URI location's "?" starts its parameters, so object keys
// cannot contain '?'; code that builds paths must use Join, not string
// concatenation, to keep the parameters at the end.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
)

// File is an open object for random-access reads (Parquet reads footers and
// column chunks by offset).
type File interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// Writer is a pending object. Nothing is visible until Commit; Abort drops
// it.
type Writer interface {
	io.Writer
	Commit() error
	Abort() error
}

// Backend is one storage system.
type Backend interface {
	// List returns every object under root, recursively, as slash-separated
	// paths relative to root, sorted. Names whose last element starts with
	// "." or "_" (temporaries, manifests) are left out.
	List(ctx context.Context, root string) ([]string, error)
	Open(ctx context.Context, path string) (File, error)
	Create(ctx context.Context, path string) (Writer, error)
	// Exists reports whether a committed object is at path.
	Exists(ctx context.Context, path string) (bool, error)
}

// ObjectInfo is an object's state in an object store.
type ObjectInfo struct {
	Size      int64
	ETag      string
	VersionID string            // "" where the bucket keeps no versions
	Meta      map[string]string // user metadata, keys lower case without x-amz-meta- / x-oss-meta-
}

// ObjectStore is a backend whose objects carry user metadata (S3, OSS):
// client-side encryption libraries keep their wrapped keys there.
type ObjectStore interface {
	StatObject(ctx context.Context, path string) (ObjectInfo, error)
	// ReplaceMeta copies the object at path onto itself with meta as its
	// user metadata (the body stays on the server), if its ETag is still
	// etag (else ErrChanged).
	ReplaceMeta(ctx context.Context, path, etag string, size int64, meta map[string]string) (ObjectInfo, error)
	// CreateObject is Create with user metadata.
	CreateObject(ctx context.Context, path string, meta map[string]string) (Writer, error)
}

// ErrChanged is returned by ReplaceMeta when the object changed since it
// was read.
var ErrChanged = errors.New("the object changed since it was read")

// Objects returns the ObjectStore of loc's backend, or an error naming
// the scheme when it keeps no object metadata.
func Objects(loc string) (ObjectStore, error) {
	b, err := For(loc)
	if err != nil {
		return nil, err
	}
	o, ok := b.(ObjectStore)
	if !ok {
		return nil, fmt.Errorf("%s: objects with client-side encryption metadata live in an object store (s3://, oss://); this location keeps no object metadata", loc)
	}
	return o, nil
}

// ErrNotFound is returned when an object or root does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned by CreateExclusive when an object is already at the
// path.
var ErrExists = errors.New("already exists")

var (
	mu       sync.RWMutex
	backends = map[string]Backend{}
)

// Register adds a backend for a scheme ("" is plain paths). It panics on a
// duplicate.
func Register(scheme string, b Backend) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := backends[scheme]; dup {
		panic(fmt.Sprintf("storage: backend for scheme %q registered twice", scheme))
	}
	backends[scheme] = b
}

// Scheme returns the scheme of a location ("" for plain paths).
func Scheme(loc string) string {
	if i := strings.Index(loc, "://"); i > 0 {
		return loc[:i]
	}
	return ""
}

// For returns the backend for a location.
func For(loc string) (Backend, error) {
	s := Scheme(loc)
	mu.RLock()
	b := backends[s]
	mu.RUnlock()
	if b == nil {
		var have []string
		mu.RLock()
		for k := range backends {
			if k == "" {
				k = "(plain paths)"
			}
			have = append(have, k)
		}
		mu.RUnlock()
		sort.Strings(have)
		return nil, fmt.Errorf("no storage backend for %q (scheme %q; registered: %s): this rekey is built without it (a main package must import rekey/providers/%s)", loc, s, strings.Join(have, ", "), s)
	}
	return b, nil
}

// Join appends a relative slash path to a location. A URI's ?parameters
// (client settings such as an endpoint) stay at the end.
func Join(loc, rel string) string {
	if rel == "" {
		return loc
	}
	base, query := SplitQuery(loc)
	return strings.TrimRight(base, "/") + "/" + strings.TrimLeft(rel, "/") + query
}

// SplitQuery splits a URI location into its path and its "?parameters"
// (with the '?'; "" if none). Plain paths have no parameters: a '?' in a
// file name is part of the name.
func SplitQuery(loc string) (base, query string) {
	if Scheme(loc) == "" {
		return loc, ""
	}
	if i := strings.IndexByte(loc, '?'); i >= 0 {
		return loc[:i], loc[i:]
	}
	return loc, ""
}

// List lists a location with its backend.
func List(ctx context.Context, root string) ([]string, error) {
	b, err := For(root)
	if err != nil {
		return nil, err
	}
	return b.List(ctx, root)
}

// Open opens a location with its backend.
func Open(ctx context.Context, path string) (File, error) {
	b, err := For(path)
	if err != nil {
		return nil, err
	}
	return b.Open(ctx, path)
}

// Create starts an atomic write to a location.
func Create(ctx context.Context, path string) (Writer, error) {
	b, err := For(path)
	if err != nil {
		return nil, err
	}
	return b.Create(ctx, path)
}

// Exists reports whether a location holds a committed object.
func Exists(ctx context.Context, path string) (bool, error) {
	b, err := For(path)
	if err != nil {
		return false, err
	}
	return b.Exists(ctx, path)
}

// Checker is implemented by backends that can check a location before a
// run: reachable, readable, and (write) writable, without making anything
// visible.
type Checker interface {
	Check(ctx context.Context, loc string, write bool) error
}

// Check checks loc with its backend, if the backend can.
func Check(ctx context.Context, loc string, write bool) error {
	b, err := For(loc)
	if err != nil {
		return err
	}
	if c, ok := b.(Checker); ok {
		return c.Check(ctx, loc, write)
	}
	return nil
}

// TempCleaner is implemented by backends whose pending writes leave files
// behind when a process is killed (local folders: hidden temporaries that
// a commit renames into place). Object stores' pending writes are multipart
// uploads, which a bucket lifecycle rule removes.
type TempCleaner interface {
	// CleanTemps removes rekey's pending-write temporaries under root and
	// says how many it removed. Call it only while no live writer can be
	// writing under root (the run holds the target's lease).
	CleanTemps(ctx context.Context, root string) (int, error)
}

// CleanTemps removes rekey's temporaries under root, where its backend
// leaves any.
func CleanTemps(ctx context.Context, root string) (int, error) {
	b, err := For(root)
	if err != nil {
		return 0, err
	}
	if c, ok := b.(TempCleaner); ok {
		return c.CleanTemps(ctx, root)
	}
	return 0, nil
}

// Remover is implemented by backends that can delete an object; removing
// a missing object is not an error.
type Remover interface {
	Remove(ctx context.Context, path string) error
}

// Remove deletes the object at path (nothing there is fine). A backend
// that cannot delete says so.
func Remove(ctx context.Context, path string) error {
	b, err := For(path)
	if err != nil {
		return err
	}
	r, ok := b.(Remover)
	if !ok {
		return fmt.Errorf("remove %s: the %q storage backend cannot delete objects", path, Scheme(path))
	}
	return r.Remove(ctx, path)
}

// ExclusiveCreator is implemented by backends that can create a small
// object only if nothing is at its path, atomically (local files:
// create-exclusive; S3: a conditional PUT with If-None-Match: *; OSS:
// x-oss-forbid-overwrite). Leases are built on it.
type ExclusiveCreator interface {
	// CreateExclusive writes body at path, or returns an error wrapping
	// ErrExists when an object is already there.
	CreateExclusive(ctx context.Context, path string, body []byte) error
}

// CreateExclusive writes body at path unless an object is there (then the
// error wraps ErrExists). Backends that cannot do this atomically say so.
func CreateExclusive(ctx context.Context, path string, body []byte) error {
	b, err := For(path)
	if err != nil {
		return err
	}
	c, ok := b.(ExclusiveCreator)
	if !ok {
		return fmt.Errorf("create %s: the %q storage backend cannot create an object exclusively, so rekey cannot take a lease there", path, Scheme(path))
	}
	return c.CreateExclusive(ctx, path, body)
}

// Put writes a small object at path in one atomic write.
func Put(ctx context.Context, path string, body []byte) error {
	w, err := Create(ctx, path)
	if err != nil {
		return err
	}
	if _, err := w.Write(body); err != nil {
		_ = w.Abort()
		return err
	}
	return w.Commit()
}

// ReadAll reads a whole (small) object.
func ReadAll(ctx context.Context, path string, limit int64) ([]byte, error) {
	f, err := Open(ctx, path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if f.Size() > limit {
		return nil, fmt.Errorf("read %s: %d bytes, over the %d-byte limit for this kind of file", path, f.Size(), limit)
	}
	b := make([]byte, f.Size())
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}
