package hsmio_test

// The raw PKCS#11 loop (rawloop.go), rekey-bench's peer for rewrap: it
// rewraps what hsmio's aes-gcm Wrap writes, with a session copy or the
// token object, fails cleanly on a bad wrapped key, and leaves no copy
// behind.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"rekey/hsmio"
	"rekey/hsmio/softhsm"
	"rekey/providers/keys"
	"rekey/schemas"
)

// rawLoopCopyPrefix is rawloop.go's label prefix of its session copies.
const rawLoopCopyPrefix = "rekey-rawloop-copy-"

// wrapForRawLoop wraps n fresh DEKs with hsmio's aes-gcm Wrap under key
// object on token "src".
func wrapForRawLoop(t testing.TB, object string, n int) (wrapped [][]byte, ids []string) {
	t.Helper()
	ctx := context.Background()
	k, err := hsmio.Open(ctx, uri("src", object), keys.Options{Wrap: schemas.WrapAESGCM})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		b := make([]byte, keys.DEKSize)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		dek, err := keys.NewDEK(b)
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("rawloop-%d", i)
		w, err := k.Wrap(ctx, keys.ByID(id), dek)
		if err != nil {
			t.Fatal(err)
		}
		dek.Zero()
		wrapped, ids = append(wrapped, w), append(ids, id)
	}
	return wrapped, ids
}

// rawLoopCopies counts the raw loop's session copies left on a token.
func rawLoopCopies(t *testing.T, tok string) int {
	t.Helper()
	raw, err := hsmio.OpenRawToken(hsmio.URI{Token: tok, ModulePath: softhsm.Module, PinSource: "env:REKEY_TEST_PIN"})
	if err != nil {
		t.Fatal(err)
	}
	p := raw.Ctx
	sh, err := p.OpenSession(raw.Slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.CloseSession(sh) }()
	if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)}); err != nil {
		t.Fatal(err)
	}
	objs, _, err := p.FindObjects(sh, 1000)
	if ferr := p.FindObjectsFinal(sh); err == nil {
		err = ferr
	}
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, h := range objs {
		a, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
		if err == nil && strings.HasPrefix(string(a[0].Value), rawLoopCopyPrefix) {
			n++
		}
	}
	return n
}

func checkNoRawLoopCopies(t *testing.T) {
	t.Helper()
	for _, tok := range []string{"src", "dst"} {
		if n := rawLoopCopies(t, tok); n != 0 {
			t.Errorf("%d session copies of the raw loop left on token %q", n, tok)
		}
	}
}

func TestRawGCMRewrapLoop(t *testing.T) {
	ctx := context.Background()
	wrapped, ids := wrapForRawLoop(t, "kek-aes", 8)
	src, dst := uri("src", "kek-aes"), uri("dst", "kek-aes")
	for _, copies := range []bool{true, false} {
		for _, g := range []int{1, 3} {
			for _, opts := range [][]hsmio.RawLoopOption{nil, {hsmio.OneCallGCM}} {
				t.Run(fmt.Sprintf("copy=%v/g%d/onecall=%v", copies, g, opts != nil), func(t *testing.T) {
					r, err := hsmio.RawGCMRewrapLoop(ctx, src, dst, wrapped, ids, g, copies, 0, opts...)
					if err != nil {
						t.Fatal(err)
					}
					if r <= 0 {
						t.Fatalf("rate %v", r)
					}
					checkNoRawLoopCopies(t)
				})
			}
		}
	}
	// Timed, for about d: the rates are logged (SoftHSM2 is faster with
	// the copy; nothing asserts it).
	for _, copies := range []bool{true, false} {
		t.Run(fmt.Sprintf("timed/copy=%v", copies), func(t *testing.T) {
			const d = 150 * time.Millisecond
			start := time.Now()
			r, err := hsmio.RawGCMRewrapLoop(ctx, src, dst, wrapped, ids, 1, copies, d)
			if err != nil {
				t.Fatal(err)
			}
			if el := time.Since(start); r <= 0 || el < d {
				t.Fatalf("rate %v after %v", r, el)
			}
			t.Logf("%.0f DEKs/s", r)
			checkNoRawLoopCopies(t)
		})
	}
}

