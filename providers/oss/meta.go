package oss

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/aliyun/aliyun-oss-go-sdk/oss"

	"rekey/providers/objstore"
	"rekey/providers/storage"
)

const (
	maxCopy  = 5 << 30
	copyPart = 512 << 20
	metaHdr  = "X-Oss-Meta-"
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
// x-oss-metadata-directive: REPLACE and x-oss-copy-source-if-match; over
// 5 GiB a multipart copy (UploadPartCopy), each part conditional.
func (b *bucket) ReplaceMeta(ctx context.Context, key, etag string, size int64, meta map[string]string) (storage.ObjectInfo, error) {
	h, err := b.b.GetObjectDetailedMeta(key, oss.WithContext(ctx), oss.IfMatch(etag))
	if err != nil {
		return storage.ObjectInfo{}, convert(err)
	}
	keep := []oss.Option{oss.WithContext(ctx)}
	if ct := h.Get("Content-Type"); ct != "" {
		keep = append(keep, oss.ContentType(ct))
	}
	if size <= maxCopy {
		opts := append(append(keep, oss.MetadataDirective(oss.MetaReplace), oss.CopySourceIfMatch(etag)), metaOpts(meta)...)
		var hdr http.Header
		out, err := b.b.CopyObject(key, key, append(opts, oss.GetResponseHeader(&hdr))...)
		if err != nil {
			return storage.ObjectInfo{}, convert(err)
		}
		return storage.ObjectInfo{Size: size, ETag: out.ETag, VersionID: hdr.Get("X-Oss-Version-Id"), Meta: meta}, nil
	}
	imur, err := b.b.InitiateMultipartUpload(key, append(keep, metaOpts(meta)...)...)
	if err != nil {
		return storage.ObjectInfo{}, convert(err)
	}
	var parts []oss.UploadPart
	for off, n := int64(0), 1; off < size; off, n = off+copyPart, n+1 {
		p, err := b.b.UploadPartCopy(imur, b.b.BucketName, key, off, min(copyPart, size-off), n, oss.WithContext(ctx), oss.CopySourceIfMatch(etag))
		if err != nil {
			_ = b.b.AbortMultipartUpload(imur, oss.WithContext(ctx))
			return storage.ObjectInfo{}, convert(err)
		}
		parts = append(parts, p)
	}
	var hdr http.Header
	done, err := b.b.CompleteMultipartUpload(imur, parts, oss.WithContext(ctx), oss.GetResponseHeader(&hdr))
	if err != nil {
		_ = b.b.AbortMultipartUpload(imur, oss.WithContext(ctx))
		return storage.ObjectInfo{}, convert(err)
	}
	return storage.ObjectInfo{Size: size, ETag: done.ETag, VersionID: hdr.Get("X-Oss-Version-Id"), Meta: meta}, nil
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
