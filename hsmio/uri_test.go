package hsmio_test

import (
	"errors"
	"strings"
	"testing"

	"rekey/hsmio"
	"rekey/providers/keys"
)

func TestParseURI(t *testing.T) {
	u, err := hsmio.ParseURI("pkcs11:token=My%20Token;object=kek-1;type=secret-key?module-path=/m.so&pin-source=env:P")
	if err != nil {
		t.Fatal(err)
	}
	if u.Token != "My Token" || u.Object != "kek-1" || u.Type != "secret-key" || u.ModulePath != "/m.so" || u.PinSource != "env:P" {
		t.Fatalf("%+v", u)
	}
	if got := u.KeyURI(); got != "pkcs11:token=My%20Token;object=kek-1;type=secret-key" {
		t.Fatalf("KeyURI %q", got)
	}
	if !hsmio.SameKey("pkcs11:object=kek-1;token=My%20Token", u.KeyURI()) {
		t.Fatal("attribute order should not matter")
	}
	if hsmio.SameKey("pkcs11:token=My%20Token;object=kek-2", u.KeyURI()) {
		t.Fatal("different objects compare equal")
	}
	for _, bad := range []string{
		"", "pkcs11:", "file:/x", "pkcs11:token=t", "pkcs11:object=o", "pkcs11:token=t;object=o;bogus=1",
		"pkcs11:token=t;object=o?pin-value=1234", "pkcs11:token=t;token=u;object=o", "pkcs11:token=%zz;object=o",
		"pkcs11:token=t;object=o;type=cert", "pkcs11:" + strings.Repeat("a", 5000),
	} {
		if _, err := hsmio.ParseURI(bad); !errors.Is(err, keys.ErrBadURI) {
			t.Errorf("%q: got %v, want ErrBadURI", bad, err)
		}
	}
}

func FuzzParseURI(f *testing.F) {
	f.Add("pkcs11:token=source;object=kek-aes?pin-source=env:REKEY_SOURCE_PIN")
	f.Add("pkcs11:token=a%3Bb;object=c;id=%01%02;type=private?module-path=/x.so")
	f.Add("pkcs11:serial=123;object=k")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := hsmio.ParseURI(s)
		if err != nil {
			return
		}
		// The canonical form must parse back to the same key.
		back, err := hsmio.ParseURI(u.KeyURI())
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", u.KeyURI(), s, err)
		}
		if back.Token != u.Token || back.Object != u.Object || string(back.ID) != string(u.ID) || back.Serial != u.Serial || back.Type != u.Type {
			t.Fatalf("round trip changed the key: %+v vs %+v", u, back)
		}
		if strings.Contains(u.KeyURI(), "?") {
			t.Fatalf("canonical form keeps query attributes (module, pin source): %q", u.KeyURI())
		}
	})
}
