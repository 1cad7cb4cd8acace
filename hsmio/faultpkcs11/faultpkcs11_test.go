package faultpkcs11_test

import (
	"bytes"
	"context"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"rekey/hsmio"
	"rekey/hsmio/faultpkcs11"
	"rekey/hsmio/softhsm"
	"rekey/providers/keys"
	"rekey/schemas"
)

const pin = "4321"

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if err := softhsm.Available(); err != nil {
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "FAIL (CI is set, so a missing dependency fails):", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "SKIP faultpkcs11 tests:", err)
		return 0
	}
	dir, err := os.MkdirTemp("", "rekey-faultpkcs11-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	conf, err := softhsm.Setup(dir)
	if err != nil {
		panic(err)
	}
	if err := softhsm.InitToken(conf, "ftok", "8765", pin); err != nil {
		panic(err)
	}
	for _, spec := range []softhsm.KeySpec{{Label: "kek-aes"}, {Label: "kek-rsa", RSA: true}} {
		if err := softhsm.CreateKey("ftok", pin, spec); err != nil {
			panic(err)
		}
	}
	os.Setenv("REKEY_FAULT_TEST_PIN", pin)
	return m.Run()
}

// open loads a copy of the module configured with c and opens a KEK
// through it (every copy is its own library, token context and session
// pool).
func open(t *testing.T, c faultpkcs11.Config, object, wrap string) *hsmio.KEK {
	t.Helper()
	lib := faultpkcs11.ForTest(t, c)
	k, err := hsmio.Open(context.Background(), fmt.Sprintf("pkcs11:token=ftok;object=%s?module-path=%s&pin-source=env:REKEY_FAULT_TEST_PIN", object, lib), keys.Options{Wrap: wrap, Sessions: 2})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// ref is a KEK reached through an undisturbed copy.
func ref(t *testing.T, object, wrap string) *hsmio.KEK {
	return open(t, faultpkcs11.Config{}, object, wrap)
}

func testDEK(t *testing.T, i int) *keys.DEK {
	d, err := keys.NewDEK(bytes.Repeat([]byte{byte(i), 0xa5}, 16))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func bitsDiffer(a, b []byte) int {
	if len(a) != len(b) {
		return -1
	}
	n := 0
	for i := range a {
		n += bits.OnesCount8(a[i] ^ b[i])
	}
	return n
}

func TestPassThrough(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ object, wrap string }{{"kek-aes", schemas.WrapAESGCM}, {"kek-aes", schemas.WrapAESKWP}, {"kek-rsa", schemas.WrapRSAOAEPSHA1}} {
		k := ref(t, tc.object, tc.wrap)
		dek := testDEK(t, 1)
		w, err := k.Wrap(ctx, keys.ByID("d1"), dek)
		if err != nil {
			t.Fatalf("%s: %v", tc.wrap, err)
		}
		back, err := k.Unwrap(ctx, keys.ByID("d1"), tc.wrap, w)
		if err != nil || !bytes.Equal(back.Bytes(), dek.Bytes()) {
			t.Fatalf("%s: round trip through the module: %v", tc.wrap, err)
		}
	}
}

// A corrupted unwrap returns a wrong key and no error: exactly what the
// pipeline must catch with a key check value.
func TestCorruptUnwrapReturnsAWrongKeyWithoutError(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ call, object, wrap string }{
		{"C_Decrypt", "kek-aes", schemas.WrapAESGCM},      // crypto11 GCM: C_Decrypt returns the key
		{"C_UnwrapKey", "kek-aes", schemas.WrapAESKWP},    // the key object's CKA_VALUE is read back wrong
		{"C_Decrypt", "kek-rsa", schemas.WrapRSAOAEPSHA1}, // RSA-OAEP: C_Decrypt
	} {
		t.Run(tc.call+"-"+tc.wrap, func(t *testing.T) {
			log := filepath.Join(t.TempDir(), "faults.log")
			good := ref(t, tc.object, tc.wrap)
			bad := open(t, faultpkcs11.Config{Calls: []string{tc.call}, Mode: faultpkcs11.Corrupt, Rate: 1, Log: log}, tc.object, tc.wrap)
			dek := testDEK(t, 2)
			w, err := good.Wrap(ctx, keys.ByID("d2"), dek)
			if err != nil {
				t.Fatal(err)
			}
			got, err := bad.Unwrap(ctx, keys.ByID("d2"), tc.wrap, w)
			if err != nil {
				t.Fatalf("corrupt mode returned an error: %v", err)
			}
			if n := bitsDiffer(got.Bytes(), dek.Bytes()); n != 1 {
				t.Fatalf("unwrapped key differs in %d bits, want 1", n)
			}
			lines, err := faultpkcs11.Logged(log)
			if err != nil || len(lines) != 1 || !strings.HasPrefix(lines[0], tc.call+" corrupt ") {
				t.Fatalf("log %q %v", lines, err)
			}
		})
	}
}

