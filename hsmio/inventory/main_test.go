package inventory

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"rekey/hsmio/softhsm"
)

// TestMain creates the SoftHSM tokens ksrc, kdst and kdst2 (keyFixtures puts
// the keys on them): SoftHSM reads its config once per process.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if label := os.Getenv(envListObjects); label != "" {
		// A child of tokenObjects (transfer_test.go): the token store is
		// the parent's ($SOFTHSM2_CONF is inherited).
		return listObjects(label)
	}
	if err := softhsm.Available(); err != nil {
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "FAIL:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "SKIP hsmio/inventory tests:", err)
		return 0
	}
	dir, err := os.MkdirTemp("", "rekey-inventory-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	conf, err := softhsm.Setup(dir)
	if err != nil {
		panic(err)
	}
	for _, tok := range []string{"ksrc", "kdst", "kdst2"} {
		if err := softhsm.InitToken(conf, tok, "5678", fixturePIN); err != nil {
			panic(err)
		}
	}
	os.Setenv("REKEY_TEST_PIN", fixturePIN)
	return m.Run()
}

// envListObjects makes the test binary print the token objects of the
// token it names and exit: what a new process, reading the token store
// afresh, finds on the token. A process that is logged in sees its own
// view, which can miss objects a failed call left in the store.
const envListObjects = "REKEY_TEST_LIST_TOKEN_OBJECTS"

func listObjects(label string) int {
	p := pkcs11.New(softhsm.Module)
	if p == nil {
		fmt.Fprintln(os.Stderr, "cannot load", softhsm.Module)
		return 1
	}
	if err := p.Initialize(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil || strings.TrimSpace(ti.Label) != label {
			continue
		}
		sh, err := p.OpenSession(s, pkcs11.CKF_SERIAL_SESSION)
		if err == nil {
			err = p.Login(sh, pkcs11.CKU_USER, os.Getenv("REKEY_TEST_PIN"))
		}
		if err == nil {
			// Every object: a new process has no session objects, so
			// all it finds is in the token store (a half-made object
			// there may not even say CKA_TOKEN true).
			err = p.FindObjectsInit(sh, nil)
		}
		var objs []pkcs11.ObjectHandle
		if err == nil {
			objs, _, err = p.FindObjects(sh, 10000)
			_ = p.FindObjectsFinal(sh)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for _, o := range objs {
			a, err := p.GetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil), pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			fmt.Printf("%s %q\n", className(a[0].Value), a[1].Value)
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "token %q not found\n", label)
	return 1
}

func className(v []byte) string {
	var c uint
	for i := len(v) - 1; i >= 0; i-- {
		c = c<<8 | uint(v[i])
	}
	switch c {
	case pkcs11.CKO_SECRET_KEY:
		return "secret-key"
	case pkcs11.CKO_PRIVATE_KEY:
		return "private-key"
	case pkcs11.CKO_PUBLIC_KEY:
		return "public-key"
	case pkcs11.CKO_CERTIFICATE:
		return "certificate"
	}
	return fmt.Sprintf("class-0x%x", c)
}
