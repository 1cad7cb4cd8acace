//go:build ignore

// Command gen writes vectors.json: known-answer vectors for the DEK table's
// key check value (docs/FORMAT.md section 1), computed here from the
// definition with the standard library alone, not with package schemas:
//
//	kcv = first 8 bytes of HMAC-SHA256(key = DEK, message = "rekey.kcv.v1" ‖ 0x00 ‖ dek_id)
//
// DEKs come from a fixed ChaCha8 stream, so the file is the same on every run.
//
//	go run ./schemas/testdata/kcv/gen.go
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

type vector struct {
	DEK   string `json:"dek"` // hex, 32 bytes
	DEKID string `json:"dek_id"`
	KCV   string `json:"kcv"` // hex, 8 bytes
}

func main() {
	rng := mrand.NewChaCha8([32]byte{'r', 'e', 'k', 'e', 'y', ' ', 'k', 'c', 'v'})
	ids := []string{"dek-0000000", "dek-0000001", "tenant-42", "tenant-ü", "a", strings.Repeat("x", 256), "dek-0000001@run-7"}
	var out []vector
	for i, id := range ids {
		dek := make([]byte, 32)
		_, _ = rng.Read(dek)
		if i == 0 {
			dek = make([]byte, 32) // the all-zero key
		}
		m := hmac.New(sha256.New, dek)
		m.Write([]byte("rekey.kcv.v1\x00" + id))
		out = append(out, vector{DEK: hex.EncodeToString(dek), DEKID: id, KCV: hex.EncodeToString(m.Sum(nil)[:8])})
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		log.Fatal(err)
	}
	_, self, _, _ := runtime.Caller(0)
	if err := os.WriteFile(filepath.Join(filepath.Dir(self), "vectors.json"), append(b, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
}
