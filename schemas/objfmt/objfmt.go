// Package objfmt reads and writes the object metadata of client-side
// encryption libraries: the S3 Encryption Client (x-amz-key-v2 and the v3
// client's compressed names) and Alibaba OSS client-side encryption
// (client-side-encryption-*). An object's wrapped content key lives in its
// user metadata; the body is the library's ciphertext. Pure code without
// I/O: metadata in, metadata out (docs/FORMAT.md section 7).
package objfmt

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Library names.
const (
	S3EC = "s3ec" // the S3 Encryption Client (Java v2, Go v3, ...)
	OSS  = "oss"  // aliyun-oss-go-sdk oss/crypto
)

// Algorithms, as the libraries spell them.
const (
	GCM       = "AES/GCM/NoPadding"
	CBC       = "AES/CBC/PKCS5Padding"
	CTR       = "AES/CTR/NoPadding"
	Committed = "115" // S3EC v3 key-committing AES-GCM (HKDF-derived key)

	WrapKMSContext = "kms+context"
	WrapKMS        = "kms"
	WrapAESGCM     = "AES/GCM"
	WrapRSAOAEP    = "RSA-OAEP-SHA1"
	WrapRSAPKCS1   = "RSA/NONE/PKCS1Padding" // OSS
	WrapAliKMS     = "KMS/ALICLOUD"          // OSS
)

// Errors. ErrNotEncrypted is an object without any library's metadata.
var (
	ErrNotEncrypted = errors.New("object has no client-side encryption metadata (not encrypted by a library rekey reads)")
	ErrMetadata     = errors.New("client-side encryption metadata is malformed")
	ErrUnsupported  = errors.New("client-side encryption algorithm not supported")
	ErrInstruction  = errors.New("the wrapped key is in an instruction file")
)

// maxWrapped caps a wrapped key (an RSA-4096 wrap is 512 bytes; KMS
// ciphertexts 150-250).
const maxWrapped = 4096

// Envelope is what an object's metadata says about its encryption.
type Envelope struct {
	Library string // S3EC or OSS
	Version string // S3EC: "v2" (x-amz-key-v2) or "v3" (compressed names); OSS: ""
	WrapAlg string
	CEKAlg  string
	Key     []byte // the wrapped content key
	// IV is the content IV (S3EC); OSS wraps its IV like the key:
	// WrappedIV.
	IV        []byte
	WrappedIV []byte
	// Context is the KMS encryption context the key is bound to (S3EC
	// kms+context: the material description), nil for none.
	Context map[string]string
	MatDesc string // the material description as stored (JSON)
	TagLen  int    // bits (S3EC GCM), 0 for none
	// PlainLen is the unencrypted length (-1: not recorded); PlainMD5 the
	// unencrypted MD5 (OSS, when the writer recorded it), nil when not.
	PlainLen int64
	PlainMD5 []byte

	keyField string // the metadata key holding Key
}

// Describe is the envelope in one line (no key material).
func (e *Envelope) Describe() string {
	s := fmt.Sprintf("%s%s wrap=%s content=%s", e.Library, map[bool]string{true: " " + e.Version, false: ""}[e.Version != ""], e.WrapAlg, e.CEKAlg)
	if e.MatDesc != "" {
		s += " matdesc=" + e.MatDesc
	}
	return s
}

func b64(meta map[string]string, k string) ([]byte, error) {
	v, ok := meta[k]
	if !ok {
		return nil, fmt.Errorf("%w: %s missing", ErrMetadata, k)
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not base64", ErrMetadata, k)
	}
	return b, nil
}

