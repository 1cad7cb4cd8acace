package objstore

import (
	"context"
	"errors"
	"strings"

	"rekey/providers/storage"
)

// MetaBucket is a Bucket whose objects carry user metadata (S3's
// x-amz-meta-*, OSS's x-oss-meta-*): what client-side encryption libraries
// keep their wrapped keys in. Metadata keys are lower case, without the
// store's prefix.
type MetaBucket interface {
	Stat(ctx context.Context, key string) (storage.ObjectInfo, error)
	// ReplaceMeta copies the object onto itself (server-side: the body is
	// not read by the caller) with meta as its user metadata, only if its
	// ETag is still etag, and returns its new state.
	ReplaceMeta(ctx context.Context, key, etag string, size int64, meta map[string]string) (storage.ObjectInfo, error)
	PutMeta(ctx context.Context, key string, body []byte, meta map[string]string) error
	CreateMultipartMeta(ctx context.Context, key string, meta map[string]string) (uploadID string, err error)
}

func (b *Backend) metaBucket(ctx context.Context, op, path string) (Location, MetaBucket, error) {
	l, bk, err := b.resolve(ctx, op, path)
	if err != nil {
		return l, nil, err
	}
	mb, ok := bk.(MetaBucket)
	if !ok {
		return l, nil, &Error{Op: op, Loc: l.String(), Bucket: l.Bucket, Key: l.Key, Kind: KindConfig, Hint: "this store keeps no object metadata"}
	}
	return l, mb, nil
}

// StatObject implements storage.ObjectStore.
func (b *Backend) StatObject(ctx context.Context, path string) (storage.ObjectInfo, error) {
	o := b.Options.defaults()
	l, mb, err := b.metaBucket(ctx, "stat", path)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	var info storage.ObjectInfo
	err = o.Retry.do(ctx, func() (err error) {
		info, err = mb.Stat(ctx, l.Key)
		return err
	})
	if err != nil {
		if kindOf(err) == KindNotFound {
			return info, b.notFound(ctx, "stat", l, mb.(Bucket), err)
		}
		return info, b.wrap("stat", l, err)
	}
	return info, nil
}

// ReplaceMeta implements storage.ObjectStore. A store that refuses because
// the ETag changed answers 412: storage.ErrChanged.
func (b *Backend) ReplaceMeta(ctx context.Context, path, etag string, size int64, meta map[string]string) (storage.ObjectInfo, error) {
	o := b.Options.defaults()
	l, mb, err := b.metaBucket(ctx, "replace metadata of", path)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	var info storage.ObjectInfo
	err = o.Retry.do(ctx, func() (err error) {
		info, err = mb.ReplaceMeta(ctx, l.Key, etag, size, lower(meta))
		return err
	})
	var se *ServiceError
	if errors.As(err, &se) && (se.Status == 412 || se.Code == "PreconditionFailed") {
		return info, storage.ErrChanged
	}
	if err != nil {
		return info, b.wrap("replace metadata of", l, err)
	}
	return info, nil
}

// CreateObject implements storage.ObjectStore: Create, with user metadata.
func (b *Backend) CreateObject(ctx context.Context, path string, meta map[string]string) (storage.Writer, error) {
	w, err := b.Create(ctx, path)
	if err != nil {
		return nil, err
	}
	ow := w.(*writer)
	if _, ok := ow.bk.(MetaBucket); !ok {
		return nil, &Error{Op: "create", Loc: ow.l.String(), Bucket: ow.l.Bucket, Key: ow.l.Key, Kind: KindConfig, Hint: "this store keeps no object metadata"}
	}
	ow.meta = lower(meta)
	if ow.meta == nil {
		ow.meta = map[string]string{}
	}
	return ow, nil
}

func lower(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[strings.ToLower(k)] = v
	}
	return out
}
