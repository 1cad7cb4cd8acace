package hsmio_test

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // RSA-OAEP-SHA1 is one of the wrap mechanisms.
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"rekey/hsmio/softhsm"
	"rekey/providers/keys"
	"rekey/schemas"
)

// Labels of the vector KEKs on token "src": no other test uses them.
const (
	vectorAESLabel = "vectors-kek-aes"
	vectorRSALabel = "vectors-kek-rsa"
)

type wrapVector struct {
	Name      string `json:"name"`
	Mechanism string `json:"mechanism"`
	KEK       string `json:"kek"`
	DEK       string `json:"dek"`
	Binding   *struct {
		DEKID   string            `json:"dek_id"`
		Context map[string]string `json:"context"`
		AAD     []string          `json:"aad"`
	} `json:"binding"`
	Wrapped string `json:"wrapped"`
}

// TestWrapVectors imports the fixed KEKs of testdata/vectors/wraps.json
// (written by testdata/vectors/gen.go from the definitions in
// docs/FORMAT.md) into SoftHSM and checks that hsmio unwraps every vector
// to its DEK, and that aes-kwp, which is deterministic, wraps each DEK to
// the vector's bytes. A failure means the wrapped-key bytes changed: a
// format change, not a test to regenerate.
func TestWrapVectors(t *testing.T) {
	dir := "../testdata/vectors"
	b, err := os.ReadFile(filepath.Join(dir, "wraps.json"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		AESKEK  string       `json:"aes_kek"`
		RSAKEK  string       `json:"rsa_kek"`
		Vectors []wrapVector `json:"vectors"`
	}
	if err := json.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	aesKEK := mustHex(t, file.AESKEK)
	pemBytes, err := os.ReadFile(filepath.Join(dir, file.RSAKEK))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		t.Fatalf("%s: no PEM block", file.RSAKEK)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	rsaKEK, ok := parsed.(*rsa.PrivateKey)
	if !ok {
		t.Fatalf("%s holds a %T, want an RSA key", file.RSAKEK, parsed)
	}

	if err := softhsm.CreateObjects("src", pin, []softhsm.ObjectSpec{{Label: vectorAESLabel, Kind: "aes", Value: aesKEK, Encrypt: true, Wrap: true}}); err != nil {
		t.Fatal(err)
	}
	if err := importRSA("src", vectorRSALabel, rsaKEK); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	covered := map[string]int{}
	for _, v := range file.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			dek, wrapped := mustHex(t, v.DEK), mustHex(t, v.Wrapped)
			var bind keys.Binding
			if v.Binding != nil {
				bind = keys.Binding{DEKID: v.Binding.DEKID, Context: v.Binding.Context, AAD: v.Binding.AAD}
			}
			label := vectorAESLabel
			if v.KEK == "rsa" && v.Mechanism == schemas.WrapRSAPKCS1 {
				label = vectorRSALabel
				if pt, err := rsa.DecryptPKCS1v15(nil, rsaKEK, wrapped); err != nil || !bytes.Equal(pt, dek) {
					t.Fatalf("crypto/rsa does not decrypt the vector to its secret: %v", err)
				}
			} else if v.KEK == "rsa" {
				label = vectorRSALabel
				// The vector itself, checked in software.
				h := map[string]hash.Hash{schemas.WrapRSAOAEPSHA1: sha1.New(), schemas.WrapRSAOAEPSHA256: sha256.New()}[v.Mechanism]
				if pt, err := rsa.DecryptOAEP(h, nil, rsaKEK, wrapped, nil); err != nil || !bytes.Equal(pt, dek) {
					t.Fatalf("crypto/rsa does not decrypt the vector to its DEK: %v", err)
				}
				// Can the token decrypt it at all? SoftHSM 2.6 does RSA-OAEP
				// with SHA-1 only; the same probe must work for SHA-1.
				if err := probeOAEP("src", vectorRSALabel, v.Mechanism, wrapped); err != nil {
					if v.Mechanism == schemas.WrapRSAOAEPSHA1 {
						t.Fatalf("the token does not decrypt the vector with RSA-OAEP-SHA1: %v", err)
					}
					t.Logf("not unwrapping with hsmio: the token cannot do %s (SoftHSM 2.6 offers RSA-OAEP with SHA-1 only): %v", v.Mechanism, err)
					covered[v.Mechanism]++
					return
				}
			}
			k, err := keys.Open(ctx, uri("src", label), keys.Options{Wrap: v.Mechanism})
			if err != nil {
				t.Fatal(err)
			}
			got, err := k.Unwrap(ctx, bind, v.Mechanism, wrapped)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), dek) {
				t.Fatal("unwrapped DEK differs from the vector's")
			}
			covered[v.Mechanism]++
			if v.Mechanism == schemas.WrapAESKWP {
				d, err := keys.NewDEK(dek)
				if err != nil {
					t.Fatal(err)
				}
				w, err := k.Wrap(ctx, bind, d)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(w, wrapped) {
					t.Fatalf("Wrap:\n got %x\nwant %x", w, wrapped)
				}
			}
			// A wrapped key under another binding, or changed, does not
			// unwrap (RSA-OAEP and aes-kwp bind nothing).
			if v.Mechanism == schemas.WrapAESGCM {
				other := keys.ByID(bind.DEKID + "x")
				if _, err := k.Unwrap(ctx, other, v.Mechanism, wrapped); !errors.Is(err, keys.ErrUnwrapFailed) {
					t.Fatalf("unwrap under %s: got %v, want ErrUnwrapFailed", other, err)
				}
			}
			bad := bytes.Clone(wrapped)
			bad[len(bad)/2] ^= 1
			if _, err := k.Unwrap(ctx, bind, v.Mechanism, bad); err == nil {
				t.Fatal("a changed wrapped key unwrapped")
			}
		})
	}
	for _, m := range schemas.WrapMechanisms {
		if covered[m] == 0 {
			t.Errorf("wrap %q has no vectors: add them to testdata/vectors/gen.go", m)
		}
	}
}

