package testserver

import (
	"bytes"
	"encoding/xml"
	"hash/crc64"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// OSSFake starts gofakes3 behind a translating handler so the OSS SDK can
// talk to it. It is a FAKE: no OSS server runs locally, OSS's V4 signature
// is not checked, and only what rekey uses is translated:
//   - request headers x-oss-* become x-amz-* (x-oss-range-behavior, which
//     S3 always behaves as, is dropped);
//   - response headers x-amz-* become x-oss-*, and PUTs answer with the
//     x-oss-hash-crc64ecma of the bytes received, which the SDK checks;
//   - x-oss-forbid-overwrite: true becomes If-None-Match: *, and the
//     412 that gofakes3 answers when the key exists becomes OSS's 409
//     FileAlreadyExists;
//   - listings asked for with encoding-type=url get their keys, prefixes
//     and page tokens URL-encoded, as OSS does (gofakes3 ignores the
//     parameter, and the SDK would otherwise decode '+' and '%' in keys).
func OSSFake(t testing.TB, buckets ...string) *S3 {
	t.Helper()
	return GoFakeS3(t, ossAdapter, buckets...)
}

var crcTable = crc64.MakeTable(crc64.ECMA)

func ossAdapter(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		forbid := strings.EqualFold(r.Header.Get("X-Oss-Forbid-Overwrite"), "true")
		r.Header.Del("X-Oss-Forbid-Overwrite")
		if forbid {
			r.Header.Set("If-None-Match", "*")
		}
		for k, v := range r.Header {
			lk := strings.ToLower(k)
			if rest, ok := strings.CutPrefix(lk, "x-oss-"); ok {
				delete(r.Header, k)
				if rest != "range-behavior" {
					r.Header["X-Amz-"+http.CanonicalHeaderKey(rest)] = v
				}
			}
		}
		var crc string
		if r.Method == http.MethodPut && r.Body != nil {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			crc = strconv.FormatUint(crc64.Checksum(body, crcTable), 10)
		}
		encode := r.URL.Query().Get("encoding-type") == "url"
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			if rest, ok := strings.CutPrefix(strings.ToLower(k), "x-amz-"); ok {
				k = "X-Oss-" + http.CanonicalHeaderKey(rest)
			}
			w.Header()[k] = v
		}
		body := rec.Body.Bytes()
		if forbid && rec.Code == http.StatusPreconditionFailed {
			body = []byte(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>FileAlreadyExists</Code><Message>The object you specified already exists and can not be overwritten.</Message><RequestId>fake</RequestId></Error>`)
			w.Header().Set("Content-Type", "application/xml")
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			rec.Code = http.StatusConflict
		}
		if crc != "" && rec.Code == http.StatusOK {
			w.Header().Set("X-Oss-Hash-Crc64ecma", crc)
		}
		if encode && rec.Code == http.StatusOK {
			body = encodeListing(body)
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		w.WriteHeader(rec.Code)
		w.Write(body)
	})
}

var listField = regexp.MustCompile(`<(Key|Prefix|StartAfter|Delimiter|NextContinuationToken|ContinuationToken)>([^<]*)</(Key|Prefix|StartAfter|Delimiter|NextContinuationToken|ContinuationToken)>`)

func encodeListing(b []byte) []byte {
	return listField.ReplaceAllFunc(b, func(m []byte) []byte {
		g := listField.FindSubmatch(m)
		var s string
		if err := xml.Unmarshal([]byte("<x>"+string(g[2])+"</x>"), &s); err != nil {
			return m
		}
		var out bytes.Buffer
		out.WriteString("<" + string(g[1]) + ">")
		xml.EscapeText(&out, []byte(url.QueryEscape(s)))
		out.WriteString("</" + string(g[3]) + ">")
		return out.Bytes()
	})
}
