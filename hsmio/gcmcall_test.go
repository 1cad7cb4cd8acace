package hsmio_test

// AES-GCM in one call into C (gcmcall.go): on SoftHSM2 the module's
// function list is found, its ciphertexts are the binding's (same key,
// nonce and AAD give the same bytes, and each path opens the other's), a
// tampered ciphertext is an error and the session stays usable, and a wrap
// and an unwrap make two PKCS#11 calls each (no output-size query).

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"rekey/hsmio"
	"rekey/hsmio/faultpkcs11"
	"rekey/providers/keys"
	"rekey/schemas"
)

func TestGCMOneCallMatchesBinding(t *testing.T) {
	ctx := t.Context()
	k, err := hsmio.Open(ctx, uri("src", "kek-aes"), keys.Options{Wrap: schemas.WrapAESGCM})
	if err != nil {
		t.Fatal(err)
	}
	nonce := bytes.Repeat([]byte{7}, schemas.NonceSize)
	for _, n := range []int{1, 16, 32, 64, 1000} {
		for _, aad := range [][]byte{nil, []byte("dek-1")} {
			t.Run(fmt.Sprintf("%dB-aad%d", n, len(aad)), func(t *testing.T) {
				in := bytes.Repeat([]byte{0xa5}, n)
				one, fast, slow, err := hsmio.GCMCrossCheck(ctx, k, nonce, aad, in)
				if err != nil {
					t.Fatal(err)
				}
				if !one {
					t.Fatal("SoftHSM2's function list was not found: AES-GCM goes through the binding's calls")
				}
				if !bytes.Equal(fast, slow) || len(fast) != n+schemas.TagSize {
					t.Fatalf("one-call ciphertext %x, binding's %x", fast, slow)
				}
				bad := bytes.Clone(fast)
				bad[0] ^= 1
				_, err = hsmio.GCMOpen(ctx, k, nonce, aad, bad)
				var p pkcs11.Error
				if err == nil {
					t.Fatal("a tampered ciphertext opened")
				} else if !errors.As(err, &p) {
					t.Fatalf("tampered: %v is not a PKCS#11 error", err)
				}
				// The failed operation ended: the next one on the pool's
				// sessions works.
				if pt, err := hsmio.GCMOpen(ctx, k, nonce, aad, fast); err != nil || !bytes.Equal(pt, in) {
					t.Fatalf("after a failed open: %v", err)
				}
			})
		}
	}
}

// TestGCMWrapUnwrapCalls: an aes-gcm wrap is C_EncryptInit and one
// C_Encrypt, an unwrap C_DecryptInit and one C_Decrypt (the binding's
// calls make a size query first: three per operation).
func TestGCMWrapUnwrapCalls(t *testing.T) {
	ctx := t.Context()
	log := filepath.Join(t.TempDir(), "trace.log")
	calls := []string{"C_EncryptInit", "C_Encrypt", "C_DecryptInit", "C_Decrypt"}
	k, _ := faultOpen(t, faultpkcs11.Config{Calls: calls, Mode: faultpkcs11.Trace, Rate: 1, Log: log}, "kek-aes", schemas.WrapAESGCM, 2)
	dek, err := keys.NewDEK(bytes.Repeat([]byte{1}, keys.DEKSize))
	if err != nil {
		t.Fatal(err)
	}
	before, _ := faultpkcs11.Logged(log) // what opening the key made
	w, err := k.Wrap(ctx, keys.ByID("d1"), dek)
	if err != nil {
		t.Fatal(err)
	}
	back, err := k.Unwrap(ctx, keys.ByID("d1"), schemas.WrapAESGCM, w)
	if err != nil || !bytes.Equal(back.Bytes(), dek.Bytes()) {
		t.Fatalf("round trip: %v", err)
	}
	lines, err := faultpkcs11.Logged(log)
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, l := range lines[len(before):] {
		n[strings.Fields(l)[0]]++
	}
	for _, c := range calls {
		if n[c] != 1 {
			t.Errorf("%s made %d times for one wrap and one unwrap, want 1 (all: %v)", c, n[c], n)
		}
	}
}