// Parse reads the envelope from an object's user metadata (keys lower case,
// without x-amz-meta- or x-oss-meta-).
func Parse(meta map[string]string) (*Envelope, error) {
	_, v2 := meta["x-amz-key-v2"]
	_, v3 := meta["x-amz-3"]
	_, v1 := meta["x-amz-key"]
	_, oss := meta["client-side-encryption-key"]
	switch n := btoi(v2) + btoi(v3) + btoi(v1) + btoi(oss); {
	case n > 1:
		return nil, fmt.Errorf("%w: metadata of more than one format (x-amz-key-v2, x-amz-3, x-amz-key, client-side-encryption-key)", ErrMetadata)
	case v2:
		return parseS3EC(meta, "v2")
	case v3:
		return parseS3EC(meta, "v3")
	case v1:
		return nil, fmt.Errorf("%w: S3 Encryption Client v1 metadata (x-amz-key, AES/CBC content): re-encrypt it with the library first", ErrUnsupported)
	case oss:
		return parseOSS(meta)
	}
	if _, ok := meta["x-amz-iv"]; ok {
		return nil, ErrInstruction
	}
	return nil, ErrNotEncrypted
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

var v3Wraps = map[string]string{"02": WrapAESGCM, "12": WrapKMSContext, "22": WrapRSAOAEP}

func parseS3EC(meta map[string]string, version string) (*Envelope, error) {
	e := &Envelope{Library: S3EC, Version: version, PlainLen: -1}
	var err error
	if version == "v2" {
		e.keyField = "x-amz-key-v2"
		e.WrapAlg, e.CEKAlg, e.MatDesc = meta["x-amz-wrap-alg"], meta["x-amz-cek-alg"], meta["x-amz-matdesc"]
		if e.IV, err = b64(meta, "x-amz-iv"); err != nil {
			return nil, err
		}
		if t := meta["x-amz-tag-len"]; t != "" {
			if e.TagLen, err = strconv.Atoi(t); err != nil || e.TagLen != 128 {
				return nil, fmt.Errorf("%w: x-amz-tag-len %q (the libraries write 128)", ErrMetadata, t)
			}
		}
	} else {
		e.keyField = "x-amz-3"
		e.CEKAlg, e.MatDesc = meta["x-amz-c"], meta["x-amz-m"]
		w, ok := v3Wraps[meta["x-amz-w"]]
		if !ok {
			return nil, fmt.Errorf("%w: x-amz-w %q is not 02 (AES/GCM), 12 (kms+context) or 22 (RSA-OAEP-SHA1)", ErrUnsupported, meta["x-amz-w"])
		}
		e.WrapAlg = w
		if t := meta["x-amz-t"]; t != "" && w == WrapKMSContext {
			e.MatDesc = t // v3 keeps the KMS encryption context apart
		}
		for _, k := range []string{"x-amz-d", "x-amz-i"} {
			if _, err := b64(meta, k); err != nil {
				return nil, err
			}
		}
	}
	if e.Key, err = b64(meta, e.keyField); err != nil {
		return nil, err
	}
	if len(e.Key) == 0 || len(e.Key) > maxWrapped {
		return nil, fmt.Errorf("%w: the wrapped key in %s is %d bytes", ErrMetadata, e.keyField, len(e.Key))
	}
	if l := meta["x-amz-unencrypted-content-length"]; l != "" {
		if e.PlainLen, err = strconv.ParseInt(l, 10, 64); err != nil || e.PlainLen < 0 {
			return nil, fmt.Errorf("%w: x-amz-unencrypted-content-length %q", ErrMetadata, l)
		}
	}
	switch e.CEKAlg {
	case GCM:
		if version == "v2" && len(e.IV) != 12 {
			return nil, fmt.Errorf("%w: x-amz-iv is %d bytes, AES-GCM takes 12", ErrMetadata, len(e.IV))
		}
	case Committed:
	case CBC:
		return nil, fmt.Errorf("%w: content %s (unauthenticated legacy mode)", ErrUnsupported, CBC)
	default:
		return nil, fmt.Errorf("%w: content algorithm %q (x-amz-cek-alg)", ErrUnsupported, e.CEKAlg)
	}
	switch e.WrapAlg {
	case WrapKMSContext, WrapKMS:
		if e.MatDesc != "" {
			if err := json.Unmarshal([]byte(e.MatDesc), &e.Context); err != nil {
				return nil, fmt.Errorf("%w: x-amz-matdesc is not a JSON object of strings", ErrMetadata)
			}
		}
		if e.WrapAlg == WrapKMSContext && e.Context[cekAlgKey] != e.CEKAlg && version == "v2" {
			return nil, fmt.Errorf("%w: kms+context material description names %s=%q, the content is %q", ErrMetadata, cekAlgKey, e.Context[cekAlgKey], e.CEKAlg)
		}
	case WrapAESGCM, WrapRSAOAEP:
		// The wrapped key is opaque here: any custodian holding that key
		// unwraps and wraps it (rewrap); a reencrypt needs the layout.
	default:
		return nil, fmt.Errorf("%w: wrap algorithm %q (x-amz-wrap-alg)", ErrUnsupported, e.WrapAlg)
	}
	return e, nil
}

// cekAlgKey is the encryption-context entry kms+context adds.
const cekAlgKey = "aws:x-amz-cek-alg"

func parseOSS(meta map[string]string) (*Envelope, error) {
	const p = "client-side-encryption-"
	e := &Envelope{Library: OSS, keyField: p + "key", WrapAlg: meta[p+"wrap-alg"], CEKAlg: meta[p+"cek-alg"], MatDesc: meta[p+"matdesc"], PlainLen: -1}
	var err error
	if e.Key, err = b64(meta, p+"key"); err != nil {
		return nil, err
	}
	if e.WrappedIV, err = b64(meta, p+"start"); err != nil {
		return nil, err
	}
	if len(e.Key) == 0 || len(e.Key) > maxWrapped || len(e.WrappedIV) == 0 || len(e.WrappedIV) > maxWrapped {
		return nil, fmt.Errorf("%w: wrapped key %d bytes, wrapped IV %d bytes", ErrMetadata, len(e.Key), len(e.WrappedIV))
	}
	if e.CEKAlg != CTR {
		return nil, fmt.Errorf("%w: content algorithm %q (client-side-encryption-cek-alg); OSS writes %s", ErrUnsupported, e.CEKAlg, CTR)
	}
	if e.WrapAlg != WrapRSAPKCS1 && e.WrapAlg != WrapAliKMS {
		return nil, fmt.Errorf("%w: wrap algorithm %q (client-side-encryption-wrap-alg); OSS writes %s or %s", ErrUnsupported, e.WrapAlg, WrapRSAPKCS1, WrapAliKMS)
	}
	if l := meta[p+"unencrypted-content-length"]; l != "" {
		if e.PlainLen, err = strconv.ParseInt(l, 10, 64); err != nil || e.PlainLen < 0 {
			return nil, fmt.Errorf("%w: %sunencrypted-content-length %q", ErrMetadata, p, l)
		}
	}
	if m := meta[p+"unencrypted-content-md5"]; m != "" {
		if e.PlainMD5, err = base64.StdEncoding.DecodeString(m); err != nil || len(e.PlainMD5) != 16 {
			return nil, fmt.Errorf("%w: %sunencrypted-content-md5 %q is not a base64 MD5", ErrMetadata, p, m)
		}
	}
	if _, ok := meta[p+"data-size"]; ok {
		// Multipart uploads of the crypto bucket: the parts were encrypted
		// with the counter at each part's offset, i.e. one stream.
		if ps := meta[p+"part-size"]; ps != "" {
			if n, err := strconv.ParseInt(ps, 10, 64); err != nil || n%16 != 0 {
				return nil, fmt.Errorf("%w: %spart-size %q is not a multiple of 16", ErrMetadata, p, ps)
			}
		}
	}
	return e, nil
}

// Rewrapped is meta with the envelope's wrapped key (and, for OSS, wrapped
// IV) replaced; every other entry as it was but, for OSS, the wrap
// algorithm and material description when wrapAlg and matDesc are set
// (the reader picks its master key by the material description).
func (e *Envelope) Rewrapped(meta map[string]string, key, wrappedIV []byte, wrapAlg, matDesc string) (map[string]string, error) {
	if len(key) == 0 || len(key) > maxWrapped {
		return nil, fmt.Errorf("the new wrapped key is %d bytes", len(key))
	}
	out := make(map[string]string, len(meta))
	for k, v := range meta {
		out[k] = v
	}
	out[e.keyField] = base64.StdEncoding.EncodeToString(key)
	if e.Library == OSS {
		if len(wrappedIV) == 0 || len(wrappedIV) > maxWrapped {
			return nil, fmt.Errorf("the new wrapped IV is %d bytes", len(wrappedIV))
		}
		out["client-side-encryption-start"] = base64.StdEncoding.EncodeToString(wrappedIV)
		if wrapAlg != "" {
			out["client-side-encryption-wrap-alg"] = wrapAlg
		}
		if matDesc != "" {
			out["client-side-encryption-matdesc"] = matDesc
		}
	}
	return out, nil
}

// S3ECMeta is the metadata the Go S3 Encryption Client v3 writes for an
// object sealed with AES-GCM under a kms+context key: the key wrapped with
// ctx (which must hold aws:x-amz-cek-alg), a 12-byte IV and the plaintext
// length.
func S3ECMeta(key, iv []byte, ctx map[string]string, plainLen int64) (map[string]string, error) {
	if ctx[cekAlgKey] != GCM {
		return nil, fmt.Errorf("kms+context needs %s=%s in the encryption context", cekAlgKey, GCM)
	}
	md, err := json.Marshal(ctx)
	if err != nil {
		return nil, err
	}
	return map[string]string{
		"x-amz-key-v2": base64.StdEncoding.EncodeToString(key), "x-amz-iv": base64.StdEncoding.EncodeToString(iv),
		"x-amz-matdesc": string(md), "x-amz-wrap-alg": WrapKMSContext, "x-amz-cek-alg": GCM, "x-amz-tag-len": "128",
		"x-amz-unencrypted-content-length": strconv.FormatInt(plainLen, 10),
	}, nil
}

// S3ECContext is the encryption context kms+context binds a new key to:
// the source's entries (the application's) with the content algorithm.
func S3ECContext(src map[string]string) map[string]string {
	out := map[string]string{cekAlgKey: GCM}
	for k, v := range src {
		if k != cekAlgKey {
			out[k] = v
		}
	}
	return out
}

// OSSMeta is the metadata oss/crypto writes: the key and IV, each wrapped,
// the algorithms, the material description, and the plaintext's length
// and MD5 when known (md5 nil: not recorded).
func OSSMeta(key, wrappedIV []byte, wrapAlg, matDesc string, plainLen int64, md5 []byte) map[string]string {
	const p = "client-side-encryption-"
	m := map[string]string{p + "key": base64.StdEncoding.EncodeToString(key), p + "start": base64.StdEncoding.EncodeToString(wrappedIV),
		p + "cek-alg": CTR, p + "wrap-alg": wrapAlg}
	if matDesc != "" {
		m[p+"matdesc"] = matDesc
	}
	if plainLen >= 0 {
		m[p+"unencrypted-content-length"] = strconv.FormatInt(plainLen, 10)
	}
	if md5 != nil {
		m[p+"unencrypted-content-md5"] = base64.StdEncoding.EncodeToString(md5)
	}
	return m
}

// KeyFields lists the metadata entries an envelope's keys live in, for
// messages.
func (e *Envelope) KeyFields() string {
	f := []string{e.keyField}
	if e.Library == OSS {
		f = append(f, "client-side-encryption-start")
	}
	sort.Strings(f)
	return strings.Join(f, ", ")
}

// Job-level format names (source.format of an object job).
const (
	FormatS3EC = "s3ec"    // S3 Encryption Client objects
	FormatOSS  = "oss-cse" // OSS client-side encryption objects
)

// Known reports whether name is an object format.
func Known(name string) bool { return name == FormatS3EC || name == FormatOSS }

// LibraryOf is the library of a job-level format name.
func LibraryOf(name string) string {
	if name == FormatOSS {
		return OSS
	}
	return S3EC
}

// Options are an object job's format options.
type Options struct {
	// Unencrypted says what an object without encryption metadata
	// becomes: "fail" (a failed row, the default) or "skip".
	Unencrypted string
	// MatDesc is the material description new OSS objects get (reencrypt;
	// default: the source object's).
	MatDesc string
}

// ParseOptions reads an object job's format_options.
func ParseOptions(format string, m map[string]string) (Options, error) {
	o := Options{Unencrypted: "fail"}
	for k, v := range m {
		switch k {
		case "unencrypted":
			if v != "fail" && v != "skip" {
				return o, fmt.Errorf("format %s: option unencrypted: %q: use fail (a failed ledger row) or skip (a skipped one)", format, v)
			}
			o.Unencrypted = v
		case "matdesc":
			if format != FormatOSS {
				return o, fmt.Errorf("format %s: option matdesc applies to oss-cse", format)
			}
			var probe map[string]string
			if err := json.Unmarshal([]byte(v), &probe); err != nil {
				return o, fmt.Errorf("format %s: option matdesc: %q is not a JSON object of strings", format, v)
			}
			o.MatDesc = v
		default:
			return o, fmt.Errorf("format %s: unknown option %s (options: unencrypted, matdesc)", format, k)
		}
	}
	return o, nil
}

// OSSSecret is the secret OSS's wrap algorithm wrapped for raw key or IV
// bytes: the bytes for RSA, their base64 text for KMS/ALICLOUD (the SDK
// sends KMS the text).
func OSSSecret(wrapAlg string, raw []byte) []byte {
	if wrapAlg == WrapAliKMS {
		return []byte(base64.StdEncoding.EncodeToString(raw))
	}
	return raw
}

// OSSRaw is the inverse of OSSSecret.
func OSSRaw(wrapAlg string, secret []byte) ([]byte, error) {
	if wrapAlg != WrapAliKMS {
		return secret, nil
	}
	b, err := base64.StdEncoding.DecodeString(string(secret))
	if err != nil {
		return nil, fmt.Errorf("the unwrapped secret is not the base64 text OSS's KMS/ALICLOUD wrap holds")
	}
	return b, nil
}
