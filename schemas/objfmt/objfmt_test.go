package objfmt

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func s3ecV2() map[string]string {
	m, _ := S3ECMeta([]byte("wrapped-key-blob"), make([]byte, 12), map[string]string{cekAlgKey: GCM, "tenant": "acme"}, 42)
	return m
}

// Parse reads what the libraries write and refuses the rest by name.
func TestParse(t *testing.T) {
	e, err := Parse(s3ecV2())
	if err != nil || e.Library != S3EC || e.Version != "v2" || e.WrapAlg != WrapKMSContext || string(e.Key) != "wrapped-key-blob" ||
		e.Context["tenant"] != "acme" || e.PlainLen != 42 || e.TagLen != 0 && e.TagLen != 128 {
		t.Fatalf("v2: %+v, %v", e, err)
	}
	oss := OSSMeta([]byte("k"), []byte("iv"), WrapRSAPKCS1, `{"a":"b"}`, 5, make([]byte, 16))
	if e, err := Parse(oss); err != nil || e.Library != OSS || string(e.WrappedIV) != "iv" || e.PlainMD5 == nil || e.MatDesc != `{"a":"b"}` {
		t.Fatalf("oss: %+v, %v", e, err)
	}
	v3 := map[string]string{"x-amz-3": base64.StdEncoding.EncodeToString([]byte("k3")), "x-amz-w": "12", "x-amz-c": Committed,
		"x-amz-t": `{"tenant":"acme"}`, "x-amz-d": base64.StdEncoding.EncodeToString(make([]byte, 28)), "x-amz-i": base64.StdEncoding.EncodeToString(make([]byte, 28))}
	if e, err := Parse(v3); err != nil || e.Version != "v3" || e.WrapAlg != WrapKMSContext || e.Context["tenant"] != "acme" {
		t.Fatalf("v3: %+v, %v", e, err)
	}
	for name, c := range map[string]struct {
		edit func(m map[string]string)
		want error
		text string
	}{
		"not encrypted":    {func(m map[string]string) { clear(m); m["content-owner"] = "x" }, ErrNotEncrypted, "no client-side encryption metadata"},
		"instruction file": {func(m map[string]string) { delete(m, "x-amz-key-v2") }, ErrInstruction, "instruction file"},
		"unknown wrap":     {func(m map[string]string) { m["x-amz-wrap-alg"] = "AES/KW" }, ErrUnsupported, `"AES/KW"`},
		"unknown content":  {func(m map[string]string) { m["x-amz-cek-alg"] = "AES/XTS" }, ErrUnsupported, `"AES/XTS"`},
		"CBC":              {func(m map[string]string) { m["x-amz-cek-alg"] = CBC }, ErrUnsupported, CBC},
		"v1":               {func(m map[string]string) { delete(m, "x-amz-key-v2"); m["x-amz-key"] = "eA==" }, ErrUnsupported, "v1"},
		"key not base64":   {func(m map[string]string) { m["x-amz-key-v2"] = "!!" }, ErrMetadata, "x-amz-key-v2 is not base64"},
		"empty key":        {func(m map[string]string) { m["x-amz-key-v2"] = "" }, ErrMetadata, "0 bytes"},
		"short IV":         {func(m map[string]string) { m["x-amz-iv"] = "AAAA" }, ErrMetadata, "x-amz-iv is 3 bytes"},
		"tag length":       {func(m map[string]string) { m["x-amz-tag-len"] = "96" }, ErrMetadata, "tag-len"},
		"matdesc not JSON": {func(m map[string]string) { m["x-amz-matdesc"] = "{" }, ErrMetadata, "matdesc"},
		"context mismatch": {func(m map[string]string) { m["x-amz-matdesc"] = `{"aws:x-amz-cek-alg":"AES/CBC/PKCS5Padding"}` }, ErrMetadata, "material description"},
		"two formats":      {func(m map[string]string) { m["client-side-encryption-key"] = "eA==" }, ErrMetadata, "more than one"},
		"bad length":       {func(m map[string]string) { m["x-amz-unencrypted-content-length"] = "-1" }, ErrMetadata, "length"},
		"oss content":      {func(m map[string]string) { clear(m); copyInto(m, oss); m["client-side-encryption-cek-alg"] = GCM }, ErrUnsupported, "client-side-encryption-cek-alg"},
		"oss wrap": {func(m map[string]string) {
			clear(m)
			copyInto(m, oss)
			m["client-side-encryption-wrap-alg"] = "RSA/OAEP"
		}, ErrUnsupported, "RSA/OAEP"},
		"oss IV missing": {func(m map[string]string) { clear(m); copyInto(m, oss); delete(m, "client-side-encryption-start") }, ErrMetadata, "start missing"},
		"oss md5 not base64": {func(m map[string]string) {
			clear(m)
			copyInto(m, oss)
			m["client-side-encryption-unencrypted-content-md5"] = "x"
		}, ErrMetadata, "md5"},
		"v3 unknown wrap code": {func(m map[string]string) { clear(m); copyInto(m, v3); m["x-amz-w"] = "99" }, ErrUnsupported, "x-amz-w"},
	} {
		m := s3ecV2()
		c.edit(m)
		_, err := Parse(m)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
			t.Errorf("%s: %v, want %v naming %q", name, err, c.want, c.text)
		}
	}
}