func TestRawGCMRewrapLoopFailsCleanly(t *testing.T) {
	ctx := context.Background()
	wrapped, ids := wrapForRawLoop(t, "kek-aes", 6)
	src, dst := uri("src", "kek-aes"), uri("dst", "kek-aes")
	corrupt := func(i int, f func([]byte) []byte) [][]byte {
		out := append([][]byte(nil), wrapped...)
		out[i] = f(bytes.Clone(wrapped[i]))
		return out
	}
	for _, tc := range []struct {
		name    string
		wrapped [][]byte
		ids     []string
	}{
		{"flipped tag bit", corrupt(3, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ids},
		{"flipped nonce bit", corrupt(0, func(b []byte) []byte { b[0] ^= 0x80; return b }), ids},
		{"truncated", corrupt(5, func(b []byte) []byte { return b[:schemas.NonceSize+schemas.TagSize] }), ids},
		{"wrong dek id (AAD)", wrapped, append(append([]string(nil), ids[:2]...), append([]string{"not-" + ids[2]}, ids[3:]...)...)},
	} {
		for _, copies := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/copy=%v", tc.name, copies), func(t *testing.T) {
				r, err := hsmio.RawGCMRewrapLoop(ctx, src, dst, tc.wrapped, tc.ids, 2, copies, 0)
				if !errors.Is(err, keys.ErrUnwrapFailed) || r != 0 {
					t.Fatalf("got %v, %v; want ErrUnwrapFailed", r, err)
				}
				if !strings.Contains(err.Error(), "raw loop: unwrap DEK") {
					t.Errorf("error does not say what failed: %v", err)
				}
				checkNoRawLoopCopies(t)
			})
		}
	}
	for _, tc := range []struct {
		name string
		run  func() error
	}{
		{"no DEKs", func() error { _, err := hsmio.RawGCMRewrapLoop(ctx, src, dst, nil, nil, 1, true, 0); return err }},
		{"ids mismatch", func() error {
			_, err := hsmio.RawGCMRewrapLoop(ctx, src, dst, wrapped, ids[:1], 1, true, 0)
			return err
		}},
		{"no goroutines", func() error { _, err := hsmio.RawGCMRewrapLoop(ctx, src, dst, wrapped, ids, 0, true, 0); return err }},
		{"unknown key", func() error {
			_, err := hsmio.RawGCMRewrapLoop(ctx, src, uri("dst", "no-such-key"), wrapped, ids, 2, true, 0)
			if err != nil && !errors.Is(err, keys.ErrKeyNotFound) {
				return fmt.Errorf("want ErrKeyNotFound: %w", err)
			}
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); err == nil || strings.Contains(err.Error(), "want ErrKeyNotFound") {
				t.Fatalf("got %v", err)
			}
			checkNoRawLoopCopies(t)
		})
	}
}

// A key that forbids copies: the session-copy loop says the token refused,
// the token-object loop runs.
func TestRawGCMRewrapLoopNoCopy(t *testing.T) {
	ctx := context.Background()
	wrapped, ids := wrapForRawLoop(t, "kek-nocopy", 4)
	src, dst := uri("src", "kek-nocopy"), uri("dst", "kek-aes")
	if _, err := hsmio.RawGCMRewrapLoop(ctx, src, dst, wrapped, ids, 2, true, 0); err == nil || !strings.Contains(err.Error(), "C_CopyObject") {
		t.Fatalf("session copy of a key with CKA_COPYABLE false: got %v", err)
	}
	if _, err := hsmio.RawGCMRewrapLoop(ctx, src, dst, wrapped, ids, 2, false, 0); err != nil {
		t.Fatal(err)
	}
	checkNoRawLoopCopies(t)
}
