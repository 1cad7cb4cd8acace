package softhsm

import (
	"fmt"
	"os"
	"path/filepath"
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

// Copy makes a copy of the token store in dir (same tokens, same keys)
// and returns the SOFTHSM2_CONF setting of a process that should use it.
// A test that kills a process gives it a copy: SoftHSM2 rewrites a token
// file in place on a process's first login, and a process killed at that
// moment leaves the token empty for everyone after it (README, limits),
// where a real HSM outlives its clients.
func (e *TestEnv) Copy(dir string) (string, error) {
	store := filepath.Join(dir, "tokens")
	err := filepath.WalkDir(filepath.Join(e.Dir, "tokens"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(filepath.Join(e.Dir, "tokens"), p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(store, rel), 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(store, rel), b, 0o600)
	})
	if err != nil {
		return "", err
	}
	conf, err := writeConf(dir, store)
	return "SOFTHSM2_CONF=" + conf, err
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
