package hsmio_test

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"

	"rekey/hsmio"
	"rekey/hsmio/faultpkcs11"
	"rekey/hsmio/softhsm"
	"rekey/providers/keys"
	"rekey/providers/keystest"
	"rekey/schemas"
)

// TestConformance runs the suite every key backend passes
// (providers/keystest) on SoftHSM2: an AES-256 key with aes-gcm and
// aes-kwp, an RSA-2048 key pair with the RSA-OAEP mechanisms. The token
// ("src", PIN in $REKEY_TEST_PIN) and the keys under test come from
// TestMain; the second key of each type is made here.
func TestConformance(t *testing.T) {
	for _, c := range []struct {
		name, key, other string
		mechs            []string
	}{
		{"AES", "kek-aes", "keystest-aes-other", []string{schemas.WrapAESGCM, schemas.WrapAESKWP}},
		{"RSA", "kek-rsa", "keystest-rsa-other", []string{schemas.WrapRSAOAEPSHA256, schemas.WrapRSAOAEPSHA1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			serial := keystestSetup(t)
			keystest.Run(t, keystest.Backend{
				Mechanisms: keystestOffered(t, keystestRef(softhsm.Module, serial, c.key), c.mechs),
				Open:       keystestOpen(keystestRef(softhsm.Module, serial, c.key)),
				Other:      keystestOpen(keystestRef(softhsm.Module, serial, c.other)),
				Missing:    keystestRef(softhsm.Module, serial, "keystest-no-such-key"),
				// AES-GCM binds its additional data; C_WrapKey and RSA-OAEP
				// (without a label) bind nothing.
				Binds:      func(m string) bool { return m == schemas.WrapAESGCM },
				SecretLens: keystestLens,
				Secrets:    [][]byte{[]byte(os.Getenv("REKEY_TEST_PIN"))},
				Private:    []string{softhsm.Module, "module-path", "pin-source", "REKEY_TEST_PIN"},
				Transient:  keystestTransient(serial, c.key),
				// Bugs the suite found in hsmio, reported and not fixed
				// here: each entry fails until its fix lands, then must go.
				KnownFailures: map[string]string{},
			})
		})
	}
}

// keystestLens: SoftHSM's CKM_AES_KEY_WRAP_PAD round-trips key objects
// whose length is a multiple of 8; AES-GCM and RSA-OAEP-2048 take any
// secret of 16 to 64 bytes.
func keystestLens(mech string) []int {
	if mech == schemas.WrapAESKWP {
		return []int{16, 24, 32, 40, 48, 56, 64}
	}
	return nil
}

// keystestRef names the key on "src" by its serial as well as its label.
// hsmio keeps one session pool per spelling of a token: this one is the
// suite's alone, so that the sessions the known aes-kwp panic leaks (see
// KnownFailures) never starve the other tests of "src".
func keystestRef(module, serial, object string) string {
	return "pkcs11:token=src;serial=" + serial + ";object=" + object + "?module-path=" + module + "&pin-source=env:REKEY_TEST_PIN"
}

// keystestOpen opens ref with a pool large enough for the leaks of many
// runs (go test -count).
func keystestOpen(ref string) func(t *testing.T, mech string) keys.KEK {
	return func(t *testing.T, mech string) keys.KEK {
		t.Helper()
		k, err := keys.Open(t.Context(), ref, keys.Options{Wrap: mech, Sessions: 64})
		if err != nil {
			t.Fatalf("open %s: %v", keys.Redact(ref), err)
		}
		return k
	}
}

// keystestOffered is mechs without those the token cannot unwrap with:
// SoftHSM 2.6 wraps with rsa-oaep-sha256 (in software) but refuses OAEP
// with SHA-256 in C_Decrypt (CKR_ARGUMENTS_BAD), so only a real HSM or a
// newer SoftHSM tests that mechanism.
func keystestOffered(t *testing.T, ref string, mechs []string) []string {
	t.Helper()
	var out []string
	for _, m := range mechs {
		k := keystestOpen(ref)(t, m)
		d, err := keys.NewDEK(make([]byte, keys.DEKSize))
		if err != nil {
			t.Fatal(err)
		}
		w, err := k.Wrap(t.Context(), keys.Binding{}, d)
		if err == nil {
			_, err = k.Unwrap(t.Context(), keys.Binding{}, m, w)
		}
		if err != nil {
			t.Logf("not testing %s: this token cannot round-trip it (%v)", m, err)
			continue
		}
		out = append(out, m)
	}
	return out
}

var (
	keystestOnce   sync.Once
	keystestSerial string
	keystestErr    error
)

// keystestSetup creates the second AES key and RSA key pair on "src" and
// returns the token's serial.
func keystestSetup(t *testing.T) string {
	t.Helper()
	keystestOnce.Do(func() {
		pin := os.Getenv("REKEY_TEST_PIN")
		for _, spec := range []softhsm.KeySpec{{Label: "keystest-aes-other"}, {Label: "keystest-rsa-other", RSA: true}} {
			if keystestErr = softhsm.CreateKey("src", pin, spec); keystestErr != nil {
				return
			}
		}
		keystestSerial, keystestErr = keystestSerialOf("src")
	})
	if keystestErr != nil {
		t.Fatal(keystestErr)
	}
	return keystestSerial
}

// keystestSerialOf reads a token's serial without logging in, so that no
// pool of hsmio's is created or sized here.
func keystestSerialOf(label string) (string, error) {
	p := pkcs11.New(softhsm.Module)
	if p == nil {
		return "", fmt.Errorf("cannot load %s", softhsm.Module)
	}
	switch err := p.Initialize(); {
	case err == nil: // first here: leave the module as found, for crypto11
		defer func() { _ = p.Finalize(); p.Destroy() }()
	case !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)):
		return "", err
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		return "", err
	}
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && strings.TrimSpace(ti.Label) == label {
			return strings.TrimSpace(ti.SerialNumber), nil
		}
	}
	return "", fmt.Errorf("token %q not found", label)
}

// keystestTransient opens object through a copy of the fault-injecting
// module whose first C_Decrypt or C_UnwrapKey (every unwrap's call) fails
// with CKR_DEVICE_ERROR, as a flaky HSM's does.
func keystestTransient(serial, object string) func(t *testing.T, mech string) keys.KEK {
	return func(t *testing.T, mech string) keys.KEK {
		t.Helper()
		lib := faultpkcs11.ForTest(t, faultpkcs11.Config{Calls: []string{"C_Decrypt", "C_UnwrapKey"}, Rate: 1, Max: 1})
		k, err := hsmio.Open(t.Context(), keystestRef(lib, serial, object), keys.Options{Wrap: mech, Sessions: 2})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
}
