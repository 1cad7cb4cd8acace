package hsmio_test

import (
	"bytes"
	"fmt"
	"testing"

	"rekey/hsmio"
	"rekey/providers/keys"
	"rekey/schemas"
)

// BenchmarkRewrapGCM is the HSM work of one aes-gcm to aes-gcm rewrap with
// verify, on one goroutine through the KEK methods: unwrap a 32-byte DEK
// with "src"'s kek-aes, wrap it with "dst"'s, unwrap the new wrap and
// compare. token-object uses the keys' token objects (session copies
// switched off), session-copy their session copies (the default).
//
//	go test -run '^$' -bench RewrapGCM -benchtime 3s ./hsmio
func BenchmarkRewrapGCM(b *testing.B) {
	for _, copies := range []bool{false, true} {
		name := map[bool]string{false: "token-object", true: "session-copy"}[copies]
		b.Run(name, func(b *testing.B) {
			ctx := b.Context()
			was := hsmio.SetSessionCopies(copies)
			defer hsmio.SetSessionCopies(was)
			open := func(token string) *hsmio.KEK {
				k, err := hsmio.Open(ctx, uri(token, "kek-aes"), keys.Options{Wrap: schemas.WrapAESGCM, Sessions: 1})
				if err != nil {
					b.Fatal(err)
				}
				if ko, err := hsmio.InspectKey(ctx, k); err != nil || ko.Copy != copies {
					b.Fatalf("%s: key object %+v (%v)", token, ko, err)
				}
				return k
			}
			src, dst := open("src"), open("dst")
			wrapped := make([][]byte, 256)
			for i := range wrapped {
				d, err := src.GenerateDEK(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if wrapped[i], err = src.Wrap(ctx, keys.ByID(fmt.Sprint(i)), d); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				id := keys.ByID(fmt.Sprint(i % len(wrapped)))
				dek, err := src.Unwrap(ctx, id, schemas.WrapAESGCM, wrapped[i%len(wrapped)])
				if err != nil {
					b.Fatal(err)
				}
				w, err := dst.Wrap(ctx, id, dek)
				if err != nil {
					b.Fatal(err)
				}
				back, err := dst.Unwrap(ctx, id, schemas.WrapAESGCM, w)
				if err != nil {
					b.Fatal(err)
				}
				if !bytes.Equal(back.Bytes(), dek.Bytes()) {
					b.Fatal("verify: the new wrap holds another DEK")
				}
				dek.Zero()
				back.Zero()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rewraps/s")
		})
	}
}

// BenchmarkRawRewrapGCM is BenchmarkRewrapGCM's peer: the same token calls
// per DEK through hsmio.RawGCMRewrapLoop (one goroutine, one held session
// per key, its own session copy on it), for about the benchmark's time.
//
//	go test -run '^$' -bench 'RewrapGCM' -benchtime 3s ./hsmio
func BenchmarkRawRewrapGCM(b *testing.B) {
	wrapped, ids := wrapForRawLoop(b, "kek-aes", 256)
	src, dst := uri("src", "kek-aes"), uri("dst", "kek-aes")
	var rate float64
	for b.Loop() {
		r, err := hsmio.RawGCMRewrapLoop(b.Context(), src, dst, wrapped, ids, 1, true, 0)
		if err != nil {
			b.Fatal(err)
		}
		rate = r
	}
	b.ReportMetric(rate, "rewraps/s")
}
