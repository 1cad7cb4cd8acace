// Package softhsm creates SoftHSM2 tokens and KEKs in a local folder, for
// the demo, the tests and the benchmarks. It is development tooling: a real
// HSM's keys are made by its security officers, not by rekey.
//
// SoftHSM2 reads SOFTHSM2_CONF when the module is initialized, which
// happens once per process: create every token a process needs before the
// first key is opened.
//
// Limits: needs softhsm2-util on PATH (Debian package softhsm2).
package softhsm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/miekg/pkcs11"
)

// Module is SoftHSM2's PKCS#11 library on Debian.
const Module = "/usr/lib/softhsm/libsofthsm2.so"

// ErrMissing means SoftHSM2 is not installed.
var ErrMissing = errors.New("SoftHSM2 is not installed (apt-get install softhsm2, or run make demo which installs it)")

// Available reports whether SoftHSM2's module and tool are installed.
func Available() error {
	if _, err := os.Stat(Module); err != nil {
		return fmt.Errorf("%w: %s missing", ErrMissing, Module)
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		return fmt.Errorf("%w: softhsm2-util not on PATH", ErrMissing)
	}
	return nil
}

// Setup writes dir/softhsm2.conf with a token store in dir/tokens and sets
// SOFTHSM2_CONF for this process. It returns the config path.
func Setup(dir string) (string, error) {
	if err := Available(); err != nil {
		return "", err
	}
	store := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(store, 0o700); err != nil {
		return "", err
	}
	conf, err := writeConf(dir, store)
	if err != nil {
		return "", err
	}
	return conf, os.Setenv("SOFTHSM2_CONF", conf)
}

// writeConf writes dir/softhsm2.conf naming the token store.
func writeConf(dir, store string) (string, error) {
	conf := filepath.Join(dir, "softhsm2.conf")
	body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", store)
	return conf, os.WriteFile(conf, []byte(body), 0o600)
}

// InitToken creates a token with the given label and PINs, unless a token
// with that label exists already (then it does nothing).
func InitToken(conf, label, soPIN, userPIN string) error {
	show := exec.Command("softhsm2-util", "--show-slots")
	show.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	out, _ := show.CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if fieldIs(line, "Label:", label) {
			return nil
		}
	}
	// PINs go through the environment-free --pin flags of softhsm2-util:
	// this is a throwaway development token, never a production one.
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", soPIN, "--pin", userPIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("softhsm2-util --init-token %s: %v: %s", label, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func fieldIs(line, name, value string) bool {
	f := strings.TrimSpace(line)
	if !strings.HasPrefix(f, name) {
		return false
	}
	return strings.TrimSpace(strings.TrimPrefix(f, name)) == value
}

// KeySpec describes a KEK to create.
type KeySpec struct {
	Label       string
	RSA         bool // RSA-2048 key pair instead of AES-256
	Extractable bool
	// Deny lists attributes to set false (e.g. pkcs11.CKA_UNWRAP), for tests
	// of keys that lack a permission; pkcs11.CKA_COPYABLE makes an AES key
	// that C_CopyObject refuses.
	Deny []uint
}

// CreateKey makes a token-object KEK on the token, unless an object with
// that label exists already.
func CreateKey(tokenLabel, pin string, spec KeySpec) error {
	return withToken(tokenLabel, pin, func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		return createKey(p, sh, tokenLabel, spec)
	})
}

func createKey(p *pkcs11.Ctx, sh pkcs11.SessionHandle, tokenLabel string, spec KeySpec) error {
	if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, spec.Label)}); err != nil {
		return err
	}
	objs, _, _ := p.FindObjects(sh, 1)
	_ = p.FindObjectsFinal(sh)
	if len(objs) > 0 {
		return nil
	}
	allow := func(a uint) bool {
		for _, d := range spec.Deny {
			if d == a {
				return false
			}
		}
		return true
	}
	id := []byte(spec.Label)
	var err error
	if !spec.RSA {
		tmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, spec.Extractable),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, spec.Label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, allow(pkcs11.CKA_ENCRYPT)),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, allow(pkcs11.CKA_DECRYPT)),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, allow(pkcs11.CKA_WRAP)),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, allow(pkcs11.CKA_UNWRAP)),
		}
		if !allow(pkcs11.CKA_COPYABLE) {
			tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_COPYABLE, false))
		}
		_, err = p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, tmpl)
	} else {
		_, _, err = p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)},
			[]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
				pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 2048),
				pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, spec.Label),
				pkcs11.NewAttribute(pkcs11.CKA_ID, id),
				pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
				pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
				pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			},
			[]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
				pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, spec.Extractable),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, spec.Label),
				pkcs11.NewAttribute(pkcs11.CKA_ID, id),
				pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, allow(pkcs11.CKA_DECRYPT)),
				pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, allow(pkcs11.CKA_UNWRAP)),
				pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			})
	}
	if err != nil {
		return fmt.Errorf("create key %q on %q: %w", spec.Label, tokenLabel, err)
	}
	return nil
}