// importRSA creates the key pair on the token with C_CreateObject (public
// and private objects sharing the label as CKA_ID, as crypto11 pairs them),
// unless an object with that label exists.
func importRSA(token, label string, k *rsa.PrivateKey) error {
	return onToken(token, func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		if _, ok, err := findByLabel(p, sh, pkcs11.CKO_PRIVATE_KEY, label); err != nil || ok {
			return err
		}
		k.Precompute()
		e := []byte{byte(k.E >> 16), byte(k.E >> 8), byte(k.E)}
		common := func(class uint) []*pkcs11.Attribute {
			return []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
				pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
				pkcs11.NewAttribute(pkcs11.CKA_MODULUS, k.N.Bytes()),
				pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, e),
			}
		}
		if _, err := p.CreateObject(sh, append(common(pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		)); err != nil {
			return fmt.Errorf("import public key %q: %w", label, err)
		}
		if _, err := p.CreateObject(sh, append(common(pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE_EXPONENT, k.D.Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_PRIME_1, k.Primes[0].Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_PRIME_2, k.Primes[1].Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_EXPONENT_1, k.Precomputed.Dp.Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_EXPONENT_2, k.Precomputed.Dq.Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_COEFFICIENT, k.Precomputed.Qinv.Bytes()),
		)); err != nil {
			return fmt.Errorf("import private key %q: %w", label, err)
		}
		return nil
	})
}

// probeOAEP asks the token itself, without hsmio, to decrypt ct with the
// RSA-OAEP mechanism mech: an error means the token cannot.
func probeOAEP(token, label, mech string, ct []byte) error {
	hashMech, mgf := uint(pkcs11.CKM_SHA_1), uint(pkcs11.CKG_MGF1_SHA1)
	if mech == schemas.WrapRSAOAEPSHA256 {
		hashMech, mgf = pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256
	}
	return onToken(token, func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, ok, err := findByLabel(p, sh, pkcs11.CKO_PRIVATE_KEY, label)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("no private key %q", label)
		}
		params := pkcs11.NewOAEPParams(hashMech, mgf, pkcs11.CKZ_DATA_SPECIFIED, nil)
		if err := p.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, params)}, h); err != nil {
			return err
		}
		pt, err := p.Decrypt(sh, ct)
		clear(pt)
		return err
	})
}

// onToken runs f on a logged-in session of the token, as package softhsm
// does: it initializes the library only if nobody in this process has, and
// then finalizes it again, so crypto11 can be the first to initialize later.
func onToken(token string, f func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error) error {
	p := pkcs11.New(softhsm.Module)
	if p == nil {
		return fmt.Errorf("cannot load %s", softhsm.Module)
	}
	switch err := p.Initialize(); {
	case err == nil:
		defer func() { _ = p.Finalize(); p.Destroy() }()
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)):
	default:
		return err
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		return err
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil || strings.TrimSpace(ti.Label) != token {
			continue
		}
		sh, err := p.OpenSession(s, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return err
		}
		defer func() { _ = p.CloseSession(sh) }()
		if err := p.Login(sh, pkcs11.CKU_USER, pin); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
			return fmt.Errorf("log in to %q: %w", token, err)
		}
		return f(p, sh)
	}
	return fmt.Errorf("token %q not found", token)
}

func findByLabel(p *pkcs11.Ctx, sh pkcs11.SessionHandle, class uint, label string) (pkcs11.ObjectHandle, bool, error) {
	if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}); err != nil {
		return 0, false, err
	}
	objs, _, err := p.FindObjects(sh, 1)
	_ = p.FindObjectsFinal(sh)
	if err != nil || len(objs) == 0 {
		return 0, false, err
	}
	return objs[0], true, nil
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("vector field %q: %v", s, err)
	}
	return b
}