// Fail mode gives the error a flaky HSM gives (retryable for rekey), and
// leaves the session usable: the next call works.
func TestFailIsTransientAndLeavesTheSessionUsable(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ call, wrap string }{{"C_Decrypt", schemas.WrapAESGCM}, {"C_UnwrapKey", schemas.WrapAESKWP}, {"C_Encrypt", schemas.WrapAESGCM}} {
		t.Run(tc.call, func(t *testing.T) {
			good := ref(t, "kek-aes", tc.wrap)
			bad := open(t, faultpkcs11.Config{Calls: []string{tc.call}, Rate: 1, Max: 1}, "kek-aes", tc.wrap)
			dek := testDEK(t, 3)
			var err error
			if tc.call == "C_Encrypt" {
				_, err = bad.Wrap(ctx, keys.ByID("d3"), dek)
			} else {
				var w []byte
				if w, err = good.Wrap(ctx, keys.ByID("d3"), dek); err != nil {
					t.Fatal(err)
				}
				_, err = bad.Unwrap(ctx, keys.ByID("d3"), tc.wrap, w)
			}
			if err == nil || !keys.IsRetryable(err) || !strings.Contains(err.Error(), "CKR_DEVICE_ERROR") {
				t.Fatalf("want a retryable CKR_DEVICE_ERROR, got %v", err)
			}
			// Max 1: from now on the module is transparent, and the session
			// the failed call used has no operation left active.
			for i := 0; i < 3; i++ {
				w, err := bad.Wrap(ctx, keys.ByID("d3"), dek)
				if err != nil {
					t.Fatalf("call %d after the fault: %v", i, err)
				}
				back, err := bad.Unwrap(ctx, keys.ByID("d3"), tc.wrap, w)
				if err != nil || !bytes.Equal(back.Bytes(), dek.Bytes()) {
					t.Fatalf("call %d after the fault: %v", i, err)
				}
			}
		})
	}
}

// Which calls are disturbed depends on the seed and the call's index only;
// After and Max bound them.
func TestChoiceIsDeterministic(t *testing.T) {
	ctx := context.Background()
	good := ref(t, "kek-aes", schemas.WrapAESGCM)
	dek := testDEK(t, 4)
	w, err := good.Wrap(ctx, keys.ByID("d4"), dek)
	if err != nil {
		t.Fatal(err)
	}
	pattern := func(c faultpkcs11.Config, n int) string {
		k := open(t, c, "kek-aes", schemas.WrapAESGCM)
		var b strings.Builder
		for i := 0; i < n; i++ {
			got, err := k.Unwrap(ctx, keys.ByID("d4"), schemas.WrapAESGCM, w)
			switch {
			case err != nil:
				t.Fatal(err)
			case bytes.Equal(got.Bytes(), dek.Bytes()):
				b.WriteByte('.')
			default:
				b.WriteByte('x')
			}
		}
		return b.String()
	}
	c := faultpkcs11.Config{Calls: []string{"C_Decrypt"}, Mode: faultpkcs11.Corrupt, Rate: 0.3, Seed: 11}
	a, b := pattern(c, 60), pattern(c, 60)
	if a != b {
		t.Fatalf("same seed, different choices:\n%s\n%s", a, b)
	}
	if n := strings.Count(a, "x"); n < 6 || n > 32 {
		t.Fatalf("rate 0.3 disturbed %d of 60 calls: %s", n, a)
	}
	c.Seed = 12
	if pattern(c, 60) == a {
		t.Fatal("another seed chose the same calls")
	}
	if got := pattern(faultpkcs11.Config{Calls: []string{"C_Decrypt"}, Mode: faultpkcs11.Corrupt, Rate: 1, After: 2, Max: 2}, 6); got != "..xx.." {
		t.Fatalf("after 2, max 2: %s", got)
	}
	if got := pattern(faultpkcs11.Config{Calls: []string{"C_Decrypt"}, Mode: faultpkcs11.Corrupt, Rate: 0}, 5); got != "....." {
		t.Fatalf("rate 0: %s", got)
	}
}

func TestBadConfigurationIsRefused(t *testing.T) {
	if err := (faultpkcs11.Config{Calls: []string{"C_Bogus"}}).Validate(); err == nil {
		t.Fatal("unknown call accepted")
	}
	// The module itself refuses a bad setting at C_Initialize, whoever
	// configured it.
	lib := faultpkcs11.ForTest(t, faultpkcs11.Config{})
	if err := os.WriteFile(lib+".env", []byte("REKEY_FAULT_CALLS=C_Decrypt,C_Bogus\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := hsmio.Open(context.Background(), "pkcs11:token=ftok;object=kek-aes?module-path="+lib+"&pin-source=env:REKEY_FAULT_TEST_PIN", keys.Options{})
	if err == nil || !strings.Contains(err.Error(), "CKR_ARGUMENTS_BAD") {
		t.Fatalf("want the module to refuse an unknown call, got %v", err)
	}
}