func copyInto(dst, src map[string]string) {
	for k, v := range src {
		dst[k] = v
	}
}

// Rewrapped replaces the key fields only (and, for OSS, the wrap and the
// material description when asked).
func TestRewrapped(t *testing.T) {
	meta := s3ecV2()
	meta["content-owner"] = "app"
	e, _ := Parse(meta)
	out, err := e.Rewrapped(meta, []byte("new"), nil, "", "")
	if err != nil || out["x-amz-key-v2"] != base64.StdEncoding.EncodeToString([]byte("new")) || out["content-owner"] != "app" || out["x-amz-iv"] != meta["x-amz-iv"] {
		t.Fatalf("%v %v", out, err)
	}
	if meta["x-amz-key-v2"] == out["x-amz-key-v2"] {
		t.Fatal("the input map changed")
	}
	oss := OSSMeta([]byte("k"), []byte("iv"), WrapAliKMS, `{"a":"b"}`, -1, nil)
	e, _ = Parse(oss)
	out, err = e.Rewrapped(oss, []byte("k2"), []byte("iv2"), WrapRSAPKCS1, `{"a":"c"}`)
	if err != nil || out["client-side-encryption-wrap-alg"] != WrapRSAPKCS1 || out["client-side-encryption-matdesc"] != `{"a":"c"}` ||
		out["client-side-encryption-start"] != base64.StdEncoding.EncodeToString([]byte("iv2")) {
		t.Fatalf("%v %v", out, err)
	}
	if _, err := e.Rewrapped(oss, []byte("k2"), nil, "", ""); err == nil {
		t.Fatal("an OSS rewrap without a new wrapped IV was accepted")
	}
	if raw, err := OSSRaw(WrapAliKMS, OSSSecret(WrapAliKMS, []byte{1, 2, 3})); err != nil || string(raw) != "\x01\x02\x03" {
		t.Fatalf("OSS KMS secret round trip: %v %v", raw, err)
	}
}

// FuzzParse: any metadata values parse or are refused, never panic, and
// what parses rewraps.
func FuzzParse(f *testing.F) {
	m := s3ecV2()
	f.Add(m["x-amz-key-v2"], m["x-amz-iv"], m["x-amz-matdesc"], m["x-amz-wrap-alg"], m["x-amz-cek-alg"], "")
	f.Add("eA==", "eA==", `{"a":"b"}`, WrapRSAPKCS1, CTR, "oss")
	f.Fuzz(func(t *testing.T, key, iv, md, wrap, cek, lib string) {
		var meta map[string]string
		if lib == "oss" {
			meta = map[string]string{"client-side-encryption-key": key, "client-side-encryption-start": iv, "client-side-encryption-matdesc": md,
				"client-side-encryption-wrap-alg": wrap, "client-side-encryption-cek-alg": cek}
		} else {
			meta = map[string]string{"x-amz-key-v2": key, "x-amz-iv": iv, "x-amz-matdesc": md, "x-amz-wrap-alg": wrap, "x-amz-cek-alg": cek}
		}
		e, err := Parse(meta)
		if err != nil {
			return
		}
		if _, err := e.Rewrapped(meta, []byte("k"), []byte("v"), "", ""); err != nil {
			t.Fatal(err)
		}
	})
}
