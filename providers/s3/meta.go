package s3

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"rekey/providers/objstore"
	"rekey/providers/storage"
)

// maxCopy is the largest object one CopyObject copies; larger ones are
// copied in parts (UploadPartCopy) of copyPart bytes.
const (
	maxCopy  = 5 << 30
	copyPart = 512 << 20
)

// Stat implements objstore.MetaBucket.
func (b *bucket) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	out, err := b.c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &b.name, Key: &key})
	if err != nil {
		return storage.ObjectInfo{}, convert(err)
	}
	return storage.ObjectInfo{Size: aws.ToInt64(out.ContentLength), ETag: aws.ToString(out.ETag),
		VersionID: aws.ToString(out.VersionId), Meta: lowerKeys(out.Metadata)}, nil
}

func lowerKeys(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[strings.ToLower(k)] = v
	}
	return out
}

// copySource is the URL-encoded x-amz-copy-source of key ('+' and spaces
// escaped, so no server reads one as the other).
func (b *bucket) copySource(key string) string {
	segs := strings.Split(key, "/")
	for i, s := range segs {
		segs[i] = strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
	}
	return b.name + "/" + strings.Join(segs, "/")
}

// ReplaceMeta implements objstore.MetaBucket: CopyObject onto itself with
// MetadataDirective REPLACE and CopySourceIfMatch; over 5 GiB, a multipart
// copy whose every part is conditional on the same ETag.
func (b *bucket) ReplaceMeta(ctx context.Context, key, etag string, size int64, meta map[string]string) (storage.ObjectInfo, error) {
	head, err := b.c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &b.name, Key: &key, IfMatch: aws.String(etag)})
	if err != nil {
		return storage.ObjectInfo{}, convert(err)
	}
	src := b.copySource(key)
	if size <= maxCopy {
		out, err := b.c.CopyObject(ctx, &s3.CopyObjectInput{Bucket: &b.name, Key: &key, CopySource: aws.String(src),
			CopySourceIfMatch: aws.String(etag), MetadataDirective: types.MetadataDirectiveReplace, Metadata: meta,
			ContentType: head.ContentType, ContentEncoding: head.ContentEncoding, CacheControl: head.CacheControl,
			ContentDisposition: head.ContentDisposition, ContentLanguage: head.ContentLanguage})
		if err != nil {
			return storage.ObjectInfo{}, convert(err)
		}
		info := storage.ObjectInfo{Size: size, VersionID: aws.ToString(out.VersionId), Meta: meta}
		if out.CopyObjectResult != nil {
			info.ETag = aws.ToString(out.CopyObjectResult.ETag)
		}
		return info, nil
	}
	up, err := b.c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &b.name, Key: &key, Metadata: meta,
		ContentType: head.ContentType, ContentEncoding: head.ContentEncoding, CacheControl: head.CacheControl,
		ContentDisposition: head.ContentDisposition, ContentLanguage: head.ContentLanguage})
	if err != nil {
		return storage.ObjectInfo{}, convert(err)
	}
	id := aws.ToString(up.UploadId)
	var parts []types.CompletedPart
	for off, n := int64(0), int32(1); off < size; off, n = off+copyPart, n+1 {
		end := min(off+copyPart, size) - 1
		out, err := b.c.UploadPartCopy(ctx, &s3.UploadPartCopyInput{Bucket: &b.name, Key: &key, UploadId: &id, PartNumber: aws.Int32(n),
			CopySource: aws.String(src), CopySourceIfMatch: aws.String(etag), CopySourceRange: aws.String(fmt.Sprintf("bytes=%d-%d", off, end))})
		if err != nil {
			_, _ = b.c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &b.name, Key: &key, UploadId: &id})
			return storage.ObjectInfo{}, convert(err)
		}
		parts = append(parts, types.CompletedPart{PartNumber: aws.Int32(n), ETag: out.CopyPartResult.ETag})
	}
	done, err := b.c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &b.name, Key: &key, UploadId: &id,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}})
	if err != nil {
		_, _ = b.c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &b.name, Key: &key, UploadId: &id})
		return storage.ObjectInfo{}, convert(err)
	}
	return storage.ObjectInfo{Size: size, ETag: aws.ToString(done.ETag), VersionID: aws.ToString(done.VersionId), Meta: meta}, nil
}

// PutMeta implements objstore.MetaBucket.
func (b *bucket) PutMeta(ctx context.Context, key string, body []byte, meta map[string]string) error {
	_, err := b.c.PutObject(ctx, &s3.PutObjectInput{Bucket: &b.name, Key: &key, Metadata: meta,
		Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body)))})
	return convert(err)
}

// CreateMultipartMeta implements objstore.MetaBucket.
func (b *bucket) CreateMultipartMeta(ctx context.Context, key string, meta map[string]string) (string, error) {
	out, err := b.c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &b.name, Key: &key, Metadata: meta})
	if err != nil {
		return "", convert(err)
	}
	return aws.ToString(out.UploadId), nil
}

var _ objstore.MetaBucket = (*bucket)(nil)
