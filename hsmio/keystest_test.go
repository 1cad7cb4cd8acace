package hsmio_test

import (
	"os"
	"sync"
	"testing"

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
			keystestKeys(t)
			keystest.Run(t, keystest.Backend{
				Mechanisms: c.mechs,
				Open:       keystest.OpenRef(keystestRef(softhsm.Module, c.key)),
				Other:      keystest.OpenRef(keystestRef(softhsm.Module, c.other)),
				Missing:    keystestRef(softhsm.Module, "keystest-no-such-key"),
				// AES-GCM binds its additional data; C_WrapKey and RSA-OAEP
				// (without a label) bind nothing.
				Binds:      func(m string) bool { return m == schemas.WrapAESGCM },
				SecretLens: keystestLens,
				Secrets:    [][]byte{[]byte(os.Getenv("REKEY_TEST_PIN"))},
				Private:    []string{softhsm.Module, "module-path", "pin-source", "REKEY_TEST_PIN"},
				Transient:  keystestTransient(c.key),
			})
		})
	}
}

// keystestLens: SoftHSM's CKM_AES_KEY_WRAP_PAD takes key objects whose
// length is a multiple of 8; AES-GCM and RSA-OAEP-2048 take any secret of
// 16 to 64 bytes.
func keystestLens(mech string) []int {
	if mech == schemas.WrapAESKWP {
		return []int{16, 24, 32, 40, 48, 56, 64}
	}
	return nil
}

func keystestRef(module, object string) string {
	return "pkcs11:token=src;object=" + object + "?module-path=" + module + "&pin-source=env:REKEY_TEST_PIN"
}

var (
	keystestOnce sync.Once
	keystestErr  error
)

// keystestKeys creates the second AES key and RSA key pair on "src".
func keystestKeys(t *testing.T) {
	t.Helper()
	keystestOnce.Do(func() {
		for _, spec := range []softhsm.KeySpec{{Label: "keystest-aes-other"}, {Label: "keystest-rsa-other", RSA: true}} {
			if keystestErr = softhsm.CreateKey("src", os.Getenv("REKEY_TEST_PIN"), spec); keystestErr != nil {
				return
			}
		}
	})
	if keystestErr != nil {
		t.Fatal(keystestErr)
	}
}

// keystestTransient opens object through a copy of the fault-injecting
// module whose first C_Decrypt or C_UnwrapKey (every unwrap's call) fails
// with CKR_DEVICE_ERROR, as a flaky HSM's does.
func keystestTransient(object string) func(t *testing.T, mech string) keys.KEK {
	return func(t *testing.T, mech string) keys.KEK {
		t.Helper()
		lib := faultpkcs11.ForTest(t, faultpkcs11.Config{Calls: []string{"C_Decrypt", "C_UnwrapKey"}, Rate: 1, Max: 1})
		k, err := hsmio.Open(t.Context(), keystestRef(lib, object), keys.Options{Wrap: mech, Sessions: 2})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
}
