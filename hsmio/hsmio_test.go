package hsmio_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"rekey/hsmio"
	"rekey/hsmio/softhsm"
	"rekey/providers/keys"
	"rekey/schemas"
)

const pin = "1234"

// TestMain creates the SoftHSM tokens every test here uses: SoftHSM reads its
// config once per process.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if err := softhsm.Available(); err != nil {
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "FAIL:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "SKIP hsmio tests:", err)
		return 0
	}
	dir, err := os.MkdirTemp("", "rekey-hsmio-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	conf, err := softhsm.Setup(dir)
	if err != nil {
		panic(err)
	}
	// "pinprobe" is never logged into with the right PIN, so a wrong PIN
	// is always checked by the token (login state is per process).
	// "failover" is the token whose sessions TestLoginLostInAFailOver
	// closes under hsmio's feet; nothing else uses it.
	for _, tok := range []string{"src", "dst", "pinprobe", "failover"} {
		if err := softhsm.InitToken(conf, tok, "5678", pin); err != nil {
			panic(err)
		}
	}
	// Tokens of the key inventory and transfer tests (transfer_test.go),
	// which create their own keys on them.
	for _, tok := range []string{"ksrc", "kdst", "kdst2"} {
		if err := softhsm.InitToken(conf, tok, "5678", pin); err != nil {
			panic(err)
		}
	}
	for _, spec := range []softhsm.KeySpec{
		{Label: "kek-aes"}, {Label: "kek-rsa", RSA: true}, {Label: "kek-extractable", Extractable: true},
		{Label: "kek-nounwrap", Deny: []uint{pkcs11.CKA_UNWRAP, pkcs11.CKA_DECRYPT}},
		{Label: "kek-nocopy", Deny: []uint{pkcs11.CKA_COPYABLE}},
	} {
		if err := softhsm.CreateKey("src", pin, spec); err != nil {
			panic(err)
		}
	}
	if err := softhsm.CreateKey("dst", pin, softhsm.KeySpec{Label: "kek-aes"}); err != nil {
		panic(err)
	}
	if err := softhsm.CreateKey("failover", pin, softhsm.KeySpec{Label: "kek-aes"}); err != nil {
		panic(err)
	}
	os.Setenv("REKEY_TEST_PIN", pin)
	os.Setenv("REKEY_WRONG_PIN", "0000")
	// crypto11 insists on initializing a module itself, and a copy of the
	// fault module (sessions_test.go) initializes SoftHSM2 underneath when
	// it is first: SoftHSM2 is opened through hsmio first, whatever test
	// runs first.
	if _, err := hsmio.OpenRawToken(hsmio.URI{Token: "dst", ModulePath: softhsm.Module, PinSource: "env:REKEY_TEST_PIN"}); err != nil {
		panic(err)
	}
	return m.Run()
}

func uri(token, object string) string {
	return "pkcs11:token=" + token + ";object=" + object + "?pin-source=env:REKEY_TEST_PIN"
}

func TestRoundTripEveryMechanism(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ object, mech string }{
		{"kek-aes", schemas.WrapAESGCM}, {"kek-aes", schemas.WrapAESKWP}, {"kek-rsa", schemas.WrapRSAOAEPSHA1},
	} {
		t.Run(tc.mech, func(t *testing.T) {
			k, err := keys.Open(ctx, uri("src", tc.object), keys.Options{Wrap: tc.mech})
			if err != nil {
				t.Fatal(err)
			}
			dek, err := k.(keys.Generator).GenerateDEK(ctx)
			if err != nil {
				t.Fatal(err)
			}
			w, err := k.Wrap(ctx, keys.ByID("d1"), dek)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(w, dek.Bytes()) {
				t.Fatal("wrapped key contains the DEK")
			}
			got, err := k.Unwrap(ctx, keys.ByID("d1"), tc.mech, w)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), dek.Bytes()) {
				t.Fatal("round trip changed the DEK")
			}
			w[len(w)-1] ^= 1
			if _, err := k.Unwrap(ctx, keys.ByID("d1"), tc.mech, w); !errors.Is(err, keys.ErrUnwrapFailed) {
				t.Fatalf("tampered wrapped key: got %v, want ErrUnwrapFailed", err)
			}
		})
	}
}

