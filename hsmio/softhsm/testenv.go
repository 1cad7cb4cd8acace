package softhsm

import (
	"fmt"
	"os"
	"testing"

	"github.com/miekg/pkcs11"
)

// TestEnv is a throwaway SoftHSM2 token store for one test process, with
// tokens "source" and "target" and the KEKs the tests use:
//
//	source: kek-aes, kek-rsa, kek-other (an unrelated AES key),
//	        kek-nodecrypt (AES without CKA_DECRYPT/CKA_UNWRAP),
//	        kek-noencrypt (AES without CKA_ENCRYPT/CKA_WRAP)
//	target: kek-aes, kek-rsa, kek-extractable
//
// PINs are exported as $REKEY_SOURCE_PIN and $REKEY_TARGET_PIN.
type TestEnv struct {
	Dir  string
	Conf string
}

// KEK returns the key URI of a test KEK.
func (e *TestEnv) KEK(token, label string) string {
	v := "REKEY_SOURCE_PIN"
	if token == "target" {
		v = "REKEY_TARGET_PIN"
	}
	return fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-source=env:%s", token, label, Module, v)
}

// StartTestEnv creates the tokens in a new temporary folder.
func StartTestEnv() (*TestEnv, error) {
	dir, err := os.MkdirTemp("", "rekey-softhsm-")
	if err != nil {
		return nil, err
	}
	conf, err := Setup(dir)
	if err != nil {
		return nil, err
	}
	pins := map[string]string{"source": "src-pin-1234", "target": "dst-pin-5678"}
	os.Setenv("REKEY_SOURCE_PIN", pins["source"])
	os.Setenv("REKEY_TARGET_PIN", pins["target"])
	for _, tok := range []string{"source", "target"} {
		if err := InitToken(conf, tok, "so-pin-0000", pins[tok]); err != nil {
			return nil, err
		}
	}
	keys := map[string][]KeySpec{
		"source": {{Label: "kek-aes"}, {Label: "kek-rsa", RSA: true}, {Label: "kek-other"},
			{Label: "kek-nodecrypt", Deny: []uint{pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP}},
			{Label: "kek-noencrypt", Deny: []uint{pkcs11.CKA_ENCRYPT, pkcs11.CKA_WRAP}}},
		"target": {{Label: "kek-aes"}, {Label: "kek-rsa", RSA: true}, {Label: "kek-extractable", Extractable: true}},
	}
	for tok, specs := range keys {
		for _, s := range specs {
			if err := CreateKey(tok, pins[tok], s); err != nil {
				return nil, err
			}
		}
	}
	return &TestEnv{Dir: dir, Conf: conf}, nil
}

// Close removes the token store.
func (e *TestEnv) Close() { os.RemoveAll(e.Dir) }

// Main is a TestMain body: it starts a TestEnv, runs the tests (run, or
// m.Run when run is nil), and cleans up. Without SoftHSM2 the tests are
// skipped, except under CI (CI set), where a missing dependency is a
// failure.
func Main(m *testing.M, env **TestEnv, run func() int) int {
	if err := Available(); err != nil {
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "FAIL (CI is set, so a missing dependency fails):", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "SKIP: ", err)
		return 0
	}
	e, err := StartTestEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: SoftHSM test tokens:", err)
		return 1
	}
	defer e.Close()
	*env = e
	if run != nil {
		return run()
	}
	return m.Run()
}
