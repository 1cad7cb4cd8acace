package hsmio

import (
	"errors"
	"strings"
	"testing"

	"rekey/providers/keys"
)

func TestKeysParseTokenURI(t *testing.T) {
	for _, tc := range []struct {
		in, token, object string
		bad               bool
	}{
		{"pkcs11:token=a?pin-source=env:X", "a", "", false},
		{"pkcs11:token=a;object=k?pin-source=env:X", "a", "k", false},
		{"pkcs11:token=a", "a", "", false},
		{"pkcs11:object=k", "", "", true},
		{"pkcs11:token=a?pin-value=1", "", "", true},
		{"pkcs11:token=a;bogus=1", "", "", true},
		{"file:/x", "", "", true},
	} {
		u, err := ParseTokenURI(tc.in)
		if (err != nil) != tc.bad || (!tc.bad && (u.Token != tc.token || u.Object != tc.object)) {
			t.Errorf("%s: %+v %v", tc.in, u, err)
		}
		if err != nil && !errors.Is(err, keys.ErrBadURI) {
			t.Errorf("%s: %v is not ErrBadURI", tc.in, err)
		}
	}
}

func FuzzParseTokenURI(f *testing.F) {
	f.Add("pkcs11:token=a?pin-source=env:X")
	f.Add("pkcs11:token=a;object=b;id=%01?module-path=/x.so")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseTokenURI(s)
		if err == nil && u.Token == "" && u.Serial == "" {
			t.Fatalf("%q parsed without a token", s)
		}
		if err == nil && !strings.Contains(s, "object") && u.Object != "" {
			t.Fatalf("%q: placeholder leaked", s)
		}
	})
}