func TestGCMBindsDEKID(t *testing.T) {
	ctx := context.Background()
	k, err := keys.Open(ctx, uri("src", "kek-aes"), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dek, _ := keys.NewDEK(bytes.Repeat([]byte{7}, 32))
	w, err := k.Wrap(ctx, keys.ByID("tenant-1"), dek)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Unwrap(ctx, keys.ByID("tenant-2"), schemas.WrapAESGCM, w); !errors.Is(err, keys.ErrUnwrapFailed) {
		t.Fatalf("wrapped key moved to another dek_id: got %v, want ErrUnwrapFailed", err)
	}
}

func TestWrappedUnderOtherKEKFails(t *testing.T) {
	ctx := context.Background()
	a, err := keys.Open(ctx, uri("src", "kek-aes"), keys.Options{Wrap: schemas.WrapAESKWP})
	if err != nil {
		t.Fatal(err)
	}
	b, err := keys.Open(ctx, uri("dst", "kek-aes"), keys.Options{Wrap: schemas.WrapAESKWP})
	if err != nil {
		t.Fatal(err)
	}
	dek, _ := keys.NewDEK(bytes.Repeat([]byte{9}, 32))
	w, err := a.Wrap(ctx, keys.ByID("x"), dek)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unwrap(ctx, keys.ByID("x"), schemas.WrapAESKWP, w); !errors.Is(err, keys.ErrUnwrapFailed) {
		t.Fatalf("got %v, want ErrUnwrapFailed", err)
	}
}

func TestOpenErrorsNameTheProblem(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, uri string
		want      error
		mention   string
	}{
		{"missing key", uri("src", "no-such-key"), keys.ErrKeyNotFound, "no-such-key"},
		{"missing token", uri("nope", "kek-aes"), keys.ErrTokenNotFound, "nope"},
		{"wrong mechanism", uri("src", "kek-rsa"), keys.ErrMechanism, "aes-gcm"},
		{"pin-value refused", "pkcs11:token=src;object=kek-aes?pin-value=1234", keys.ErrBadURI, "pin-source"},
		{"no pin", "pkcs11:token=src;object=kek-aes", keys.ErrAuthFailed, "pin-source"},
		{"bad module", "pkcs11:token=src;object=kek-aes?module-path=/nope.so&pin-source=env:REKEY_TEST_PIN", keys.ErrModule, "/nope.so"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := keys.Options{}
			if tc.name == "wrong mechanism" {
				opts.Wrap = schemas.WrapAESGCM
			}
			_, err := keys.Open(ctx, tc.uri, opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !bytes.Contains([]byte(err.Error()), []byte(tc.mention)) {
				t.Fatalf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestPreflight(t *testing.T) {
	ctx := context.Background()
	k, err := keys.Open(ctx, uri("src", "kek-extractable"), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var warned, roundTrip bool
	for _, c := range k.(keys.Preflighter).Preflight(ctx, true, true) {
		if !c.OK {
			t.Errorf("unexpected failed check %+v", c)
		}
		warned = warned || (c.Warn && bytes.Contains([]byte(c.Name), []byte("CKA_EXTRACTABLE")))
		roundTrip = roundTrip || bytes.Contains([]byte(c.Name), []byte("round trip"))
	}
	if !warned || !roundTrip {
		t.Fatalf("want an extractable warning and a round trip; warned=%v roundTrip=%v", warned, roundTrip)
	}
	k, err = keys.Open(ctx, uri("src", "kek-nounwrap"), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	failed := false
	for _, c := range k.(keys.Preflighter).Preflight(ctx, false, true) {
		failed = failed || (!c.OK && bytes.Contains([]byte(c.Name), []byte("CKA_DECRYPT")))
	}
	if !failed {
		t.Fatal("preflight of a key without CKA_DECRYPT did not fail")
	}
}

func TestWrongPIN(t *testing.T) {
	_, err := hsmio.Open(context.Background(), "pkcs11:token=pinprobe;object=kek-aes?pin-source=env:REKEY_WRONG_PIN", keys.Options{})
	if !errors.Is(err, keys.ErrAuthFailed) || !strings.Contains(err.Error(), "CKR_PIN_INCORRECT") || strings.Contains(err.Error(), "0000") {
		t.Fatalf("got %v: want ErrAuthFailed naming CKR_PIN_INCORRECT, without the PIN", err)
	}
}

func TestDEKNeverPrints(t *testing.T) {
	d, _ := keys.NewDEK(bytes.Repeat([]byte{0xAB}, 32))
	for _, s := range []string{fmt.Sprint(d), fmt.Sprintf("%v %+v %#v %x %s %q", d, d, d, d, d, d)} {
		if bytes.Contains([]byte(s), []byte("ab")) || bytes.Contains([]byte(s), []byte("\xab")) {
			t.Fatalf("DEK printed: %q", s)
		}
	}
	s := fmt.Sprint(hsmio.Secret{})
	if s != "***" {
		t.Fatalf("Secret prints %q", s)
	}
}
