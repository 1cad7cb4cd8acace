package oss

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/aliyun/aliyun-oss-go-sdk/oss"

	"rekey/providers/objstore"
	"rekey/providers/storage"
)

const (
	maxCopy = 5 << 30
	metaHdr = "X-Oss-Meta-"
)

func userMeta(h http.Header) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		if len(v) > 0 && len(k) > len(metaHdr) && strings.EqualFold(k[:len(metaHdr)], metaHdr) {
			out[strings.ToLower(k[len(metaHdr):])] = v[0]
		}
	}
	return out
}

func metaOpts(meta map[string]string) []oss.Option {
	var opts []oss.Option
	for k, v := range meta {
		opts = append(opts, oss.Meta(k, v))
	}
	return opts
}

// Stat implements objstore.MetaBucket.
func (b *bucket) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	h, err := b.b.GetObjectDetailedMeta(key, oss.WithContext(ctx))
	if err != nil {
		return storage.ObjectInfo{}, convert(err)
	}
	size, _ := strconv.ParseInt(h.Get("Content-Length"), 10, 64)
	return storage.ObjectInfo{Size: size, ETag: h.Get("ETag"), VersionID: h.Get("X-Oss-Version-Id"), Meta: userMeta(h)}, nil
}

// ReplaceMeta implements objstore.MetaBucket: CopyObject onto itself with
// x-oss-metadata-directive: REPLACE and x-oss-copy-source-if-match,
// keeping the object's content headers, server-side encryption and
// storage class (not its ACL).
func (b *bucket) ReplaceMeta(ctx context.Context, key, etag string, size int64, meta map[string]string) (storage.ObjectInfo, error) {
	h, err := b.b.GetObjectDetailedMeta(key, oss.WithContext(ctx), oss.IfMatch(etag))
	if err != nil {
		return storage.ObjectInfo{}, convert(err)
	}
	keep := []oss.Option{oss.WithContext(ctx)}
	// The object's own headers survive the replace.
	for hk, opt := range map[string]func(string) oss.Option{"Content-Type": oss.ContentType, "Cache-Control": oss.CacheControl,
		"Content-Disposition": oss.ContentDisposition, "Content-Encoding": oss.ContentEncoding,
		"X-Oss-Server-Side-Encryption": oss.ServerSideEncryption, "X-Oss-Server-Side-Encryption-Key-Id": oss.ServerSideEncryptionKeyID,
		"X-Oss-Storage-Class": func(v string) oss.Option { return oss.ObjectStorageClass(oss.StorageClassType(v)) }} {
		if v := h.Get(hk); v != "" {
			keep = append(keep, opt(v))
		}
	}
	if size > maxCopy {
		return storage.ObjectInfo{}, fmt.Errorf("the object is %d bytes: rekey replaces metadata with one conditional CopyObject (up to 5 GiB here; a multipart copy could overwrite a newer write); not supported yet", size)
	}
	opts := append(append(keep, oss.MetadataDirective(oss.MetaReplace), oss.CopySourceIfMatch(etag)), metaOpts(meta)...)
	var hdr http.Header
	out, err := b.b.CopyObject(key, key, append(opts, oss.GetResponseHeader(&hdr))...)
	if err != nil {
		return storage.ObjectInfo{}, convert(err)
	}
	return storage.ObjectInfo{Size: size, ETag: out.ETag, VersionID: hdr.Get("X-Oss-Version-Id"), Meta: meta}, nil
}

// PutMeta implements objstore.MetaBucket.
func (b *bucket) PutMeta(ctx context.Context, key string, body []byte, meta map[string]string) error {
	var r io.Reader = bytes.NewReader(body)
	if len(body) == 0 {
		r = nil
	}
	return convert(b.b.PutObject(key, r, append([]oss.Option{oss.WithContext(ctx)}, metaOpts(meta)...)...))
}

// CreateMultipartMeta implements objstore.MetaBucket.
func (b *bucket) CreateMultipartMeta(ctx context.Context, key string, meta map[string]string) (string, error) {
	r, err := b.b.InitiateMultipartUpload(key, append([]oss.Option{oss.WithContext(ctx)}, metaOpts(meta)...)...)
	if err != nil {
		return "", convert(err)
	}
	return r.UploadID, nil
}

var _ objstore.MetaBucket = (*bucket)(nil)
