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

// maxCopy is the largest object one CopyObject copies.
const maxCopy = 5 << 30

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
// MetadataDirective REPLACE and CopySourceIfMatch, keeping the object's
// content headers, storage class, server-side encryption and object lock
// (tags are copied by CopyObject's default; the ACL is not: it becomes the
// bucket's default).
func (b *bucket) ReplaceMeta(ctx context.Context, key, etag string, size int64, meta map[string]string) (storage.ObjectInfo, error) {
	head, err := b.c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &b.name, Key: &key, IfMatch: aws.String(etag)})
	if err != nil {
		return storage.ObjectInfo{}, convert(err)
	}
	if size > maxCopy {
		return storage.ObjectInfo{}, errTooLarge(size)
	}
	out, err := b.c.CopyObject(ctx, &s3.CopyObjectInput{Bucket: &b.name, Key: &key, CopySource: aws.String(b.copySource(key)),
		CopySourceIfMatch: aws.String(etag), MetadataDirective: types.MetadataDirectiveReplace, Metadata: meta,
		ContentType: head.ContentType, ContentEncoding: head.ContentEncoding, CacheControl: head.CacheControl,
		ContentDisposition: head.ContentDisposition, ContentLanguage: head.ContentLanguage, Expires: head.Expires,
		WebsiteRedirectLocation: head.WebsiteRedirectLocation, StorageClass: types.StorageClass(head.StorageClass),
		ServerSideEncryption: head.ServerSideEncryption, SSEKMSKeyId: head.SSEKMSKeyId, BucketKeyEnabled: head.BucketKeyEnabled,
		ObjectLockMode: types.ObjectLockMode(head.ObjectLockMode), ObjectLockRetainUntilDate: head.ObjectLockRetainUntilDate,
		ObjectLockLegalHoldStatus: types.ObjectLockLegalHoldStatus(head.ObjectLockLegalHoldStatus)})
	if err != nil {
		return storage.ObjectInfo{}, convert(err)
	}
	info := storage.ObjectInfo{Size: size, VersionID: aws.ToString(out.VersionId), Meta: meta}
	if out.CopyObjectResult != nil {
		info.ETag = aws.ToString(out.CopyObjectResult.ETag)
	}
	return info, nil
}

// errTooLarge: a metadata replace must be one atomic, conditional copy;
// over 5 GiB S3 has only the multipart copy, whose completion would not be.
func errTooLarge(size int64) error {
	return fmt.Errorf("the object is %d bytes: rekey replaces metadata with one conditional CopyObject, which S3 allows up to 5 GiB (a multipart copy could overwrite a newer write); not supported yet", size)
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
